package layers

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	digest "github.com/opencontainers/go-digest"
)

// blobLayer adapts a layer blob to go-containerregistry's v1.Layer. Its
// methods are safe for concurrent use; each Compressed/Uncompressed call
// opens the blob anew and the caller closes the returned reader.
type blobLayer struct {
	open   func() (io.ReadCloser, error)
	desc   Descriptor
	limits Limits
}

var _ v1.Layer = (*blobLayer)(nil)

// NewLayer returns a v1.Layer for a blob whose descriptor is known (from
// Create, Apply, List or a manifest plus config). open returns a new
// reader of the blob on each call. Readers returned by Compressed and
// Uncompressed check the digest and diffID at the end of the stream and
// return ErrDigestMismatch instead of io.EOF if they differ; Uncompressed
// applies limits (zero: defaults).
func NewLayer(open func() (io.ReadCloser, error), desc Descriptor, limits Limits) v1.Layer {
	return &blobLayer{open: open, desc: desc, limits: limits}
}

// LayerFromFile reads the layer blob at path once to compute its
// descriptor and returns a v1.Layer reading it from the file.
func LayerFromFile(ctx context.Context, path string, limits Limits) (v1.Layer, Descriptor, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, Descriptor{}, fmt.Errorf("layers: %w", err)
	}
	defer f.Close()
	d, err := List(ctx, bufio.NewReaderSize(f, 1<<20), nil, limits)
	if err != nil {
		return nil, Descriptor{}, fmt.Errorf("layers: %s: %w", path, err)
	}
	open := func() (io.ReadCloser, error) { return os.Open(path) }
	return NewLayer(open, d, limits), d, nil
}

func toHash(d digest.Digest) (v1.Hash, error) { return v1.NewHash(d.String()) }

func (l *blobLayer) Digest() (v1.Hash, error) { return toHash(l.desc.Digest) }
func (l *blobLayer) DiffID() (v1.Hash, error) { return toHash(l.desc.DiffID) }
func (l *blobLayer) Size() (int64, error)     { return l.desc.Size, nil }
func (l *blobLayer) MediaType() (types.MediaType, error) {
	return types.MediaType(l.desc.MediaType), nil
}

// Compressed returns the blob as stored.
func (l *blobLayer) Compressed() (io.ReadCloser, error) {
	rc, err := l.open()
	if err != nil {
		return nil, err
	}
	hc := &hashCounter{r: rc, h: newHash(l.desc.Digest)}
	return &verifyReader{r: hc, closer: rc, check: func() error {
		if got := digest.NewDigest(algOf(l.desc.Digest), hc.h); got != l.desc.Digest {
			return fmt.Errorf("%w: blob digest is %s, expected %s", ErrDigestMismatch, got, l.desc.Digest)
		}
		return nil
	}}, nil
}

// Uncompressed returns the tar stream.
func (l *blobLayer) Uncompressed() (io.ReadCloser, error) {
	lim, err := l.limits.withDefaults()
	if err != nil {
		return nil, err
	}
	rc, err := l.open()
	if err != nil {
		return nil, err
	}
	src := &hashCounter{r: rc, h: newHash(""), src: true}
	br := bufio.NewReaderSize(src, 1<<20)
	dec, err := newDecompressor(detectCompression(br), br, &src.n, lim)
	if err != nil {
		rc.Close()
		return nil, err
	}
	raw := &hashCounter{r: dec, h: newHash(l.desc.DiffID), max: lim.MaxBytes}
	return &verifyReader{r: raw, closer: multiCloser{dec, rc}, check: func() error {
		if got := digest.NewDigest(algOf(l.desc.DiffID), raw.h); got != l.desc.DiffID {
			return fmt.Errorf("%w: diffID is %s, expected %s", ErrDigestMismatch, got, l.desc.DiffID)
		}
		return nil
	}}, nil
}

type multiCloser []io.Closer

func (m multiCloser) Close() error {
	var first error
	for _, c := range m {
		if err := c.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// verifyReader runs check when r reports io.EOF and returns its error
// instead.
type verifyReader struct {
	r      io.Reader
	closer io.Closer
	check  func() error
	err    error
}

func (v *verifyReader) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	n, err := v.r.Read(p)
	if err == io.EOF {
		if cerr := v.check(); cerr != nil {
			err = cerr
		}
	}
	if err != nil {
		v.err = err
	}
	return n, err
}

func (v *verifyReader) Close() error { return v.closer.Close() }
