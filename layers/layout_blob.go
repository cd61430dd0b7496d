package layers

import (
	"bytes"
	"context"
	_ "crypto/sha256" // go-digest's sha256
	_ "crypto/sha512" // go-digest's sha384 and sha512
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/imgtool/imgtool/internal/atomicfile"
	"github.com/imgtool/imgtool/internal/ioprogress"
)

// blobPath is the file of a digest: blobs/ALG/HEX. The digest must have
// been validated (digest.Validate rejects anything but hex in the encoded
// part, so the path cannot leave blobs/).
func (l *Layout) blobPath(d digest.Digest) string {
	if d.Validate() != nil {
		return filepath.Join(l.dir, blobsDirName, "invalid-digest")
	}
	return filepath.Join(l.dir, blobsDirName, d.Algorithm().String(), d.Encoded())
}

// BlobPath returns the file holding the blob of d, or an error wrapping
// ErrBlobCorrupt when d is not a valid digest. The file need not exist.
func (l *Layout) BlobPath(d digest.Digest) (string, error) {
	if err := d.Validate(); err != nil {
		return "", fmt.Errorf("%w: digest %q: %v", ErrBlobCorrupt, d, err)
	}
	return l.blobPath(d), nil
}

// HasBlob reports whether the layout holds the blob of desc with the
// descriptor's size. It does not hash the content.
func (l *Layout) HasBlob(desc ocispec.Descriptor) (bool, error) {
	p, err := l.BlobPath(desc.Digest)
	if err != nil {
		return false, err
	}
	fi, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if !fi.Mode().IsRegular() || fi.Size() != desc.Size {
		return false, &LayoutError{Path: p, Err: fmt.Errorf("%w: %d bytes, descriptor says %d", ErrBlobCorrupt, fi.Size(), desc.Size)}
	}
	return true, nil
}

// OpenBlob opens the blob of desc for reading. The file's size must equal
// desc.Size; the reader hashes what it returns and, at EOF, fails with
// ErrBlobCorrupt (instead of io.EOF) when the digest differs, so a caller
// that reads to EOF has verified the blob. The caller closes it.
func (l *Layout) OpenBlob(desc ocispec.Descriptor) (io.ReadCloser, error) {
	f, err := l.openBlobFile(desc)
	if err != nil {
		return nil, err
	}
	return &layoutVerifyReader{f: f, path: f.Name(), want: desc.Digest, size: desc.Size, h: desc.Digest.Algorithm().Hash()}, nil
}

// openBlobFile opens the blob of desc after checking that it is a regular
// file of desc.Size bytes, without hashing: for callers that verify the
// digest themselves (Apply with ExpectDigest), so the bytes are hashed once.
func (l *Layout) openBlobFile(desc ocispec.Descriptor) (*os.File, error) {
	p, err := l.BlobPath(desc.Digest)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, &LayoutError{Path: p, Err: fmt.Errorf("%w: %s (%s)", ErrBlobNotFound, desc.Digest, desc.MediaType)}
	}
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = &LayoutError{Path: p, Err: fmt.Errorf("%w: not a regular file", ErrBlobCorrupt)}
	} else if err == nil && fi.Size() != desc.Size {
		err = &LayoutError{Path: p, Err: fmt.Errorf("%w: %d bytes, descriptor says %d", ErrBlobCorrupt, fi.Size(), desc.Size)}
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// layoutVerifyReader hashes a blob as it is read and checks size and digest
// at EOF. Its error is sticky.
type layoutVerifyReader struct {
	f    *os.File
	path string
	want digest.Digest
	size int64
	n    int64
	h    hash.Hash
	err  error
}

func (r *layoutVerifyReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if rem := r.size - r.n + 1; int64(len(p)) > rem {
		p = p[:rem] // read at most one byte past the size, to notice growth
	}
	n, err := r.f.Read(p)
	r.n += int64(n)
	r.h.Write(p[:n])
	if r.n > r.size {
		r.err = &LayoutError{Path: r.path, Err: fmt.Errorf("%w: longer than its %d bytes", ErrBlobCorrupt, r.size)}
		return n, r.err
	}
	if err == io.EOF {
		if r.n != r.size {
			r.err = &LayoutError{Path: r.path, Err: fmt.Errorf("%w: %d bytes, descriptor says %d", ErrBlobCorrupt, r.n, r.size)}
		} else if got := digest.NewDigest(r.want.Algorithm(), r.h); got != r.want {
			r.err = &LayoutError{Path: r.path, Err: fmt.Errorf("%w: digest %s, descriptor says %s", ErrBlobCorrupt, got, r.want)}
		} else {
			r.err = io.EOF
		}
		return n, r.err
	}
	if err != nil {
		r.err = err
	}
	return n, err
}

func (r *layoutVerifyReader) Close() error { return r.f.Close() }

// ReadBlob reads a small blob (a manifest, config or index, at most 8 MiB)
// whole and verifies its size and digest.
func (l *Layout) ReadBlob(ctx context.Context, desc ocispec.Descriptor) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if desc.Size > layoutMaxJSON {
		return nil, &LayoutError{Path: l.blobPath(desc.Digest), Err: fmt.Errorf("%w: %s is %d bytes, more than the %d allowed for metadata", ErrBlobCorrupt, desc.MediaType, desc.Size, layoutMaxJSON)}
	}
	rc, err := l.OpenBlob(desc)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b := make([]byte, desc.Size)
	if _, err := io.ReadFull(rc, b); err != nil {
		return nil, err
	}
	// Read the EOF so the reader checks the digest.
	var one [1]byte
	if n, err := rc.Read(one[:]); n != 0 || err != io.EOF {
		if err == nil || err == io.EOF {
			err = &LayoutError{Path: l.blobPath(desc.Digest), Err: fmt.Errorf("%w: longer than its descriptor", ErrBlobCorrupt)}
		}
		return nil, err
	}
	return b, nil
}

