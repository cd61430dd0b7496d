package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/imgtool/imgtool/layers"

	"github.com/imgtool/imgtool/internal/qemusize"

	"github.com/imgtool/imgtool/overlay/vmdisk"
)

// runImageDisk is imgtool image disk: an OCI image as an ext4 qcow2 chain,
// one level per layer.
func runImageDisk(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("image disk", "DIR[:TAG]|docker://REF OUTDIR", stdout, stderr)
	sizeStr := fs.String("size", "16G", "virtual disk `SIZE`, 16M to 1T (fixed, so images sharing layers share levels)")
	cluster := fs.Int64("cluster-size", vmdisk.DefaultClusterSize, "qcow2 cluster size of each level in bytes")
	platform := fs.String("platform", "", "`OS/ARCH[/VARIANT]` to pick from an index (default: the only image, else the host's)")
	progress := progressFlags(fs, "show progress on stderr")
	output := fs.String("output", "human", "output format: human or json")
	asJSON, err := parseFlagsOutput(fs, args, output)
	if err != nil {
		return err
	}
	if fs.NArg() != 2 {
		return usagef("want DIR[:TAG] or docker://REF, and OUTDIR, got %d arguments", fs.NArg())
	}
	size, err := qemusize.Parse(*sizeStr)
	if err != nil {
		return usagef("--size: %v", err)
	}
	plat, err := parsePlatform(*platform)
	if err != nil {
		return err
	}
	update, finish := newProgress(*progress, stderr, "building disk")
	opts := vmdisk.Options{Size: size, ClusterSize: *cluster, Platform: plat}
	if *progress {
		opts.Progress = func(p vmdisk.Progress) { update(p.Bytes, -1) }
	}
	var res *vmdisk.Result
	if src := fs.Arg(0); strings.HasPrefix(src, "docker://") {
		res, err = vmdisk.BuildFromRegistry(context.Background(), src, fs.Arg(1), opts, layers.PullOptions{})
	} else {
		var ref layers.ImageRef
		if ref, plat, err = parseImageArg(src, *platform); err == nil {
			opts.Platform = plat
			res, err = vmdisk.Build(context.Background(), ref, fs.Arg(1), opts)
		}
	}
	finish()
	if err != nil {
		return err
	}
	if asJSON {
		return writeJSON(stdout, res)
	}
	fmt.Fprintln(stdout, res.Top)
	return nil
}
