package main

import (
	"fmt"
	"io"

	"github.com/imgtool/imgtool/overlay/vmimage"
)

// runPull rebuilds a VM chain image from a registry as a qcow2 chain in a
// directory (overlay/vmimage) and prints the top image's path.
func runPull(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("pull", "[--tls-verify=false] [--creds USER:PASS] [--authfile FILE] [-p] REF DIR", stdout, stderr)
	rf := addRegistryFlags(fs)
	progress := progressFlags(fs, "show one progress bar per level blob on stderr")
	output := fs.String("output", "human", "output format: human (the top image's path) or json")
	asJSON, err := parseFlagsOutput(fs, args, output)
	if err != nil {
		return err
	}
	if fs.NArg() != 2 {
		return usagef("want REF and DIR, got %d arguments", fs.NArg())
	}
	ropts, err := rf.options()
	if err != nil {
		return err
	}
	update, finish := newBlobProgress(*progress, stderr)
	ctx, stop := interruptible()
	defer stop()
	res, err := vmimage.Pull(ctx, fs.Arg(0), fs.Arg(1), vmimage.PullOptions{Registry: ropts, Progress: update})
	finish()
	if err != nil {
		return err
	}
	if asJSON {
		return writeJSON(stdout, res)
	}
	if *progress {
		fmt.Fprintf(stderr, "pulled %s: %s, %d fetched (%s), %d already there\n", res.Reference, plural(len(res.Levels), "level"), res.Fetched, storeBytes(res.Bytes), res.Kept)
	}
	fmt.Fprintln(stdout, res.Top)
	return nil
}
