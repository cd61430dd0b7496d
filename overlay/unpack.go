package overlay

import (
	"context"
	"fmt"
	"io"
	"path/filepath"

	"github.com/imgtool/imgtool/layers"
	digest "github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// ImageOptions pick an image of a layout and bound its unpacking. The zero
// value picks the image as layers.Layout.Resolve does by default and uses
// layers' default limits.
type ImageOptions struct {
	// Platform picks one image of a multi-platform tag (default: the
	// only one, else the host's).
	Platform *ocispec.Platform
	// Limits bound each layer's unpacking (zero: layers' defaults).
	Limits layers.Limits
	// Progress, when set, is called once per layer as it becomes
	// available (unpacked or found in the store), from the unpacking
	// goroutines, one call at a time.
	Progress func(Progress)
}

// resolveImage reads the image ref names and describes its layers as
// store jobs: ChainIDs from the config's diff_ids, each layer filled by
// layers.Apply in overlay format from its blob, with the blob's digest and
// the diff_id verified.
func (s *Store) resolveImage(ctx context.Context, ref layers.ImageRef, opts ImageOptions) (*imageSpec, error) {
	dir, err := filepath.Abs(ref.Dir)
	if err != nil {
		return nil, err
	}
	l, err := layers.OpenLayout(dir)
	if err != nil {
		return nil, err
	}
	img, err := l.Resolve(ctx, ref.Tag, layers.ResolveOptions{Platform: opts.Platform})
	if err != nil {
		return nil, err
	}
	diffIDs := append([]digest.Digest(nil), img.Config.RootFS.DiffIDs...)
	chain := identity.ChainIDs(append([]digest.Digest(nil), diffIDs...))
	im := &imageSpec{Dir: dir, Tag: ref.Tag, Manifest: img.Descriptor, Platform: opts.Platform}
	im.Manifest.Annotations = nil
	for i, desc := range img.Manifest.Layers {
		rec, ao := s.layerJobSpec(i, desc, chain, diffIDs, opts.Limits)
		im.Jobs = append(im.Jobs, layerJob{rec: rec, fill: func(ctx context.Context, dir string) (int64, error) {
			rc, err := l.OpenBlob(desc)
			if err != nil {
				return 0, err
			}
			defer rc.Close()
			d, err := layers.Apply(ctx, rc, dir, ao)
			if err != nil {
				return 0, err
			}
			// Drain what follows the tar (padding) so the blob reader
			// checks the whole blob's size and digest.
			if _, err := io.Copy(io.Discard, rc); err != nil {
				return 0, err
			}
			return d.UncompressedSize, nil
		}})
	}
	return im, nil
}

// Unpack makes every layer of the image ref names available in the store,
// unpacking the missing ones in parallel, and pins the image (see GC).
func (s *Store) Unpack(ctx context.Context, ref layers.ImageRef, opts ImageOptions) (UnpackStats, error) {
	im, err := s.resolveImage(ctx, ref, opts)
	if err != nil {
		return UnpackStats{}, err
	}
	return s.unpackImage(ctx, im, opts.Progress)
}

// unpackImage makes the layers of the resolved image im available in the
// store, under the store lock, and pins im: Unpack and UnpackRemote.
func (s *Store) unpackImage(ctx context.Context, im *imageSpec, progress func(Progress)) (UnpackStats, error) {
	lk, err := acquireLock(ctx, s.path("store.lock"), false)
	if err != nil {
		return UnpackStats{}, err
	}
	defer lk.Unlock()
	st, err := s.ensureLayers(ctx, im.Jobs, progress)
	if err != nil {
		return st, err
	}
	chain, _ := im.chainOf()
	return st, s.pinImage(im, chain)
}

// Mount makes a container of the image ref names on target: it unpacks
// the layers the store lacks, then mounts overlayfs there (lower dirs from
// the store, top first; upper and work dirs in the store's container
// directory; index=off, redirect_dir=off, metacopy=off so that the upper
// dir stays committable; userxattr in a user namespace), or with
// MountOptions.Copy makes a flattened copy in target. It records the
// container so that Unmount and Commit find it from target.
//
// An error wrapping ErrMountUnsupported means overlayfs cannot be mounted
// here (no privilege or no overlay support): copy mode may work.
func (s *Store) Mount(ctx context.Context, ref layers.ImageRef, target string, opts MountOptions, iopts ImageOptions) (*Container, UnpackStats, error) {
	im, err := s.resolveImage(ctx, ref, iopts)
	if err != nil {
		return nil, UnpackStats{}, err
	}
	return s.mountNamed(ctx, im, ref.String(), target, opts, iopts.Progress)
}

// mountNamed is mountImage with its error naming the image as the
// caller's ref: Mount and MountRemote.
func (s *Store) mountNamed(ctx context.Context, im *imageSpec, ref, target string, opts MountOptions, progress func(Progress)) (*Container, UnpackStats, error) {
	c, st, err := s.mountImage(ctx, im, target, opts, progress)
	if err != nil {
		return nil, st, fmt.Errorf("mount %s on %s: %w", ref, target, err)
	}
	return c, st, nil
}

// layerJobSpec is the store record of layer i (blob desc) of an image
// whose ChainIDs and diffIDs are chain and diffIDs, and the options that
// apply it in overlay format with both digests verified, for local and
// registry images alike.
func (s *Store) layerJobSpec(i int, desc ocispec.Descriptor, chain, diffIDs []digest.Digest, limits layers.Limits) (Layer, layers.ApplyOptions) {
	rec := Layer{ChainID: chain[i], DiffID: diffIDs[i], Blob: desc.Digest, MediaType: desc.MediaType}
	if i > 0 {
		rec.Parent = chain[i-1]
	}
	ao := layers.ApplyOptions{
		Overlay:      true,
		UserXattr:    s.userXattr,
		Limits:       limits,
		ExpectDigest: desc.Digest,
		ExpectDiffID: diffIDs[i],
	}
	if s.userXattr {
		// A user namespace cannot create device nodes (other than the 0/0
		// whiteouts): leave them out, as rootless Docker and umoci
		// --rootless do.
		no := false
		ao.AllowDevices, ao.SkipDevices = &no, true
	}
	return rec, ao
}
