package main

import (
	"context"
	"fmt"
	"io"

	"github.com/imgtool/imgtool/internal/registry"
	"github.com/imgtool/imgtool/overlay/vmimage"
)

// runPull rebuilds a VM chain image from a registry as a qcow2 chain in a
// directory (overlay/vmimage) and prints the top image's path.
func runPull(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("pull", "[--tls-verify=false] [--creds USER:PASS] [--authfile FILE] [-p] REF DIR", stdout, stderr)
	tf := addTransferFlags(fs, "show one progress bar per level blob on stderr", "output format: human (the top image's path) or json")
	asJSON, ropts, err := tf.parse(fs, args, 2, "want REF and DIR, got %d arguments")
	if err != nil {
		return err
	}
	res, err := transfer(tf, stderr, func(ctx context.Context, update registry.ProgressFunc) (*vmimage.PullResult, error) {
		return vmimage.Pull(ctx, fs.Arg(0), fs.Arg(1), vmimage.PullOptions{Registry: ropts, Progress: update})
	})
	if err != nil {
		return err
	}
	if asJSON {
		return writeJSON(stdout, res)
	}
	if *tf.progress {
		fmt.Fprintf(stderr, "pulled %s: %s, %d fetched (%s), %d already there\n", res.Reference, plural(len(res.Levels), "level"), res.Fetched, storeBytes(res.Bytes), res.Kept)
	}
	fmt.Fprintln(stdout, res.Top)
	return nil
}
