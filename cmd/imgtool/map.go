package main

import (
	"context"
	"io"

	"github.com/imgtool/imgtool/internal/qemusize"
	"github.com/imgtool/imgtool/qcow2"
)

// runMap implements `imgtool map`: how each guest range of the chain is
// stored, as qemu-img map prints it.
func runMap(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("map", "[--output human|json] [-f FMT] [-U] [--start-offset OFFSET] [--max-length LEN] [--tls-verify=false] [--creds USER:PASS] [--authfile FILE] FILE|docker://REF", stdout, stderr)
	output := fs.String("output", "human", "output format: human or json")
	format := fs.StringP("format", "f", "", "image format (qcow2 or raw); probed when omitted")
	forceShare := fs.BoolP("force-share", "U", false, "open without taking image locks (allows reading an image another process writes)")
	backingRoot := backingRootFlag(fs)
	imgFlags := addImageFlags(fs)
	startOffset := fs.String("start-offset", "", "map from this guest offset on (default 0)")
	maxLength := fs.String("max-length", "", "map at most this many bytes (default: to the end)")
	asJSON, err := parseOutputArgs(fs, args, output, 1, "expected one FILE, got %d arguments")
	if err != nil {
		return err
	}
	start, length := int64(0), int64(-1)
	if *startOffset != "" {
		if start, err = qemusize.Parse(*startOffset); err != nil {
			return usagef("--start-offset: %v", err)
		}
	}
	if *maxLength != "" {
		if length, err = qemusize.Parse(*maxLength); err != nil {
			return usagef("--max-length: %v", err)
		}
	}
	ropts, err := backingRootOptions(*backingRoot)
	if err != nil {
		return err
	}
	img, err := imgFlags.open(context.Background(), fs.Arg(0), ropts(qcow2.Options{Format: qcow2.Format(*format), ForceShare: *forceShare}))
	if err != nil {
		return err
	}
	defer img.Close()
	entries, err := img.Map()
	if err != nil {
		return err
	}
	if *startOffset != "" || *maxLength != "" {
		entries = clipMap(entries, start, length, img.Size())
	}
	if asJSON {
		return writeMapJSON(stdout, entries)
	}
	return writeMapHuman(stdout, entries)
}

// clipMap keeps the part of entries within [start, start+length) (length
// < 0: to size), as qemu-img map --start-offset/--max-length reports it:
// runs cut at both ends, host offsets moved along, and an empty range
// reported as one zero-length run at start.
func clipMap(entries []qcow2.MapEntry, start, length, size int64) []qcow2.MapEntry {
	end := size
	if length >= 0 && length < size-start {
		end = start + length
	}
	var out []qcow2.MapEntry
	for _, e := range entries {
		lo, hi := max(e.Start, start), min(e.Start+e.Length, end)
		if lo >= hi {
			continue
		}
		if e.Offset != nil {
			off := *e.Offset + (lo - e.Start)
			e.Offset = &off
		}
		e.Start, e.Length = lo, hi-lo
		out = append(out, e)
	}
	if len(out) == 0 {
		out = []qcow2.MapEntry{{Start: start}}
	}
	return out
}
