package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"

	"github.com/imgtool/imgtool/qcow2"
)

// runConvert implements `imgtool convert`: copy the guest content of an
// image (chain) into a new image.
func runConvert(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("convert", "[-f FMT] [-O raw] [-p] SRC DST", stderr)
	format := fs.StringP("format", "f", "", "source format (qcow2 or raw); probed when omitted")
	outFormat := fs.StringP("output-format", "O", "raw", "output format (raw)")
	progress := fs.BoolP("progress", "p", false, "show progress on stderr")
	forceShare := fs.BoolP("force-share", "U", false, "open the source without taking image locks")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		return usagef("expected SRC and DST, got %d arguments", fs.NArg())
	}
	switch *outFormat {
	case "raw":
	case "qcow2":
		return fmt.Errorf("qcow2 output is not implemented yet; use -O raw")
	default:
		return usagef("unknown output format %q (raw is supported)", *outFormat)
	}
	src, err := qcow2.Open(fs.Arg(0), qcow2.Options{Format: qcow2.Format(*format), ForceShare: *forceShare})
	if err != nil {
		return err
	}
	defer src.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	update, finish := newProgress(*progress, stderr, "converting")
	err = qcow2.ConvertRaw(ctx, src, fs.Arg(1), qcow2.ConvertOptions{Progress: update})
	finish()
	return err
}
