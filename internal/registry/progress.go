package registry

import (
	"errors"
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

// Upload wraps rc, a blob's body handed to remote.Write: reads report
// progress as Reader does, and each read that returns io.EOF (remote.Write
// read the whole blob) calls atEOF with the bytes read so far. Close
// closes rc.
func (fn ProgressFunc) Upload(rc io.ReadCloser, p Progress, atEOF func(n int64)) io.ReadCloser {
	return &uploadBody{rc: rc, r: ioprogress.Reader{R: fn.Reader(rc, p)}, atEOF: atEOF}
}

type uploadBody struct {
	rc    io.ReadCloser
	r     ioprogress.Reader
	atEOF func(n int64)
}

func (b *uploadBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if errors.Is(err, io.EOF) {
		b.atEOF(b.r.N)
	}
	return n, err
}

func (b *uploadBody) Close() error { return b.rc.Close() }
