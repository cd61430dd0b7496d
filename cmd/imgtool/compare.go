package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"

	"github.com/imgtool/imgtool/qcow2"
)

// runCompare implements `imgtool compare`, with qemu-img compare's exit
// codes: 0 identical, 1 different, 2 error.
func runCompare(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("compare", "[-f FMT] [-F FMT] [-s] [-p] [-q] [-U] [--tls-verify=false] [--creds USER:PASS] [--authfile FILE] A B (each a file or docker://REF)", stdout, stderr)
	fmtA := fs.StringP("format", "f", "", "format of A (qcow2 or raw); probed when omitted")
	fmtB := fs.StringP("second-format", "F", "", "format of B (qcow2 or raw); probed when omitted")
	strict := fs.BoolP("strict", "s", false, "strict mode: fail on a size mismatch or a different allocation status")
	progress := fs.BoolP("progress", "p", false, "show progress on stderr")
	quiet := fs.BoolP("quiet", "q", false, "print nothing (no progress, even with -p); only the exit status tells")
	forceShare := fs.BoolP("force-share", "U", false, "open the images without taking image locks")
	backingRoot := backingRootFlag(fs)
	imgFlags := addImageFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return withCode(2, err)
	}
	if fs.NArg() != 2 {
		return withCode(2, usagef("expected A and B, got %d arguments", fs.NArg()))
	}
	ropts, err := backingRootOptions(*backingRoot)
	if err != nil {
		return withCode(2, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	a, err := imgFlags.open(ctx, fs.Arg(0), ropts(qcow2.Options{Format: qcow2.Format(*fmtA), ForceShare: *forceShare}))
	if err != nil {
		return withCode(2, err)
	}
	defer a.Close()
	b, err := imgFlags.open(ctx, fs.Arg(1), ropts(qcow2.Options{Format: qcow2.Format(*fmtB), ForceShare: *forceShare}))
	if err != nil {
		return withCode(2, err)
	}
	defer b.Close()
	update, finish := newProgress(*progress && !*quiet, stderr, "comparing")
	res, err := qcow2.Compare(ctx, a, b, qcow2.CompareOptions{Strict: *strict, Progress: update})
	finish()
	if err != nil {
		return withCode(2, err)
	}
	if !*quiet {
		if res.SizeMismatch && !*strict {
			fmt.Fprintln(stdout, "Warning: Image size mismatch!")
		}
		fmt.Fprintln(stdout, res.Message())
	}
	if !res.Identical {
		return withCode(1, nil)
	}
	return nil
}
