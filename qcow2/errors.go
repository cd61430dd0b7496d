package qcow2

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors callers branch on with errors.Is.
var (
	// ErrNotQcow2 means the file does not start with the qcow2 magic.
	ErrNotQcow2 = errors.New("qcow2: not a qcow2 image")
	// ErrUnsupportedFeature means the image uses a feature this package
	// cannot handle (an unknown incompatible feature bit, an unknown
	// version, compression or encryption method, or format).
	ErrUnsupportedFeature = errors.New("qcow2: unsupported feature")
	// ErrCorrupt means the image metadata is invalid. The concrete error
	// is a *CorruptError naming the field and its byte offset.
	ErrCorrupt = errors.New("qcow2: image is corrupt")
	// ErrCannotRead means the image opened (its metadata can be shown)
	// but its guest content cannot be read: it is encrypted or keeps its
	// data in an external data file.
	ErrCannotRead = errors.New("qcow2: cannot read content")
	// ErrRefused means a backing-file or data-file reference was refused:
	// a json: or protocol name, or the caller's reference policy said no.
	ErrRefused = errors.New("qcow2: reference refused")
	// ErrChainTooDeep means a backing chain is longer than the configured
	// limit (Options.MaxChainDepth).
	ErrChainTooDeep = errors.New("qcow2: backing chain too deep")
	// ErrBackingFormatNeeded means an unsafe rebase names a new backing
	// file whose format was neither given nor could be probed.
	ErrBackingFormatNeeded = errors.New("qcow2: backing format must be specified")
	// ErrChainLoop means a backing chain refers back to one of its own
	// images.
	ErrChainLoop = errors.New("qcow2: backing chain loop")
	// ErrClosed is returned by operations on a closed Image.
	ErrClosed = errors.New("qcow2: image is closed")
	// ErrNoBacking is returned by Commit when the image has no backing file.
	ErrNoBacking = errors.New("qcow2: image has no backing file")
	// ErrExists is returned by Create when the target exists and
	// CreateOptions.Overwrite is not set.
	ErrExists = errors.New("qcow2: file exists")
	// ErrOverlap is matched by an *OverlapError: a write was refused because
	// it would have overwritten image metadata. The image is marked corrupt.
	ErrOverlap = errors.New("qcow2: write would overwrite metadata")
	// ErrShrinkInUse is returned by Resize when shrinking would drop
	// allocated clusters.
	ErrShrinkInUse = errors.New("qcow2: data allocated beyond the new size")
	// ErrSnapshotNotFound is returned when no internal snapshot has the
	// given name or ID.
	ErrSnapshotNotFound = errors.New("qcow2: snapshot not found")
	// ErrSnapshotExists is returned by CreateSnapshot for a name in use.
	ErrSnapshotExists = errors.New("qcow2: snapshot exists")
	// ErrReadOnly is returned by write operations on an image opened without
	// Options.Writable, or one that is marked corrupt.
	ErrReadOnly = errors.New("qcow2: image is read-only")
	// ErrNoDirectIO is returned for cache mode none (or directsync) on a
	// filesystem that refuses O_DIRECT.
	ErrNoDirectIO = errors.New("qcow2: the filesystem does not support O_DIRECT (cache mode none)")
)

// Errors that stay inside the package.
var (
	// errZstdFrame is a damaged zstd cluster; it ends up as the reason of
	// a CorruptError.
	errZstdFrame = errors.New("zstd: truncated or invalid frame")
	// errRefcountOverflow is returned when a refcount would exceed the
	// largest value refcount_bits can hold (1 for 1-bit refcounts).
	errRefcountOverflow = errors.New("qcow2: refcount overflow (refcount_bits too small for this operation)")
	// errStop ends an extent walk early (Compare); it never leaves the
	// package.
	errStop = errors.New("qcow2: stop")
)

// CorruptError reports invalid metadata: which field, at which byte offset
// of which file, and what is wrong with it. It matches ErrCorrupt.
type CorruptError struct {
	Path   string // the image file
	Field  string // the header field or table, e.g. "l1_table_offset", "L2 entry"
	Offset int64  // byte offset of the field or entry in the file
	Reason string // what is wrong
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("qcow2: %s: corrupt %s at offset %#x: %s", e.Path, e.Field, e.Offset, e.Reason)
}

// Is makes errors.Is(err, ErrCorrupt) true.
func (e *CorruptError) Is(target error) bool { return target == ErrCorrupt }

// FeatureError reports incompatible features the package does not know.
// Names come from the image's feature-name table when present, else
// "bit N". It matches ErrUnsupportedFeature.
type FeatureError struct {
	Path     string
	Features []string
}

func (e *FeatureError) Error() string {
	return fmt.Sprintf("qcow2: %s: unsupported incompatible features: %s", e.Path, strings.Join(e.Features, ", "))
}

// Is makes errors.Is(err, ErrUnsupportedFeature) true.
func (e *FeatureError) Is(target error) bool { return target == ErrUnsupportedFeature }

func (img *Image) corrupt(field string, off int64, format string, args ...any) error {
	return &CorruptError{Path: img.path, Field: field, Offset: off, Reason: fmt.Sprintf(format, args...)}
}
