package layers

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"

	"github.com/imgtool/imgtool/internal/ioprogress"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// buildFileLayer stores the layer blob in file path into l as is, after
// checking that it decompresses (gzip or zstd, detected from its magic, or
// plain tar) to a readable tar stream, and computing its diffID. Reading is
// bounded by lim (uncompressed bytes, entries, zstd window and memory).
func buildFileLayer(ctx context.Context, l *Layout, path string, lim Limits, report func(int64, int64)) (Descriptor, error) {
	f, err := os.Open(path)
	if err != nil {
		return Descriptor{}, err
	}
	defer f.Close()
	w, err := l.newBlobWriter(digest.SHA256)
	if err != nil {
		return Descriptor{}, err
	}
	defer w.Abort()
	raw := &buildCountReader{r: io.TeeReader(ioprogress.WithContext(ctx, f), w), report: report}
	br := bufio.NewReaderSize(raw, 64<<10)
	comp, dec, err := buildDecompressor(br, lim)
	if err != nil {
		return Descriptor{}, err
	}
	defer dec.Close()
	maxBytes := lim.MaxBytes
	if maxBytes == 0 {
		maxBytes = DefaultMaxBytes
	}
	maxEntries := lim.MaxEntries
	if maxEntries == 0 {
		maxEntries = DefaultMaxEntries
	}
	diff := digest.SHA256.Digester()
	capped := &buildCapReader{r: dec, left: maxBytes}
	tr := tar.NewReader(io.TeeReader(capped, diff.Hash()))
	entries := 0
	for {
		_, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return Descriptor{}, buildBlobError(path, capped, err)
		}
		if entries++; entries > maxEntries {
			return Descriptor{}, fmt.Errorf("%s: %w: more than %d tar entries", path, ErrLimitExceeded, maxEntries)
		}
		if _, err := io.Copy(io.Discard, tr); err != nil {
			return Descriptor{}, buildBlobError(path, capped, err)
		}
	}
	if capped.limit-capped.left == 0 {
		return Descriptor{}, fmt.Errorf("%s: %w: empty, not a tar stream", path, ErrCorrupt)
	}
	// The diffID covers the whole uncompressed stream, padding included.
	if _, err := io.Copy(diff.Hash(), capped); err != nil {
		return Descriptor{}, buildBlobError(path, capped, err)
	}
	// And the blob is the whole file, trailing bytes included.
	if _, err := io.Copy(io.Discard, br); err != nil {
		return Descriptor{}, err
	}
	desc, err := w.Commit(ocispec.Descriptor{MediaType: comp.MediaType()})
	if err != nil {
		return Descriptor{}, err
	}
	return Descriptor{
		MediaType:        desc.MediaType,
		Digest:           desc.Digest,
		DiffID:           diff.Digest(),
		Size:             desc.Size,
		UncompressedSize: maxBytes - capped.left,
	}, nil
}

func buildBlobError(path string, c *buildCapReader, err error) error {
	if c.exceeded {
		return fmt.Errorf("%s: %w: more than %d uncompressed bytes", path, ErrLimitExceeded, c.max())
	}
	return fmt.Errorf("%s: %w: not a valid layer: %v", path, ErrCorrupt, err)
}

// buildDecompressor detects the compression of br from its first bytes.
func buildDecompressor(br *bufio.Reader, lim Limits) (Compression, io.ReadCloser, error) {
	head, _ := br.Peek(4)
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return 0, nil, fmt.Errorf("%w: gzip: %v", ErrCorrupt, err)
		}
		return Gzip, zr, nil
	case bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		win, mem := lim.ZstdMaxWindow, lim.ZstdMaxMemory
		if win == 0 {
			win = DefaultZstdMaxWindow
		}
		if mem == 0 {
			mem = DefaultZstdMaxMemory
		}
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(win), zstd.WithDecoderMaxMemory(mem))
		if err != nil {
			return 0, nil, fmt.Errorf("%w: zstd: %v", ErrCorrupt, err)
		}
		return Zstd, zstdReadCloser{zr}, nil
	}
	return None, io.NopCloser(br), nil
}

type zstdReadCloser struct{ *zstd.Decoder }

func (z zstdReadCloser) Close() error { z.Decoder.Close(); return nil }

// buildCapReader fails once more than left bytes are read.
type buildCapReader struct {
	r        io.Reader
	left     int64
	limit    int64
	exceeded bool
}

func (c *buildCapReader) max() int64 { return c.limit }

func (c *buildCapReader) Read(p []byte) (int, error) {
	if c.limit == 0 {
		c.limit = c.left
	}
	if c.left <= 0 {
		// Allow reading EOF, but not one more byte.
		var one [1]byte
		n, err := c.r.Read(one[:])
		if n > 0 {
			c.exceeded = true
			return 0, ErrLimitExceeded
		}
		return 0, err
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	return n, err
}

// buildCountReader reports bytes read.
type buildCountReader struct {
	r      io.Reader
	report func(int64, int64)
}

func (c *buildCountReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.report(int64(n), -1)
	}
	return n, err
}
