package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/imgtool/imgtool/layers"
	"github.com/imgtool/imgtool/overlay"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/spf13/pflag"
)

// This file holds the argument handling that the image, rootfs and store
// commands share: an image reference DIR[:TAG] with the --platform that
// picks from it, and a layout DIR.

// parseImageArg parses the DIR[:TAG] argument arg and the --platform
// value platform ("" gives a nil platform: the library's default pick).
// A malformed reference is a usage error.
func parseImageArg(arg, platform string) (layers.ImageRef, *ocispec.Platform, error) {
	ref, err := layers.ParseImageRef(arg)
	if err != nil {
		return layers.ImageRef{}, nil, usagef("%v", err)
	}
	plat, err := parsePlatform(platform)
	if err != nil {
		return layers.ImageRef{}, nil, err
	}
	return ref, plat, nil
}

// layoutCommand starts image ls and image verify (name): it parses
// their one flag, --output, and opens their one argument, the OCI
// layout DIR.
func layoutCommand(name string, args []string, stdout, stderr io.Writer) (l *layers.Layout, dir string, json bool, err error) {
	fs := newFlagSet(name, "DIR", stdout, stderr)
	output := fs.String("output", "human", "output format: human or json")
	if json, err = parseOutputArgs(fs, args, output, 1, "want one DIR argument, got %d"); err != nil {
		return nil, "", false, err
	}
	l, err = layers.OpenLayout(fs.Arg(0))
	return l, fs.Arg(0), json, err
}

// storeImageFlags are the flags rootfs mount and store unpack end with:
// --platform, -p, --output and the registry flags (for docker://REF).
type storeImageFlags struct {
	platform *string
	progress *bool
	output   *string
	rf       *registryFlags
}

func addStoreImageFlags(fs *pflag.FlagSet) storeImageFlags {
	var f storeImageFlags
	f.platform = fs.String("platform", "", "`OS/ARCH[/VARIANT]` to pick from a multi-platform image (default: the host's)")
	f.progress = progressFlags(fs, "show progress on stderr")
	f.output = fs.String("output", "human", "output format: human or json")
	f.rf = addRegistryFlags(fs)
	return f
}

// storeImage is the image argument of rootfs mount and store unpack,
// DIR:TAG in a local layout or docker://REF, with the layer store it
// goes into and the options its flags give.
type storeImage struct {
	store  *overlay.Store
	ref    fmt.Stringer    // the argument, as the report names it
	local  layers.ImageRef // when remote is ""
	remote string          // docker://REF
	opts   overlay.ImageOptions
	ropts  overlay.RemoteOptions
}

// parse prepares a command that unpacks an image into the layer store:
// it parses args and checks that n arguments remain (want is the usage
// error otherwise, with a %d for the number given), then opens the
// first as the image: it parses it and --platform (a DIR:TAG as
// parseImageArg does; for docker://REF also the registry flags), then
// opens the --store directory *store ("" for the default). The image
// options carry the platform and, with -p, a line per layer on stderr.
func (f storeImageFlags) parse(fs *pflag.FlagSet, args []string, n int, want string, store *string, stderr io.Writer) (im *storeImage, json bool, err error) {
	if json, err = parseOutputArgs(fs, args, f.output, n, want); err != nil {
		return nil, false, err
	}
	im, err = f.open(*store, fs.Arg(0), stderr)
	return im, json, err
}

func (f storeImageFlags) open(storeDir, arg string, stderr io.Writer) (*storeImage, error) {
	im := &storeImage{ref: stringer(arg)}
	var plat *ocispec.Platform
	var err error
	if strings.HasPrefix(arg, "docker://") {
		im.remote = arg
		if plat, err = parsePlatform(*f.platform); err != nil {
			return nil, err
		}
		if im.ropts.Registry, err = f.rf.options(); err != nil {
			return nil, err
		}
	} else {
		if im.local, plat, err = parseImageArg(arg, *f.platform); err != nil {
			return nil, err
		}
		im.ref = im.local
	}
	if im.store, err = rootfsOpenStore(storeDir); err != nil {
		return nil, err
	}
	im.opts = overlay.ImageOptions{Platform: plat, Progress: rootfsProgress(*f.progress, stderr)}
	return im, nil
}

// unpack unpacks the image's layers into the store.
func (im *storeImage) unpack(ctx context.Context) (overlay.UnpackStats, error) {
	if im.remote != "" {
		return im.store.UnpackRemote(ctx, im.remote, im.opts, im.ropts)
	}
	return im.store.Unpack(ctx, im.local, im.opts)
}

// mount unpacks the image and mounts a container of it on target.
func (im *storeImage) mount(ctx context.Context, target string, mopts overlay.MountOptions) (*overlay.Container, overlay.UnpackStats, error) {
	if im.remote != "" {
		return im.store.MountRemote(ctx, im.remote, target, mopts, im.opts, im.ropts)
	}
	return im.store.Mount(ctx, im.local, target, mopts, im.opts)
}

// stringer prints a string where a fmt.Stringer is wanted.
type stringer string

func (s stringer) String() string { return string(s) }