// readJSONBlob reads a verified blob and unmarshals it into v.
func (l *Layout) readJSONBlob(ctx context.Context, desc ocispec.Descriptor, v any) ([]byte, error) {
	b, err := l.ReadBlob(ctx, desc)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return nil, &LayoutError{Path: l.blobPath(desc.Digest), Err: fmt.Errorf("%w: %s: %v", ErrBlobCorrupt, desc.MediaType, err)}
	}
	return b, nil
}

// WriteBlob copies r into the layout and returns its descriptor (with
// want's media type and annotations). When want.Digest is set, the content
// must match want.Digest and want.Size, or nothing is stored and the error
// wraps ErrBlobCorrupt; the blob is stored under want's algorithm (sha256,
// sha384 or sha512). Without want.Digest it is a sha256 blob. The write is
// atomic: a temp file in blobs/ALG is synced, checked and renamed; a blob
// already present is left alone.
func (l *Layout) WriteBlob(ctx context.Context, r io.Reader, want ocispec.Descriptor) (ocispec.Descriptor, error) {
	alg := digest.SHA256
	if want.Digest != "" {
		if err := want.Digest.Validate(); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("%w: digest %q: %v", ErrBlobCorrupt, want.Digest, err)
		}
		alg = want.Digest.Algorithm()
	}
	w, err := l.newBlobWriter(alg)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	defer w.Abort()
	if _, err := io.Copy(w, ioprogress.WithContext(ctx, r)); err != nil {
		return ocispec.Descriptor{}, err
	}
	return w.Commit(want)
}

// WriteBlobBytes stores b as a blob of the given media type.
func (l *Layout) WriteBlobBytes(ctx context.Context, mediaType string, b []byte) (ocispec.Descriptor, error) {
	return l.WriteBlob(ctx, bytes.NewReader(b), ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(b), Size: int64(len(b))})
}

// layoutBlobWriter streams a blob into an unnamed (or temp) file in
// blobs/ALG while hashing it (see internal/atomicfile).
// Commit verifies and puts it in place; Abort (safe after Commit) drops
// it. Not safe for concurrent use.
type layoutBlobWriter struct {
	l    *Layout
	f    *atomicfile.File
	dgst digest.Digester
	n    int64
}

func (l *Layout) newBlobWriter(alg digest.Algorithm) (*layoutBlobWriter, error) {
	if !alg.Available() {
		return nil, fmt.Errorf("%w: digest algorithm %q", ErrBlobCorrupt, alg)
	}
	dir := filepath.Join(l.dir, blobsDirName, alg.String())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	// An existing blob of the same digest holds the same bytes: keep it.
	f, err := atomicfile.CreateTemp(dir, atomicfile.Options{Sync: layoutSync(l.noSync), NoLock: true, KeepExisting: true})
	if err != nil {
		return nil, err
	}
	return &layoutBlobWriter{l: l, f: f, dgst: alg.Digester()}, nil
}

func (w *layoutBlobWriter) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.dgst.Hash().Write(p[:n])
	w.n += int64(n)
	return n, err
}

// Commit checks the content against want (when want.Digest is set) and
// puts the blob at blobs/ALG/HEX, leaving an existing one alone.
func (w *layoutBlobWriter) Commit(want ocispec.Descriptor) (ocispec.Descriptor, error) {
	got := w.dgst.Digest()
	if want.Digest != "" && (want.Digest != got || want.Size != w.n) {
		return ocispec.Descriptor{}, &LayoutError{Path: filepath.Dir(w.l.blobPath(got)), Err: fmt.Errorf("%w: wrote %d bytes with digest %s, expected %d bytes with %s", ErrBlobCorrupt, w.n, got, want.Size, want.Digest)}
	}
	desc := want
	desc.Digest, desc.Size = got, w.n
	if err := w.f.CommitAs(w.l.blobPath(got)); err != nil {
		return ocispec.Descriptor{}, err
	}
	return desc, nil
}

// Abort drops the blob unless Commit put it in place.
func (w *layoutBlobWriter) Abort() { w.f.Abort() }
