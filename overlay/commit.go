package overlay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/imgtool/imgtool/internal/ioprogress"
	"github.com/imgtool/imgtool/internal/registry"
	"github.com/imgtool/imgtool/layers"
	digest "github.com/opencontainers/go-digest"
)

// ErrBaseMoved: the tag a container was mounted from no longer names the
// same image, so Commit cannot find the base it should build on.
var ErrBaseMoved = errors.New("overlay: the container's image tag now names another image")

// ErrNoChanges is returned by Commit when the container has no changes
// and CommitOptions.AllowEmpty is not set; nothing is written.
var ErrNoChanges = errors.New("overlay: nothing to commit")

// emptyTarSize is the size of a tar stream without entries: the
// end-of-archive marker of two zero blocks.
const emptyTarSize = 1024

// CommitOptions configure Commit. The zero value writes a gzip layer with
// the files' own mtimes.
type CommitOptions struct {
	// Compression of the new layer (default layers.Gzip).
	Compression layers.Compression
	// SourceDateEpoch, when set, is the new config's created time and
	// clamps the new layer's mtimes (reproducible output).
	SourceDateEpoch *time.Time
	// CreatedBy is the history entry's created_by (default
	// "imgtool rootfs commit").
	CreatedBy string
	// AllowEmpty commits an empty layer when the container has no
	// changes; by default Commit then fails with ErrNoChanges and writes
	// nothing.
	AllowEmpty bool
	// Progress, when set, is called with a phase ("diff" while the
	// layer is written from the container's changes, "base" while the
	// base image of a container mounted from a registry is fetched,
	// "store" while the image is written into the layout) and the bytes
	// done in it.
	Progress func(phase string, done int64)
	// Remote reaches the registry of a container mounted from a registry
	// (MountRemote), whose base image Commit fetches from there; its
	// Progress is not used.
	Remote RemoteOptions
}

// CommitResult describes the image Commit wrote.
type CommitResult struct {
	Container *Container
	Layer     layers.Descriptor // the new layer
	Image     *layers.BuildResult
}

