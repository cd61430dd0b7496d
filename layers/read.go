package layers

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"

	digest "github.com/opencontainers/go-digest"
)

// Descriptor describes a layer blob: what Create wrote or what Apply and
// List read.
type Descriptor struct {
	MediaType        string        // OCI media type matching the compression
	Digest           digest.Digest // sha256 of the blob as stored (compressed)
	DiffID           digest.Digest // sha256 of the uncompressed tar
	Size             int64         // size of the blob as stored
	UncompressedSize int64         // size of the uncompressed tar
}

// Compression returns the compression implied by d.MediaType.
func (d Descriptor) Compression() (Compression, error) { return ParseMediaType(d.MediaType) }

// hashCounter hashes and counts what passes through it.
type hashCounter struct {
	r   io.Reader
	h   hash.Hash
	n   int64
	max int64 // 0: unlimited; else reading past max is ErrLimitExceeded
	src bool  // errors are the source's (wrapped in sourceError)
	err error
}

func (c *hashCounter) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	if c.max > 0 && int64(len(p)) > c.max-c.n+1 {
		p = p[:c.max-c.n+1]
	}
	n, err := c.r.Read(p)
	c.h.Write(p[:n])
	c.n += int64(n)
	if c.max > 0 && c.n > c.max {
		c.err = fmt.Errorf("%w: uncompressed layer larger than %d bytes", ErrLimitExceeded, c.max)
		return n, c.err
	}
	if err != nil && err != io.EOF {
		if c.src {
			err = &sourceError{err}
		}
		c.err = err
	}
	return n, err
}

// blobReader reads one layer blob: it detects the compression, hashes the
// blob and the tar, enforces Limits and yields tar entries. It is not safe
// for concurrent use; call close when done.
type blobReader struct {
	lim        Limits
	comp       Compression
	compressed *hashCounter
	dec        io.ReadCloser
	raw        *hashCounter // uncompressed tar, counted and hashed
	tar        *tar.Reader
	tarSrc     io.Reader
	ahead      *readAhead
	entries    int
	logical    int64 // sum of entry sizes
	expectDig  digest.Digest
	expectDiff digest.Digest
	finished   bool
}

func openBlob(ctx context.Context, blob io.Reader, lim Limits, expectDigest, expectDiffID digest.Digest, readahead bool) (*blobReader, error) {
	lim, err := lim.withDefaults()
	if err != nil {
		return nil, err
	}
	for _, d := range []digest.Digest{expectDigest, expectDiffID} {
		if d != "" {
			if err := d.Validate(); err != nil {
				return nil, fmt.Errorf("layers: expected digest %q: %w", d, err)
			}
		}
	}
	b := &blobReader{lim: lim, expectDig: expectDigest, expectDiff: expectDiffID}
	b.compressed = &hashCounter{r: blob, h: newHash(expectDigest), src: true}
	br := bufio.NewReaderSize(b.compressed, 256<<10)
	b.comp = detectCompression(br)
	dec, err := newDecompressor(b.comp, br, &b.compressed.n, lim)
	if err != nil {
		return nil, err
	}
	b.dec = &drainOnEOF{r: dec, rest: br}
	// With readahead, decompression (and the blob digest) run on their
	// own goroutine while the diffID is hashed by the consumer, which
	// balances the two on two cores.
	var src io.Reader = b.dec
	if readahead {
		b.ahead = newReadAhead(ctx, b.dec)
		src = b.ahead
	}
	b.raw = &hashCounter{r: src, h: newHash(expectDiffID), max: lim.MaxBytes}
	b.tarSrc = b.raw
	b.tar = tar.NewReader(b.tarSrc)
	return b, nil
}

// drainOnEOF hashes whatever follows the compressed stream once the
// decoder reports EOF, so the digest covers the whole blob. Trailing bytes
// after a gzip or zstd stream are an error of the decoder itself.
type drainOnEOF struct {
	r    io.ReadCloser
	rest io.Reader
}

func (d *drainOnEOF) Read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	if err == io.EOF {
		if _, derr := io.Copy(io.Discard, d.rest); derr != nil {
			return n, derr
		}
	}
	return n, err
}

func (d *drainOnEOF) Close() error { return d.r.Close() }

func newHash(d digest.Digest) hash.Hash {
	if d != "" && d.Algorithm().Available() {
		return d.Algorithm().Hash()
	}
	return sha256.New()
}

// next returns the next tar entry, enforcing the entry and PAX limits, or
// io.EOF after the end of the archive.
func (b *blobReader) next() (*tar.Header, error) {
	hdr, err := b.tar.Next()
	if err != nil {
		if err == io.EOF {
			return nil, io.EOF
		}
		return nil, b.classify(err)
	}
	b.entries++
	if b.entries > b.lim.MaxEntries {
		return nil, fmt.Errorf("%w: more than %d entries", ErrLimitExceeded, b.lim.MaxEntries)
	}
	// Sparse entries expand to their logical size without consuming the
	// stream; their sizes count against MaxBytes too.
	b.logical += max(hdr.Size, 0)
	if b.logical > b.lim.MaxBytes {
		return nil, &EntryError{Name: hdr.Name, Offset: b.offset(), Err: fmt.Errorf("%w: entries larger than %d bytes in total", ErrLimitExceeded, b.lim.MaxBytes)}
	}
	pax := 0
	for k, v := range hdr.PAXRecords {
		pax += len(k) + len(v)
	}
	if pax > b.lim.MaxPAXHeaderBytes {
		return nil, &EntryError{Name: hdr.Name, Offset: b.offset(), Err: fmt.Errorf("%w: PAX records of %d bytes (limit %d)", ErrLimitExceeded, pax, b.lim.MaxPAXHeaderBytes)}
	}
	return hdr, nil
}

