package layers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/imgtool/imgtool/internal/registry"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// AnnotationSource is the index.json annotation in which Pull records the
// repository a tag was pulled from (HOST/REPO). Push offers it to the
// destination registry as the source of cross-repository blob mounts.
const AnnotationSource = "dev.imgtool.source"

// PushOptions configure Push. The zero value uses the registry package's
// defaults.
type PushOptions struct {
	// Registry configures credentials, TLS, timeouts and parallelism
	// (ignored when Client is set).
	Registry registry.Options
	// Client, when set, is used instead of a new one from Registry.
	Client *registry.Client
	// MountFrom is a repository (HOST/REPO) of the destination registry
	// to ask for cross-repository mounts of the blobs it lacks (default:
	// the repository the tag was pulled from, see AnnotationSource). A
	// registry that does not mount answers with an upload, which follows.
	MountFrom string
	// Progress receives a report per blob step; blobs the registry had
	// (or mounted) are reported as registry.BlobSkipped at the end.
	Progress registry.ProgressFunc
}

// PushResult says what Push did.
type PushResult struct {
	Reference  string             `json:"reference"`
	Descriptor ocispec.Descriptor `json:"descriptor"` // the manifest or index pushed
	// Layer blobs (configs, small, are not counted): all, uploaded now,
	// and those the registry had or mounted.
	Blobs    int   `json:"blobs"`
	Uploaded int   `json:"uploaded"`
	Skipped  int   `json:"skipped"`
	Bytes    int64 `json:"bytes"` // layer bytes uploaded
}

// Push copies the image (or whole index) that src.Tag names in the layout
// src.Dir to the registry reference dst (with or without docker://), with
// go-containerregistry's remote.Write: blobs the registry has (HEAD) are
// not uploaded, missing ones are mounted from PushOptions.MountFrom when
// the registry offers it, the rest are uploaded Jobs at a time, read from
// the layout and verified against their digests while read; manifests go
// last, children before the index.
func Push(ctx context.Context, src ImageRef, dst string, opts PushOptions) (*PushResult, error) {
	c, ref, err := registry.ClientRef(opts.Client, opts.Registry, dst)
	if err != nil {
		return nil, err
	}
	l, err := OpenLayout(src.Dir)
	if err != nil {
		return nil, err
	}
	tags, descs, err := l.Tags(ctx)
	if err != nil {
		return nil, err
	}
	var top *ocispec.Descriptor
	for i, t := range tags {
		if t == src.Tag {
			top = &descs[i]
		}
	}
	if top == nil {
		return nil, &LayoutError{Path: l.indexPath(), Err: fmt.Errorf("%w: %q", ErrTagNotFound, src.Tag)}
	}
	if d, ok := ref.(name.Digest); ok && d.DigestStr() != top.Digest.String() {
		return nil, fmt.Errorf("push %s to %s: the tag is %s, not the digest named", src, ref, top.Digest)
	}
	p := &pusher{l: l, progress: opts.Progress, opened: map[digest.Digest]bool{}, all: map[digest.Digest]ocispec.Descriptor{}}
	mountFrom := opts.MountFrom
	if mountFrom == "" {
		mountFrom = top.Annotations[AnnotationSource]
	}
	if mountFrom != "" {
		if r, err := name.NewRepository(mountFrom, name.WeakValidation); err == nil && r.RegistryStr() == ref.Context().RegistryStr() && r.RepositoryStr() != ref.Context().RepositoryStr() {
			p.mount = r
		}
	}
	res := &PushResult{Reference: ref.Name(), Descriptor: *top}
	res.Descriptor.Annotations = nil
	ropts := c.RemoteOptions(ctx)
	switch {
	case imageIsIndex(top.MediaType):
		idx, err := p.index(ctx, *top, 0)
		if err != nil {
			return nil, err
		}
		err = remote.WriteIndex(ref, idx, ropts...)
		if err != nil {
			return res, p.fill(res, fmt.Errorf("push %s to %s: %w", src, ref, c.WrapError(ref.Context().Registry, err)))
		}
	case imageIsManifest(top.MediaType):
		img, err := p.image(ctx, *top)
		if err != nil {
			return nil, err
		}
		if err := remote.Write(ref, img, ropts...); err != nil {
			return res, p.fill(res, fmt.Errorf("push %s to %s: %w", src, ref, c.WrapError(ref.Context().Registry, err)))
		}
	default:
		return nil, &LayoutError{Path: l.indexPath(), Err: fmt.Errorf("%w: tag %q is %q", ErrUnsupportedMediaType, src.Tag, top.MediaType)}
	}
	return res, p.fill(res, nil)
}