// Commit turns the changes of the container mounted (or last mounted) on
// target into a new layer on top of the container's image and writes
// the result into the layout dst.Dir under dst.Tag (the layout is created
// if missing; the base image's blobs are copied when it is another
// layout).
//
// For a container mounted from a registry (MountRemote), the store holds
// the base image's layers unpacked but not their blobs: Commit fetches
// the base image by the manifest digest the container was mounted from
// (so a tag moved since does not matter) through opts.Remote, skipping
// the layer blobs dst.Dir has already, as umoci repack and podman commit
// write the whole image.
//
// The layer is the upper dir read as an overlayfs upperdir (0/0 char
// devices become whiteouts, the opaque xattr an opaque marker), with the
// merged view of the image's layers as the lower tree, mounted read-only
// for the time of the commit, so that whiteouts of names no lower layer has
// and the opaque marks the kernel puts on new directories are left out.
//
// A copy-mode container is diffed against a flattened tree of its layers,
// made of hardlinks into the store in the store's tmp/ (read only, and
// removed after).
//
// The container may stay mounted, but nothing may write to it while
// Commit reads the upper dir.
func (s *Store) Commit(ctx context.Context, target string, dst layers.ImageRef, opts CommitOptions) (*CommitResult, error) {
	c, unlock, err := s.lockContainer(ctx, target)
	if err != nil {
		return nil, err
	}
	defer unlock()
	src, overlayUpper := c.UpperDir(), true
	switch c.Mode {
	case ModeOverlay:
		if _, err := os.Stat(src); err != nil {
			return nil, fmt.Errorf("overlay: commit %s: container %q has no upper dir (mounted read-only?): %w", target, c.Name, err)
		}
	case ModeCopy:
		if c.ReadOnly {
			return nil, fmt.Errorf("overlay: commit %s: container %q is a read-only copy (its files are the store's)", target, c.Name)
		}
		src, overlayUpper = c.Target, false
	default:
		return nil, fmt.Errorf("overlay: commit %s: container %q has unknown mode %q", target, c.Name, c.Mode)
	}
	work, err := os.MkdirTemp(s.path("tmp"), "commit-")
	if err != nil {
		return nil, fmt.Errorf("overlay: %w", err)
	}
	defer removeTree(work)
	baseDir, baseTag := c.ImageDir, c.Tag
	if isRemotePin(c.ImageDir) {
		if baseDir, baseTag, err = s.commitRemoteBase(ctx, c, dst, work, opts); err != nil {
			return nil, fmt.Errorf("overlay: commit %s: base image %s:%s: %w", target, c.ImageDir, c.Tag, err)
		}
	}
	base, err := layers.OpenLayout(baseDir)
	if err != nil {
		return nil, fmt.Errorf("overlay: commit %s: base image: %w", target, err)
	}
	img, err := base.Resolve(ctx, baseTag, layers.ResolveOptions{Platform: c.Platform})
	if err != nil {
		return nil, fmt.Errorf("overlay: commit %s: base image: %w", target, err)
	}
	if img.Descriptor.Digest != c.Manifest.Digest {
		return nil, fmt.Errorf("%w: %s:%s is %s, the container was made from %s", ErrBaseMoved, c.ImageDir, c.Tag, img.Descriptor.Digest, c.Manifest.Digest)
	}
	lower := filepath.Join(work, "lower")
	if err := os.Mkdir(lower, 0o700); err != nil {
		return nil, fmt.Errorf("overlay: %w", err)
	}
	if c.Mode == ModeOverlay {
		if err := s.mountLowerView(c, lower); err != nil {
			return nil, err
		}
		defer unmount(lower)
	} else if err := s.flatten(ctx, c.Layers, lower, true); err != nil {
		return nil, err
	}

	// The blob goes to a file first: Build stores a layer file as is.
	blob := filepath.Join(work, "container-"+c.Name+".tar")
	f, err := os.OpenFile(blob, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("overlay: %w", err)
	}
	var w io.Writer = f
	if opts.Progress != nil {
		w = &ioprogress.Writer{W: f, Fn: func(n int64) { opts.Progress("diff", n) }}
	}
	d, err := layers.Create(ctx, w, src, layers.CreateOptions{
		Compression:     opts.Compression,
		Lower:           lower,
		OverlayUpper:    overlayUpper,
		SourceDateEpoch: opts.SourceDateEpoch,
	})
	if cerr := f.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("overlay: commit %s: %w", target, err)
	}
	if d.UncompressedSize <= emptyTarSize && !opts.AllowEmpty {
		return nil, fmt.Errorf("%w: container %q on %s has no changes", ErrNoChanges, c.Name, target)
	}
	by := opts.CreatedBy
	if by == "" {
		by = "imgtool rootfs commit"
	}
	res, err := layers.Build(ctx, dst.Dir, layers.BuildOptions{
		BaseLayout:      baseDir,
		Base:            baseTag,
		Platform:        c.Platform,
		Layers:          []string{blob},
		Tag:             dst.Tag,
		SourceDateEpoch: opts.SourceDateEpoch,
		CreatedBy:       by,
		Progress: func(done, _ int64) {
			if opts.Progress != nil {
				opts.Progress("store", done)
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("overlay: commit %s to %s: %w", target, dst, err)
	}
	return &CommitResult{Container: c, Layer: d, Image: res}, nil
}

// commitRemoteBase fetches the base image of c, a container mounted from
// a registry, by its manifest digest into a layout in work, tagged
// "base", and returns that layout. Layer blobs dst's layout holds are
// linked in first (same file system) so that they are not fetched again.
func (s *Store) commitRemoteBase(ctx context.Context, c *Container, dst layers.ImageRef, work string, opts CommitOptions) (string, string, error) {
	dir := filepath.Join(work, "base")
	if _, err := layers.InitLayout(dir); err != nil {
		return "", "", err
	}
	if have, err := layers.OpenLayout(dst.Dir); err == nil {
		for _, id := range c.Layers {
			l, err := s.Layer(id)
			if err != nil || l.Blob == "" {
				continue
			}
			from, err1 := have.BlobPath(l.Blob)
			to, err2 := filepath.Join(dir, "blobs", l.Blob.Algorithm().String(), l.Blob.Encoded()), l.Blob.Validate()
			if err1 != nil || err2 != nil {
				continue
			}
			if os.MkdirAll(filepath.Dir(to), 0o755) == nil {
				os.Link(from, to) // best effort: Pull fetches what is missing
			}
		}
	}
	ref := strings.TrimPrefix(c.ImageDir, remotePinPrefix) + "@" + c.Manifest.Digest.String()
	popts := layers.PullOptions{Registry: opts.Remote.Registry, Client: opts.Remote.Client}
	if opts.Progress != nil {
		var mu sync.Mutex
		done := map[digest.Digest]int64{}
		popts.Progress = func(p registry.Progress) {
			mu.Lock()
			defer mu.Unlock()
			done[p.Digest] = p.Done
			var n int64
			for _, d := range done {
				n += d
			}
			opts.Progress("base", n)
		}
	}
	if _, err := layers.Pull(ctx, ref, layers.ImageRef{Dir: dir, Tag: "base"}, popts); err != nil {
		return "", "", err
	}
	return dir, "base", nil
}

// mountLowerView mounts the merged, read-only view of c's image layers on
// dir.
func (s *Store) mountLowerView(c *Container, dir string) error {
	lower, lowerRel, err := s.lowerDirs(c.Layers)
	if err != nil {
		return err
	}
	lower, lowerRel = s.padLower(lower, lowerRel, 2)
	sp := &mountSpec{Target: dir, Lower: lower, LowerRel: lowerRel, Dir: s.dir, ReadOnly: true, UserXattr: s.userXattr}
	return mountOverlay(sp, MountAuto)
}
