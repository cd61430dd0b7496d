package dedup

import "errors"

// Sentinel errors callers branch on with errors.Is.
var (
	// ErrIndexFull means a scan met more distinct chunks than
	// ScanOptions.MaxChunks allows.
	ErrIndexFull = errors.New("dedup: chunk index full")
	// ErrVerify means a rewritten image did not read back identical to
	// the original; the original is left in place.
	ErrVerify = errors.New("dedup: rewritten image differs from the original")
	// ErrUnsupported means an input cannot be handled: an image that
	// cannot be rewritten (internal snapshots, bitmaps, raw for sparsify,
	// or the base itself), or a file system without reflinks when they
	// were asked for.
	ErrUnsupported = errors.New("dedup: unsupported")
)