// pusher builds the go-containerregistry views of a layout's images and
// counts what remote.Write reads.
type pusher struct {
	l        *Layout
	mount    name.Repository // zero when no mount source
	progress registry.ProgressFunc

	mu     sync.Mutex
	opened map[digest.Digest]bool               // blobs read to the end (uploaded)
	all    map[digest.Digest]ocispec.Descriptor // every config and layer blob
	bytes  int64
}

// fill completes res from the counters and reports skipped blobs.
func (p *pusher) fill(res *PushResult, err error) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	res.Blobs = len(p.all)
	res.Uploaded = len(p.opened)
	res.Skipped = res.Blobs - res.Uploaded
	res.Bytes = p.bytes
	if err == nil {
		for d, desc := range p.all {
			if !p.opened[d] {
				p.progress.Report(registry.Progress{Digest: d, MediaType: desc.MediaType, Size: desc.Size, Done: desc.Size, State: registry.BlobSkipped})
			}
		}
	}
	return err
}

func (p *pusher) index(ctx context.Context, desc ocispec.Descriptor, depth int) (v1.ImageIndex, error) {
	if depth >= layoutMaxIndexDepth {
		return nil, &LayoutError{Path: p.l.blobPath(desc.Digest), Err: fmt.Errorf("%w: indexes nested more than %d deep", ErrBlobCorrupt, layoutMaxIndexDepth)}
	}
	raw, err := p.l.ReadBlob(ctx, desc)
	if err != nil {
		return nil, err
	}
	idx, err := layoutParseIndex(raw)
	if err != nil {
		return nil, &LayoutError{Path: p.l.blobPath(desc.Digest), Err: err}
	}
	pi := &pushIndex{desc: desc, raw: raw, children: map[string]any{}}
	for _, d := range idx.Manifests {
		var child any
		switch {
		case imageIsIndex(d.MediaType):
			child, err = p.index(ctx, d, depth+1)
		case imageIsManifest(d.MediaType):
			child, err = p.image(ctx, d)
		default:
			err = &LayoutError{Path: p.l.blobPath(desc.Digest), Err: fmt.Errorf("%w: index lists %s of media type %q", ErrUnsupportedMediaType, d.Digest, d.MediaType)}
		}
		if err != nil {
			return nil, err
		}
		pi.children[d.Digest.String()] = child
	}
	return pi, nil
}

// image returns the manifest desc as a v1.Image whose layers are read
// from the layout (verified) and, with a mount source, are
// remote.MountableLayers.
func (p *pusher) image(ctx context.Context, desc ocispec.Descriptor) (v1.Image, error) {
	raw, err := p.l.ReadBlob(ctx, desc)
	if err != nil {
		return nil, err
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, &LayoutError{Path: p.l.blobPath(desc.Digest), Err: fmt.Errorf("%w: manifest: %v", ErrBlobCorrupt, err)}
	}
	cfg, err := p.l.ReadBlob(ctx, m.Config)
	if err != nil {
		return nil, err
	}
	core := &pushImageCore{p: p, desc: desc, raw: raw, cfg: cfg, layers: map[string]ocispec.Descriptor{}}
	p.mu.Lock()
	for _, ld := range m.Layers {
		if err := ld.Digest.Validate(); err != nil {
			p.mu.Unlock()
			return nil, &LayoutError{Path: p.l.blobPath(desc.Digest), Err: fmt.Errorf("%w: layer digest %q: %v", ErrBlobCorrupt, ld.Digest, err)}
		}
		core.layers[ld.Digest.String()] = ld
		p.all[ld.Digest] = ld
	}
	p.mu.Unlock()
	img, err := partial.CompressedToImage(core)
	if err != nil {
		return nil, err
	}
	if p.mount.RegistryStr() == "" {
		return img, nil
	}
	return &pushMountImage{Image: img, core: core}, nil
}

// pushMountImage hands remote.Write its layers as *remote.MountableLayer.
// partial.CompressedToImage wraps whatever LayerByDigest returns in its
// own layer type, and remote.Write only asks for a cross-repository mount
// when the layer's dynamic type is *remote.MountableLayer.
type pushMountImage struct {
	v1.Image
	core *pushImageCore
}

func (i *pushMountImage) Layers() ([]v1.Layer, error) {
	hs, err := partial.FSLayers(i.Image)
	if err != nil {
		return nil, err
	}
	ls := make([]v1.Layer, 0, len(hs))
	for _, h := range hs {
		l, err := i.LayerByDigest(h)
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
	}
	return ls, nil
}

