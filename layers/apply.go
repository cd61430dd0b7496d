package layers

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"github.com/imgtool/imgtool/internal/tarname"

	digest "github.com/opencontainers/go-digest"
)

// IDMap maps Size ids starting at ContainerID (in the layer) to ids
// starting at HostID (on disk), as in /proc/PID/uid_map.
type IDMap struct {
	ContainerID, HostID, Size int
}

// ApplyOptions control Apply. The zero value applies a layer with
// flattening semantics, keeping ownership when running as root.
type ApplyOptions struct {
	// Overlay unpacks the layer in overlayfs lowerdir format instead of
	// flattening it onto the tree in dir: a whiteout becomes a char
	// device 0/0 and an opaque marker the opaque xattr on its directory.
	// dir should be empty.
	Overlay bool
	// UIDMap and GIDMap map the layer's ids to ids on disk (rootless
	// use). Empty means the identity; an id outside a non-empty map is
	// an error (ErrIDMap).
	UIDMap, GIDMap []IDMap
	// IgnoreOwners leaves files owned by the caller. By default ownership
	// is applied when running as root or when a map is given.
	IgnoreOwners bool
	// Limits bound what the blob may make us read (zero: defaults).
	Limits Limits
	// ExpectDigest and ExpectDiffID, when set, are checked against the
	// digests computed while streaming; a mismatch is ErrDigestMismatch.
	// The check happens at the end of the blob: on mismatch an existing
	// dir holds the partly applied, untrusted layer (a dir that Apply
	// created is removed, as on every failure).
	ExpectDigest, ExpectDiffID digest.Digest
	// AllowDevices permits creating char and block devices. nil means:
	// when running as root.
	AllowDevices *bool
	// SkipDevices skips device nodes that are not permitted instead of
	// failing with ErrDevicesNotPermitted.
	SkipDevices bool
	// UserXattr makes the overlay format use user.overlay.* xattrs (for
	// mounts with the userxattr option) instead of trusted.overlay.*.
	UserXattr bool
}

// Apply reads a layer blob (tar, tar+gzip or tar+zstd, detected by its
// magic) and applies it onto the directory dir, which is created if
// missing (and then removed again if Apply fails). It returns the digest
// and diffID computed while streaming.
//
// Every path is resolved inside dir (openat2 RESOLVE_IN_ROOT: symlinks in
// the tree act as if dir were "/", so nothing outside dir is ever written,
// read or chmod'ed); the last component is never followed. Entry names
// that are absolute or contain "..", "." or empty components are rejected
// with ErrUnsafePath rather than cleaned.
//
// Flattening semantics (OCI image-spec layer.md): a whiteout ".wh.NAME"
// removes NAME from lower layers only; an opaque marker DIR/.wh..wh..opq
// empties DIR of lower content wherever it appears in the tar, sparing
// what this layer unpacked; a directory over a directory keeps it and
// updates its attributes; any other entry replaces what was there.
// Directory modes and times are set last. Runs of zero blocks in regular
// files become holes.
//
// Apply is safe to call concurrently on different directories. It needs
// Linux >= 5.6.
func Apply(ctx context.Context, blob io.Reader, dir string, opts ApplyOptions) (_ Descriptor, err error) {
	if err := validateIDMaps(opts.UIDMap, "uid"); err != nil {
		return Descriptor{}, err
	}
	if err := validateIDMaps(opts.GIDMap, "gid"); err != nil {
		return Descriptor{}, err
	}
	if _, statErr := os.Lstat(dir); errors.Is(statErr, fs.ErrNotExist) {
		// A directory made here is removed again if the blob turns
		// out bad, so a failed apply leaves nothing behind.
		defer func() {
			if err != nil {
				os.RemoveAll(dir)
			}
		}()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Descriptor{}, fmt.Errorf("layers: apply: %w", err)
	}
	b, err := openBlob(ctx, blob, opts.Limits, opts.ExpectDigest, opts.ExpectDiffID, true)
	if err != nil {
		return Descriptor{}, err
	}
	defer b.close()
	a, err := newApplier(dir, opts)
	if err != nil {
		return Descriptor{}, err
	}
	defer a.close()
	for {
		if err := ctx.Err(); err != nil {
			return Descriptor{}, err
		}
		off := b.offset()
		hdr, err := b.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return Descriptor{}, fmt.Errorf("layers: apply to %s: %w", dir, err)
		}
		if err := a.entry(hdr, b); err != nil {
			return Descriptor{}, fmt.Errorf("layers: apply to %s: %w", dir, &EntryError{Name: hdr.Name, Offset: off, Err: err})
		}
	}
	d, err := b.finish()
	if err != nil {
		return d, fmt.Errorf("layers: apply to %s: %w", dir, err)
	}
	if err := a.finishDirs(); err != nil {
		return d, fmt.Errorf("layers: apply to %s: %w", dir, err)
	}
	return d, nil
}

func validateIDMaps(m []IDMap, what string) error {
	for _, e := range m {
		if e.Size <= 0 || e.ContainerID < 0 || e.HostID < 0 {
			return fmt.Errorf("layers: invalid %s map entry %+v", what, e)
		}
	}
	return nil
}

func mapID(m []IDMap, id int, what string) (int, error) {
	if len(m) == 0 {
		return id, nil
	}
	for _, e := range m {
		if id >= e.ContainerID && id-e.ContainerID < e.Size {
			return e.HostID + id - e.ContainerID, nil
		}
	}
	return 0, fmt.Errorf("%w: %s %d", ErrIDMap, what, id)
}

// Whiteout names (OCI image-spec layer.md).
const (
	whiteoutPrefix = tarname.WhiteoutPrefix
	opaqueName     = tarname.OpaqueMarker
)

// cleanName validates a tar entry name or hardlink target (tarname.Clean)
// and returns it without a leading "./" or trailing "/"; "." stands for
// the root.
func cleanName(name string) (string, error) {
	n, err := tarname.Clean(name)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrUnsafePath, err)
	}
	return n, nil
}

// splitName splits a clean name into its parent directory and base name.
func splitName(n string) (dir, base string) { return tarname.Split(n) }

// entryReader is what an applier reads entry contents from.
type entryReader interface {
	read(p []byte) (int, error)
}

// xattrs returns the SCHILY.xattr.* records of hdr.
func xattrsOf(hdr *tar.Header) map[string]string {
	var m map[string]string
	for k, v := range hdr.PAXRecords {
		if name, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
			if m == nil {
				m = make(map[string]string)
			}
			m[name] = v
		}
	}
	return m
}
