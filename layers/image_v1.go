package layers

import (
	"context"
	"fmt"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Image returns the image tagged tag (picked as Resolve does with zero
// options) as a go-containerregistry v1.Image, so it can be handed to
// crane, remote.Write, mutate and the rest of that ecosystem. Blobs are
// read from the layout on demand and verified against their digests while
// read (a mismatch surfaces as ErrBlobCorrupt from the stream).
func (l *Layout) Image(ctx context.Context, tag string) (v1.Image, error) {
	r, err := l.Resolve(ctx, tag, ResolveOptions{})
	if err != nil {
		return nil, err
	}
	return r.V1()
}

// V1 returns the image as a go-containerregistry v1.Image. The manifest and
// config are the verified bytes held by r; layers are opened from the
// layout when read.
func (r *ResolvedImage) V1() (v1.Image, error) {
	return partial.CompressedToImage(&imageV1Core{r: r})
}

// imageV1Core implements partial.CompressedImageCore over a ResolvedImage.
type imageV1Core struct{ r *ResolvedImage }

var _ partial.CompressedImageCore = (*imageV1Core)(nil)

func (c *imageV1Core) RawConfigFile() ([]byte, error) { return c.r.RawConfig, nil }
func (c *imageV1Core) RawManifest() ([]byte, error)   { return c.r.RawManifest, nil }
func (c *imageV1Core) MediaType() (types.MediaType, error) {
	return types.MediaType(c.r.Descriptor.MediaType), nil
}

func (c *imageV1Core) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	d := digest.Digest(h.String())
	if d == c.r.Manifest.Config.Digest {
		return &imageV1Blob{l: c.r.Layout, desc: c.r.Manifest.Config}, nil
	}
	for _, ld := range c.r.Manifest.Layers {
		if ld.Digest == d {
			return &imageV1Blob{l: c.r.Layout, desc: ld}, nil
		}
	}
	return nil, fmt.Errorf("%w: image %s has no layer %s", ErrBlobNotFound, c.r.Descriptor.Digest, h)
}

// imageV1Blob is one blob of a layout as a partial.CompressedLayer.
type imageV1Blob struct {
	l    *Layout
	desc ocispec.Descriptor
}

var _ partial.CompressedLayer = (*imageV1Blob)(nil)

func (b *imageV1Blob) Digest() (v1.Hash, error) { return v1.NewHash(b.desc.Digest.String()) }
func (b *imageV1Blob) Size() (int64, error)     { return b.desc.Size, nil }
func (b *imageV1Blob) MediaType() (types.MediaType, error) {
	return types.MediaType(b.desc.MediaType), nil
}
func (b *imageV1Blob) Compressed() (io.ReadCloser, error) { return b.l.OpenBlob(b.desc) }