// offset is the number of uncompressed bytes consumed so far.
func (b *blobReader) offset() int64 { return b.raw.n }

// classify turns a tar or read error into a package error.
func (b *blobReader) classify(err error) error {
	var se *sourceError
	var ce *CorruptError
	switch {
	case errors.As(err, &se), errors.As(err, &ce), errors.Is(err, ErrLimitExceeded),
		errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	}
	return &CorruptError{Stream: "tar", Offset: b.offset(), Err: err}
}

// readContent reads the current entry's content.
func (b *blobReader) read(p []byte) (int, error) {
	n, err := b.tar.Read(p)
	if err != nil && err != io.EOF {
		err = b.classify(err)
	}
	return n, err
}

// finish reads the rest of the blob, checks the digests and returns the
// descriptor.
func (b *blobReader) finish() (Descriptor, error) {
	if _, err := io.Copy(io.Discard, b.tarSrc); err != nil {
		return Descriptor{}, b.classify(err)
	}
	d := Descriptor{
		MediaType:        b.comp.MediaType(),
		Digest:           digest.NewDigest(algOf(b.expectDig), b.compressed.h),
		DiffID:           digest.NewDigest(algOf(b.expectDiff), b.raw.h),
		Size:             b.compressed.n,
		UncompressedSize: b.raw.n,
	}
	if b.expectDig != "" && d.Digest != b.expectDig {
		return d, fmt.Errorf("%w: blob digest is %s, expected %s", ErrDigestMismatch, d.Digest, b.expectDig)
	}
	if b.expectDiff != "" && d.DiffID != b.expectDiff {
		return d, fmt.Errorf("%w: diffID is %s, expected %s", ErrDigestMismatch, d.DiffID, b.expectDiff)
	}
	b.finished = true
	return d, nil
}

func algOf(d digest.Digest) digest.Algorithm {
	if d != "" && d.Algorithm().Available() {
		return d.Algorithm()
	}
	return digest.SHA256
}

func (b *blobReader) close() {
	if b.ahead != nil {
		b.ahead.Close()
	}
	b.dec.Close()
}

// List reads a layer blob (tar, tar+gzip or tar+zstd, detected by magic)
// and calls fn for each entry in order. It reads the whole blob, verifies
// nothing against expectations (see Apply for that) and returns its
// descriptor. An error from fn stops the listing and is returned as is.
func List(ctx context.Context, blob io.Reader, fn func(hdr *tar.Header) error, limits Limits) (Descriptor, error) {
	b, err := openBlob(ctx, blob, limits, "", "", false)
	if err != nil {
		return Descriptor{}, err
	}
	defer b.close()
	for {
		if err := ctx.Err(); err != nil {
			return Descriptor{}, err
		}
		hdr, err := b.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return Descriptor{}, err
		}
		if fn != nil {
			if err := fn(hdr); err != nil {
				return Descriptor{}, err
			}
		}
	}
	return b.finish()
}

// readAhead decompresses and hashes on its own goroutine, a few chunks
// ahead of the consumer that parses the tar and writes files, so that the
// two overlap on a multi-core machine.
type readAhead struct {
	ch       chan []byte
	free     chan []byte
	errc     chan error
	stop     chan struct{}
	cur      []byte
	curBuf   []byte
	err      error
	consumed int64
	closed   bool
}

const (
	readAheadChunk = 256 << 10
	readAheadDepth = 8
)

func newReadAhead(ctx context.Context, r io.Reader) *readAhead {
	a := &readAhead{
		ch:   make(chan []byte, readAheadDepth),
		free: make(chan []byte, readAheadDepth+2),
		errc: make(chan error, 1),
		stop: make(chan struct{}),
	}
	go a.loop(ctx, r)
	return a
}

func (a *readAhead) loop(ctx context.Context, r io.Reader) {
	defer close(a.ch)
	allocated := 0
	for {
		var buf []byte
		select {
		case buf = <-a.free:
		case <-a.stop:
			return
		default:
			if allocated < readAheadDepth+2 {
				// Buffers are made on demand: small layers need one.
				allocated++
				buf = make([]byte, readAheadChunk)
			} else {
				select {
				case buf = <-a.free:
				case <-a.stop:
					return
				}
			}
		}
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			select {
			case a.ch <- buf[:n]:
			case <-a.stop:
				return
			}
		}
		if err == io.ErrUnexpectedEOF {
			err = io.EOF
		}
		if err == nil {
			err = ctx.Err()
		}
		if err != nil {
			a.errc <- err
			return
		}
	}
}

func (a *readAhead) Read(p []byte) (int, error) {
	for len(a.cur) == 0 {
		if a.err != nil {
			return 0, a.err
		}
		if a.curBuf != nil {
			a.free <- a.curBuf[:cap(a.curBuf)]
			a.curBuf = nil
		}
		buf, ok := <-a.ch
		if !ok {
			a.err = <-a.errc
			return 0, a.err
		}
		a.cur, a.curBuf = buf, buf
	}
	n := copy(p, a.cur)
	a.cur = a.cur[n:]
	a.consumed += int64(n)
	return n, nil
}

// Close stops the producer goroutine and waits for it to exit.
func (a *readAhead) Close() {
	if a.closed {
		return
	}
	a.closed = true
	close(a.stop)
	for range a.ch {
	}
}
