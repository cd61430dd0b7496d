package main

import (
	"context"

	"github.com/spf13/pflag"

	"github.com/imgtool/imgtool/internal/registry"
	"github.com/imgtool/imgtool/overlay/vmimage"
	"github.com/imgtool/imgtool/qcow2"
)

// imageFlags are the registry options of the commands that read an image
// given as a path or as docker://REF, a VM chain image read lazily from
// the registry by range requests (info, map, compare, convert).
type imageFlags struct{ reg *registryFlags }

func addImageFlags(fs *pflag.FlagSet) imageFlags {
	return imageFlags{reg: addRegistryAuthFlags(fs)}
}

// open opens arg: a local image with opts, or with the docker:// prefix
// the chain image arg names, straight from the registry
// (vmimage.OpenRemote; only opts.NoBacking applies, and a format other
// than qcow2 is refused).
func (f imageFlags) open(ctx context.Context, arg string, opts qcow2.Options) (*qcow2.Image, error) {
	if !registry.IsReference(arg) {
		return qcow2.Open(arg, opts)
	}
	if opts.Format != "" && opts.Format != qcow2.FormatQcow2 {
		return nil, usagef("%s is a VM chain image, whose levels are qcow2, not %s", arg, opts.Format)
	}
	ro, err := f.reg.options()
	if err != nil {
		return nil, err
	}
	return vmimage.OpenRemote(ctx, arg, vmimage.RemoteOptions{
		Registry: ro,
		Qcow2:    qcow2.Options{NoBacking: opts.NoBacking, MaxChainDepth: opts.MaxChainDepth},
	})
}

// chainInfo is qcow2.ChainInfo for a path or a docker:// reference (whose
// chain is opened once and each level described).
func (f imageFlags) chainInfo(ctx context.Context, arg string, opts qcow2.Options) ([]*qcow2.ImageInfo, error) {
	if !registry.IsReference(arg) {
		return qcow2.ChainInfo(arg, opts)
	}
	img, err := f.open(ctx, arg, opts)
	if err != nil {
		return nil, err
	}
	defer img.Close()
	var out []*qcow2.ImageInfo
	for l := img; l != nil; l = l.Backing() {
		info, err := l.Info()
		if err != nil {
			return out, err
		}
		out = append(out, info)
	}
	return out, nil
}
