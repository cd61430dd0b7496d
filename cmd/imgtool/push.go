package main

import (
	"fmt"
	"io"

	"github.com/imgtool/imgtool/overlay/vmimage"
)

// runPush pushes a qcow2 image and its backing chain to a registry as a
// VM chain image, one layer per level (overlay/vmimage).
func runPush(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("push", "[--flatten] [--tls-verify=false] [--creds USER:PASS] [--authfile FILE] [-p] IMAGE REF", stdout, stderr)
	flatten := fs.Bool("flatten", false, "push one level, disk/disk.qcow2, without a backing file: the chain converted to a standalone qcow2 (a KubeVirt containerDisk)")
	rf := addRegistryFlags(fs)
	progress := progressFlags(fs, "show one progress bar per level blob on stderr")
	output := fs.String("output", "human", "output format: human or json")
	asJSON, err := parseFlagsOutput(fs, args, output)
	if err != nil {
		return err
	}
	if fs.NArg() != 2 {
		return usagef("want IMAGE and REF, got %d arguments", fs.NArg())
	}
	ropts, err := rf.options()
	if err != nil {
		return err
	}
	opts := vmimage.PushOptions{Registry: ropts, Flatten: *flatten}
	var convFinish func()
	if *flatten && *progress {
		opts.ConvertProgress, convFinish = newProgress(true, stderr, "flattening")
		// The convert ends before the first upload starts.
		conv := opts.ConvertProgress
		opts.ConvertProgress = func(done, total int64) {
			conv(done, total)
			if done == total {
				convFinish()
			}
		}
	}
	update, finish := newBlobProgress(*progress, stderr)
	opts.Progress = update
	ctx, stop := interruptible()
	defer stop()
	res, err := vmimage.Push(ctx, fs.Arg(0), fs.Arg(1), opts)
	if convFinish != nil {
		convFinish()
	}
	finish()
	if err != nil {
		return err
	}
	if asJSON {
		return writeJSON(stdout, res)
	}
	fmt.Fprintf(stdout, "pushed %s to %s: %s, %s: %d uploaded (%s), %d already there\n",
		fs.Arg(0), res.Reference, res.Digest, plural(len(res.Levels), "level"), res.Uploaded, storeBytes(res.Bytes), res.Skipped)
	return nil
}
