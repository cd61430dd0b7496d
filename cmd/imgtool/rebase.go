package main

import (
	"context"
	"io"
	"os"
	"os/signal"

	"github.com/imgtool/imgtool/qcow2"
)

// runRebase implements `imgtool rebase`, as qemu-img rebase.
func runRebase(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("rebase", "[-u] -b NEW [-F FMT] [-c] [-p] FILE", stderr)
	backing := fs.StringP("backing", "b", "", `new backing file (relative names are relative to FILE's directory); "" flattens FILE into a standalone image`)
	backingFmt := fs.StringP("backing-format", "F", "", "format of the new backing file (qcow2 or raw); probed when omitted")
	unsafe := fs.BoolP("unsafe", "u", false, "only rewrite the backing reference; copy nothing")
	compress := fs.BoolP("compress", "c", false, "compress the clusters copied into FILE")
	progress := fs.BoolP("progress", "p", false, "show progress on stderr")
	quiet := fs.BoolP("quiet", "q", false, "quiet: no progress, even with -p (as qemu-img)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("expected one FILE, got %d arguments", fs.NArg())
	}
	if !fs.Changed("backing") {
		return usagef(`-b NEW is required (use -b "" to flatten)`)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	update, finish := newProgress(*progress && !*quiet, stderr, "rebasing")
	err := qcow2.Rebase(ctx, fs.Arg(0), qcow2.RebaseOptions{
		Backing:       *backing,
		BackingFormat: qcow2.Format(*backingFmt),
		Unsafe:        *unsafe,
		Compress:      *compress,
		Progress:      update,
	})
	finish()
	return err
}
