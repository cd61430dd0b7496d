package main

import (
	"context"
	"fmt"
	"io"

	"github.com/imgtool/imgtool/internal/registry"
	"github.com/imgtool/imgtool/overlay/vmimage"
)

// runPush pushes a qcow2 image and its backing chain to a registry as a
// VM chain image, one layer per level (overlay/vmimage).
func runPush(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("push", "[--flatten] [--tls-verify=false] [--creds USER:PASS] [--authfile FILE] [-p] IMAGE REF", stdout, stderr)
	flatten := fs.Bool("flatten", false, "push one level, disk/disk.qcow2, without a backing file: the chain converted to a standalone qcow2 (a KubeVirt containerDisk)")
	tf := addTransferFlags(fs, "show one progress bar per level blob on stderr", "")
	asJSON, ropts, err := tf.parse(fs, args, 2, "want IMAGE and REF, got %d arguments")
	if err != nil {
		return err
	}
	opts := vmimage.PushOptions{Registry: ropts, Flatten: *flatten}
	var convFinish func()
	if *flatten && *tf.progress {
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
	res, err := transfer(tf, stderr, func(ctx context.Context, update registry.ProgressFunc) (*vmimage.PushResult, error) {
		opts.Progress = update
		res, err := vmimage.Push(ctx, fs.Arg(0), fs.Arg(1), opts)
		if convFinish != nil {
			convFinish()
		}
		return res, err
	})
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