func (i *pushMountImage) LayerByDigest(h v1.Hash) (v1.Layer, error) {
	ld, ok := i.core.layers[h.String()]
	if !ok {
		return i.Image.LayerByDigest(h) // the config
	}
	return &remote.MountableLayer{Layer: &pushLayer{p: i.core.p, desc: ld}, Reference: i.core.p.mount.Digest(h.String())}, nil
}

type pushImageCore struct {
	p      *pusher
	desc   ocispec.Descriptor
	raw    []byte
	cfg    []byte
	layers map[string]ocispec.Descriptor
}

var _ partial.CompressedImageCore = (*pushImageCore)(nil)

func (c *pushImageCore) RawConfigFile() ([]byte, error) { return c.cfg, nil }
func (c *pushImageCore) RawManifest() ([]byte, error)   { return c.raw, nil }
func (c *pushImageCore) MediaType() (types.MediaType, error) {
	return types.MediaType(c.desc.MediaType), nil
}

func (c *pushImageCore) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	ld, ok := c.layers[h.String()]
	if !ok {
		return nil, fmt.Errorf("%w: image %s has no layer %s", ErrBlobNotFound, c.desc.Digest, h)
	}
	return &pushLayer{p: c.p, desc: ld}, nil
}

// pushLayer is one layout blob as a v1.Layer for remote.Write, which reads
// only its digest, size, media type and compressed bytes.
type pushLayer struct {
	p    *pusher
	desc ocispec.Descriptor
}

var _ v1.Layer = (*pushLayer)(nil)

func (l *pushLayer) Digest() (v1.Hash, error) { return v1.NewHash(l.desc.Digest.String()) }
func (l *pushLayer) Size() (int64, error)     { return l.desc.Size, nil }
func (l *pushLayer) MediaType() (types.MediaType, error) {
	return types.MediaType(l.desc.MediaType), nil
}

// errNoDiffID: remote.Write never asks for the diffID or the uncompressed
// stream of a layer; the config has the diffIDs.
var errNoDiffID = errors.New("layers: push: the uncompressed layer is not read when pushing")

func (l *pushLayer) DiffID() (v1.Hash, error)             { return v1.Hash{}, errNoDiffID }
func (l *pushLayer) Uncompressed() (io.ReadCloser, error) { return nil, errNoDiffID }

func (l *pushLayer) Compressed() (io.ReadCloser, error) {
	rc, err := l.p.l.OpenBlob(l.desc)
	if err != nil {
		return nil, err
	}
	rep := registry.Progress{Digest: l.desc.Digest, MediaType: l.desc.MediaType, Size: l.desc.Size, State: registry.BlobStarted}
	l.p.progress.Report(rep)
	// Reaching EOF (where the layout reader has verified the digest)
	// marks the blob uploaded: its bytes count in the push's total once.
	return l.p.progress.Upload(rc, rep, func(n int64) {
		p := l.p
		p.mu.Lock()
		if !p.opened[l.desc.Digest] {
			p.opened[l.desc.Digest] = true
			p.bytes += n
		}
		p.mu.Unlock()
		rep.Done, rep.State = n, registry.BlobDone
		p.progress.Report(rep)
	}), nil
}

// pushIndex is a layout index as a v1.ImageIndex.
type pushIndex struct {
	desc     ocispec.Descriptor
	raw      []byte
	children map[string]any // digest -> v1.Image or v1.ImageIndex
}

var _ v1.ImageIndex = (*pushIndex)(nil)

func (i *pushIndex) MediaType() (types.MediaType, error) {
	return types.MediaType(i.desc.MediaType), nil
}
func (i *pushIndex) Digest() (v1.Hash, error)     { return v1.NewHash(i.desc.Digest.String()) }
func (i *pushIndex) Size() (int64, error)         { return i.desc.Size, nil }
func (i *pushIndex) RawManifest() ([]byte, error) { return i.raw, nil }
func (i *pushIndex) IndexManifest() (*v1.IndexManifest, error) {
	return v1.ParseIndexManifest(bytes.NewReader(i.raw))
}

func (i *pushIndex) Image(h v1.Hash) (v1.Image, error) {
	if img, ok := i.children[h.String()].(v1.Image); ok {
		return img, nil
	}
	return nil, fmt.Errorf("%w: index %s lists no image %s", ErrBlobNotFound, i.desc.Digest, h)
}

func (i *pushIndex) ImageIndex(h v1.Hash) (v1.ImageIndex, error) {
	if idx, ok := i.children[h.String()].(v1.ImageIndex); ok {
		return idx, nil
	}
	return nil, fmt.Errorf("%w: index %s lists no index %s", ErrBlobNotFound, i.desc.Digest, h)
}
