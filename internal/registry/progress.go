package registry

import (
	"io"

	digest "github.com/opencontainers/go-digest"

	"github.com/imgtool/imgtool/internal/ioprogress"
)

// BlobState is where a blob is in a transfer.
type BlobState int

const (
	// BlobStarted: the transfer of the blob began (Done may be non-zero
	// when it resumes a partial download).
	BlobStarted BlobState = iota
	// BlobProgress: more bytes moved.
	BlobProgress
	// BlobDone: the blob was moved and verified.
	BlobDone
	// BlobSkipped: the destination had the blob already (or the registry
	// mounted it from another repository); nothing moved.
	BlobSkipped
)

// Progress reports one step of moving one blob.
type Progress struct {
	Digest    digest.Digest
	MediaType string
	Size      int64 // the blob's size (-1 when unknown)
	Done      int64 // bytes moved so far, including a resumed prefix
	State     BlobState
}

// ProgressFunc receives Progress reports. Operations call it from their
// worker goroutines, possibly at the same time for different blobs: it
// must be safe for concurrent use and quick.
type ProgressFunc func(Progress)

// Report calls fn with p when fn is not nil.
func (fn ProgressFunc) Report(p Progress) {
	if fn != nil {
		fn(p)
	}
}

// Reader wraps r so that every read reports BlobProgress with the bytes
// read so far added to p.Done. Without fn it returns r.
func (fn ProgressFunc) Reader(r io.Reader, p Progress) io.Reader {
	if fn == nil {
		return r
	}
	start := p.Done
	return &ioprogress.Reader{R: r, Fn: func(n int64) {
		p.Done, p.State = start+n, BlobProgress
		fn(p)
	}}
}
