package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/imgtool/imgtool/internal/qemusize"
	"github.com/imgtool/imgtool/layers"
	"github.com/imgtool/imgtool/overlay/vmdisk"
)

// runImageDisk is imgtool image disk: an OCI image as an ext4 qcow2 chain,
// one level per layer.
func runImageDisk(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("image disk", "DIR[:TAG]|docker://REF OUTDIR", stdout, stderr)
	sizeStr := fs.String("size", "16G", "virtual disk `SIZE`, 16M to 1T (fixed, so images sharing layers share levels)")
	clusterStr := fs.String("cluster-size", "4K", "qcow2 cluster `SIZE` of each level, 512 to 2M")
	platform := fs.String("platform", "", "`OS/ARCH[/VARIANT]` to pick from an index (default: the only image, else the host's)")
	tf := addTransferFlags(fs, "show progress on stderr: the blobs pulled (docker://), then each layer applied", "")
	asJSON, ropts, err := tf.parse(fs, args, 2, "want DIR[:TAG] or docker://REF, and OUTDIR, got %d arguments")
	if err != nil {
		return err
	}
	size, err := qemusize.Parse(*sizeStr)
	if err != nil {
		return usagef("--size: %v", err)
	}
	cluster, err := qemusize.Parse(*clusterStr)
	if err != nil {
		return usagef("--cluster-size: %v", err)
	}
	plat, err := parsePlatform(*platform)
	if err != nil {
		return err
	}
	pullUpdate, pullFinish := newBlobProgress(*tf.progress, stderr)
	update, finish := newPhaseProgress(*tf.progress, stderr)
	opts := vmdisk.Options{Size: size, ClusterSize: cluster, Platform: plat}
	if *tf.progress {
		opts.Progress = func(p vmdisk.Progress) {
			pullFinish() // the pull's bars are complete before the first layer
			update(fmt.Sprintf("layer %d/%d", p.Layer+1, p.Layers), p.Done)
		}
	}
	ctx, stop := interruptible()
	defer stop()
	var res *vmdisk.Result
	if src := fs.Arg(0); strings.HasPrefix(src, "docker://") {
		res, err = vmdisk.BuildFromRegistry(ctx, src, fs.Arg(1), opts, layers.PullOptions{Registry: ropts, Progress: pullUpdate})
	} else {
		var ref layers.ImageRef
		if ref, plat, err = parseImageArg(src, *platform); err == nil {
			opts.Platform = plat
			res, err = vmdisk.Build(ctx, ref, fs.Arg(1), opts)
		}
	}
	pullFinish()
	finish(err)
	if err != nil {
		return err
	}
	if asJSON {
		return writeJSON(stdout, res)
	}
	fmt.Fprintln(stdout, res.Top)
	return nil
}
