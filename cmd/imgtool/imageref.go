package main

import (
	"io"

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

// openStoreImage prepares a command that unpacks an image into the layer
// store (rootfs mount, store unpack): it parses the DIR:TAG argument arg
// and --platform as parseImageArg does, then opens the --store directory
// storeDir ("" for the default). The returned ImageOptions carry the
// platform and, when progress is set, a line per layer on stderr.
func openStoreImage(storeDir, arg, platform string, progress bool, stderr io.Writer) (*overlay.Store, layers.ImageRef, overlay.ImageOptions, error) {
	ref, plat, err := parseImageArg(arg, platform)
	if err != nil {
		return nil, layers.ImageRef{}, overlay.ImageOptions{}, err
	}
	s, err := rootfsOpenStore(storeDir)
	if err != nil {
		return nil, layers.ImageRef{}, overlay.ImageOptions{}, err
	}
	return s, ref, overlay.ImageOptions{Platform: plat, Progress: rootfsProgress(progress, stderr)}, nil
}

// openLayoutArg opens the OCI layout named by the one DIR argument of
// image ls and image verify.
func openLayoutArg(fs *pflag.FlagSet) (*layers.Layout, error) {
	if fs.NArg() != 1 {
		return nil, usagef("want one DIR argument, got %d", fs.NArg())
	}
	return layers.OpenLayout(fs.Arg(0))
}

// openStoreRemote opens the store for a docker:// image: the platform to
// pick, per-layer progress and the registry options of the flags.
func openStoreRemote(storeDir, platform string, progress bool, rf *registryFlags, stderr io.Writer) (*overlay.Store, overlay.ImageOptions, overlay.RemoteOptions, error) {
	plat, err := parsePlatform(platform)
	if err != nil {
		return nil, overlay.ImageOptions{}, overlay.RemoteOptions{}, err
	}
	ro, err := rf.options()
	if err != nil {
		return nil, overlay.ImageOptions{}, overlay.RemoteOptions{}, err
	}
	s, err := rootfsOpenStore(storeDir)
	if err != nil {
		return nil, overlay.ImageOptions{}, overlay.RemoteOptions{}, err
	}
	return s, overlay.ImageOptions{Platform: plat, Progress: rootfsProgress(progress, stderr)}, overlay.RemoteOptions{Registry: ro}, nil
}

// stringer prints a string where a fmt.Stringer is wanted.
type stringer string

func (s stringer) String() string { return string(s) }
