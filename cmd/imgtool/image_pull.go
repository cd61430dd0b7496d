package main

import (
	"context"
	"fmt"
	"io"

	"github.com/imgtool/imgtool/internal/registry"
	"github.com/imgtool/imgtool/layers"
)

func runImagePull(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("image pull", "[--platform OS/ARCH[/VARIANT]] [--all-platforms] [--tls-verify=false] [--creds USER:PASS] [--authfile FILE] [-p] REF DIR[:TAG]", stdout, stderr)
	platform := fs.String("platform", "", "`OS/ARCH[/VARIANT]` to take from a multi-platform image (default: the host's)")
	all := fs.Bool("all-platforms", false, "keep a multi-platform index whole, with every image it lists")
	tf := addTransferFlags(fs, "show one progress bar per blob on stderr", "")
	asJSON, ropts, err := tf.parse(fs, args, 2, "want REF and DIR[:TAG], got %d arguments")
	if err != nil {
		return err
	}
	dst, plat, err := parseImageArg(fs.Arg(1), *platform)
	if err != nil {
		return err
	}
	if *all && plat != nil {
		return usagef("--platform and --all-platforms exclude each other")
	}
	res, err := transfer(tf, stderr, func(ctx context.Context, update registry.ProgressFunc) (*layers.PullResult, error) {
		return layers.Pull(ctx, fs.Arg(0), dst, layers.PullOptions{Registry: ropts, Platform: plat, AllPlatforms: *all, Progress: update})
	})
	if err != nil {
		return err
	}
	if asJSON {
		return writeJSON(stdout, res)
	}
	fmt.Fprintf(stdout, "pulled %s into %s: %s, %s: %d fetched (%s), %d already there\n",
		res.Reference, dst, res.Descriptor.Digest, plural(res.Blobs, "blob"), res.Fetched, storeBytes(res.Bytes), res.Present)
	return nil
}

func runImagePush(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("image push", "[--tls-verify=false] [--creds USER:PASS] [--authfile FILE] [-p] DIR[:TAG] REF", stdout, stderr)
	var tf transferFlags // addTransferFlags's, with --mount-from among them
	tf.rf = addRegistryFlags(fs)
	mountFrom := fs.String("mount-from", "", "`HOST/REPO` of the same registry to mount missing blobs from (default: where the image was pulled from)")
	tf.progress = progressFlags(fs, "show one progress bar per blob on stderr")
	tf.output = fs.String("output", "human", "output format: human or json")
	asJSON, ropts, err := tf.parse(fs, args, 2, "want DIR[:TAG] and REF, got %d arguments")
	if err != nil {
		return err
	}
	src, _, err := parseImageArg(fs.Arg(0), "")
	if err != nil {
		return err
	}
	res, err := transfer(tf, stderr, func(ctx context.Context, update registry.ProgressFunc) (*layers.PushResult, error) {
		return layers.Push(ctx, src, fs.Arg(1), layers.PushOptions{Registry: ropts, MountFrom: *mountFrom, Progress: update})
	})
	if err != nil {
		return err
	}
	if asJSON {
		return writeJSON(stdout, res)
	}
	fmt.Fprintf(stdout, "pushed %s to %s: %s, %s: %d uploaded (%s), %d already there\n",
		src, res.Reference, res.Descriptor.Digest, plural(res.Blobs, "layer blob"), res.Uploaded, storeBytes(res.Bytes), res.Skipped)
	return nil
}
