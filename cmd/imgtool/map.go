package main

import (
	"io"

	"github.com/imgtool/imgtool/qcow2"
)

// runMap implements `imgtool map`: how each guest range of the chain is
// stored, as qemu-img map prints it.
func runMap(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("map", "[--output human|json] [-f FMT] [-U] FILE", stderr)
	output := fs.String("output", "human", "output format: human or json")
	format := fs.StringP("format", "f", "", "image format (qcow2 or raw); probed when omitted")
	forceShare := fs.BoolP("force-share", "U", false, "open without taking image locks (allows reading an image another process writes)")
	asJSON, err := parseFlagsOutput(fs, args, output)
	if err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("expected one FILE, got %d arguments", fs.NArg())
	}
	img, err := qcow2.Open(fs.Arg(0), qcow2.Options{Format: qcow2.Format(*format), ForceShare: *forceShare})
	if err != nil {
		return err
	}
	defer img.Close()
	entries, err := img.Map()
	if err != nil {
		return err
	}
	if asJSON {
		return qcow2.WriteMapJSON(stdout, entries)
	}
	return qcow2.WriteMapHuman(stdout, entries)
}
