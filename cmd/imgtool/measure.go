package main

import (
	"context"
	"io"

	"github.com/imgtool/imgtool/internal/qemusize"

	"github.com/imgtool/imgtool/qcow2"
)

// runMeasure implements `imgtool measure`, as qemu-img measure.
func runMeasure(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("measure", "[-O qcow2|raw] [-o k=v,...] [-f FMT] [-U] (--size N | SRC) [--output human|json]", stdout, stderr)
	outFormat := fs.StringP("output-format", "O", "raw", "format of the image to measure for: raw or qcow2")
	options := fs.StringArrayP("options", "o", nil, "qemu-img create options: compat, cluster_size, extended_l2, refcount_bits, preallocation, backing_file, ... (-o help lists them)")
	sizeStr := fs.String("size", "", "measure a new image of this size instead of SRC")
	format := fs.StringP("format", "f", "", "SRC format (qcow2 or raw); probed when omitted")
	forceShare := fs.BoolP("force-share", "U", false, "open SRC without taking image locks")
	backingRoot := backingRootFlag(fs)
	output := fs.String("output", "human", "output format: human or json")
	asJSON, err := parseFlagsOutput(fs, args, output)
	if err != nil {
		return err
	}
	if err := createOptionsHelp(*options, *outFormat, stdout); err != nil {
		return err
	}
	var opts qcow2.CreateOptions
	switch *outFormat {
	case "raw", "qcow2":
		opts.Format = qcow2.Format(*outFormat)
	default:
		return usagef("unknown output format %q (raw and qcow2 are supported)", *outFormat)
	}
	for _, o := range *options {
		if err := parseCreateOptions(&opts, o); err != nil {
			return usagef("-o: %v", err)
		}
	}
	ropts, err := backingRootOptions(*backingRoot)
	if err != nil {
		return err
	}
	var (
		src  *qcow2.Image
		size int64
	)
	switch {
	case *sizeStr != "" && fs.NArg() == 0:
		if size, err = qemusize.Parse(*sizeStr); err != nil {
			return usagef("--size: %v", err)
		}
	case *sizeStr == "" && fs.NArg() == 1:
		if src, err = qcow2.Open(fs.Arg(0), ropts(qcow2.Options{Format: qcow2.Format(*format), ForceShare: *forceShare})); err != nil {
			return err
		}
		defer src.Close()
	default:
		return usagef("give either --size N or one SRC")
	}
	res, err := qcow2.Measure(context.Background(), src, size, opts)
	if err != nil {
		return err
	}
	if asJSON {
		return res.WriteJSON(stdout)
	}
	return res.WriteHuman(stdout)
}
