package layers

import (
	"errors"
	"fmt"
)

// Sentinel errors that callers branch on with errors.Is. Errors returned by
// this package wrap one of these (or an I/O error) with the file, entry and
// byte offset involved.
var (
	// ErrUnsafePath: an entry name or link target is absolute, contains
	// "..", "." or empty components, or would resolve outside the target.
	ErrUnsafePath = errors.New("layers: unsafe path")
	// ErrDuplicateEntry: the layer holds the same path twice.
	ErrDuplicateEntry = errors.New("layers: duplicate entry")
	// ErrBadWhiteout: a bare ".wh." or a whiteout of "." or "..".
	ErrBadWhiteout = errors.New("layers: invalid whiteout")
	// ErrHardlink: a hardlink whose target is missing, a directory, or
	// outside the layer's tree.
	ErrHardlink = errors.New("layers: invalid hardlink")
	// ErrDevicesNotPermitted: the layer holds a device node and
	// ApplyOptions do not allow creating devices.
	ErrDevicesNotPermitted = errors.New("layers: device nodes not permitted")
	// ErrLimitExceeded: a Limits cap (bytes, entries, PAX header size,
	// zstd window or memory) was reached.
	ErrLimitExceeded = errors.New("layers: limit exceeded")
	// ErrDigestMismatch: the computed digest or diffID differs from the
	// expected one.
	ErrDigestMismatch = errors.New("layers: digest mismatch")
	// ErrCorrupt: the blob is not a valid (compressed) tar stream.
	ErrCorrupt = errors.New("layers: corrupt layer")
	// ErrUnsupported: something this package cannot represent, such as an
	// unknown compression name, an unsupported tar entry type or an
	// overlayfs metacopy/redirect in an upper dir.
	ErrUnsupported = errors.New("layers: unsupported")
	// ErrIDMap: a uid or gid that the ApplyOptions mapping does not cover.
	ErrIDMap = errors.New("layers: id not mapped")
)

// CorruptError reports invalid input at a byte offset of the stream it was
// found in (Stream says which: "compressed" or "tar").
type CorruptError struct {
	Stream string // "compressed" or "tar"
	Offset int64  // bytes of Stream consumed when the error was found
	Err    error  // underlying decoder error
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("layers: corrupt %s stream at offset %d: %v", e.Stream, e.Offset, e.Err)
}

// Unwrap returns both ErrCorrupt and the decoder's error.
func (e *CorruptError) Unwrap() []error { return []error{ErrCorrupt, e.Err} }

// EntryError names the tar entry (and its offset in the uncompressed tar)
// that an error is about.
type EntryError struct {
	Name   string // entry name as stored in the tar
	Offset int64  // offset of the entry's header in the uncompressed tar
	Err    error
}

func (e *EntryError) Error() string {
	return fmt.Sprintf("entry %q (tar offset %d): %v", e.Name, e.Offset, e.Err)
}

func (e *EntryError) Unwrap() error { return e.Err }
