package layers

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// VerifyReport is what Verify checked.
type VerifyReport struct {
	Tags   int      `json:"tags"`
	Images int      `json:"images"`
	Blobs  int      `json:"blobs"`  // distinct blobs hashed
	Bytes  int64    `json:"bytes"`  // their total size
	Errors []error  `json:"-"`      // every problem found, in order
	Issues []string `json:"issues"` // Errors as text, for JSON output
}

// Verify recomputes, from the bytes, everything the layout claims: for
// every tag (nested indexes followed, all platforms) each manifest, config
// and layer blob must be present with its descriptor's size and digest,
// and each layer must decompress (within lim) to a tar stream whose sha256
// is the config's diffID. A blob shared by several images is checked once.
// It returns the report and, when anything is wrong, an error joining
// every problem (each wrapping ErrBlobCorrupt, ErrBlobNotFound, ...).
func (l *Layout) Verify(ctx context.Context, lim Limits) (*VerifyReport, error) {
	tags, descs, err := l.Tags(ctx)
	if err != nil {
		return nil, err
	}
	rep := &VerifyReport{Tags: len(tags)}
	checked := map[digest.Digest]bool{}
	fail := func(err error) { rep.Errors = append(rep.Errors, err) }
	for i, tag := range tags {
		ms, err := l.expandIndex(ctx, []ocispec.Descriptor{descs[i]}, 0, new(int))
		if err != nil {
			fail(fmt.Errorf("tag %q: %w", tag, err))
			continue
		}
		for _, md := range ms {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			rep.Images++
			img, err := l.readImage(ctx, md) // verifies manifest and config
			if err != nil {
				fail(fmt.Errorf("tag %q: %w", tag, err))
				continue
			}
			if !checked[md.Digest] {
				checked[md.Digest] = true
				rep.Blobs += 2
				rep.Bytes += md.Size + img.Manifest.Config.Size
			}
			for j, ld := range img.Manifest.Layers {
				if checked[ld.Digest] {
					continue
				}
				checked[ld.Digest] = true
				rep.Blobs++
				rep.Bytes += ld.Size
				if err := l.verifyLayer(ctx, ld, img.Config.RootFS.DiffIDs[j], lim); err != nil {
					fail(fmt.Errorf("tag %q, image %s, layer %d: %w", tag, md.Digest, j, err))
				}
			}
		}
	}
	for _, e := range rep.Errors {
		rep.Issues = append(rep.Issues, e.Error())
	}
	return rep, errors.Join(rep.Errors...)
}

// verifyLayer hashes a layer blob (through OpenBlob, any algorithm) and
// its uncompressed tar stream (sha256, as diffIDs are).
func (l *Layout) verifyLayer(ctx context.Context, ld ocispec.Descriptor, diffID digest.Digest, lim Limits) error {
	rc, err := l.OpenBlob(ld)
	if err != nil {
		return err
	}
	defer rc.Close()
	path := l.blobPath(ld.Digest)
	d, err := List(ctx, rc, func(*tar.Header) error { return nil }, lim)
	if err == nil {
		// Read to EOF, where OpenBlob's reader checks the digest, even if
		// the decoder stopped right at the last byte.
		_, err = io.Copy(io.Discard, rc)
	}
	if err != nil {
		if !errors.As(err, new(*LayoutError)) {
			err = &LayoutError{Path: path, Err: err}
		}
		return err
	}
	if d.Size != ld.Size {
		return &LayoutError{Path: path, Err: fmt.Errorf("%w: layer ends after %d of its %d bytes", ErrBlobCorrupt, d.Size, ld.Size)}
	}
	if diffID.Algorithm() != digest.SHA256 {
		return &LayoutError{Path: path, Err: fmt.Errorf("%w: diffID algorithm %s", ErrUnsupportedMediaType, diffID.Algorithm())}
	}
	if d.DiffID != diffID {
		return &LayoutError{Path: path, Err: fmt.Errorf("%w: diffID %s, config says %s", ErrBlobCorrupt, d.DiffID, diffID)}
	}
	return nil
}
