package layers

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Docker media types, read for compatibility, never written.
const (
	mediaTypeDockerManifestList  = "application/vnd.docker.distribution.manifest.list.v2+json"
	mediaTypeDockerManifest      = "application/vnd.docker.distribution.manifest.v2+json"
	mediaTypeDockerConfig        = "application/vnd.docker.container.image.v1+json"
	imageMaxPlatformsInErrorText = 16
)

// IsLayerMediaType reports whether mt is a layer media type this package
// reads: the OCI tar, tar+gzip and tar+zstd types, their deprecated
// non-distributable variants, and Docker's rootfs.diff types (see
// ParseMediaType).
func IsLayerMediaType(mt string) bool {
	_, err := ParseMediaType(mt)
	return err == nil
}

// CanonicalLayerMediaType maps a readable layer media type to the OCI type
// this package writes for the same bytes: deprecated non-distributable and
// Docker types become their plain OCI equivalent. Unknown types fail with
// ErrUnsupportedMediaType.
func CanonicalLayerMediaType(mt string) (string, error) {
	c, err := ParseMediaType(mt)
	if err != nil {
		return "", fmt.Errorf("%w: %q is not a layer media type", ErrUnsupportedMediaType, mt)
	}
	return c.MediaType(), nil
}

func imageIsIndex(mt string) bool {
	return mt == ocispec.MediaTypeImageIndex || mt == mediaTypeDockerManifestList
}

func imageIsManifest(mt string) bool {
	return mt == ocispec.MediaTypeImageManifest || mt == mediaTypeDockerManifest
}

func imageIsConfig(mt string) bool {
	return mt == ocispec.MediaTypeImageConfig || mt == mediaTypeDockerConfig
}

// HostPlatform is the platform Resolve picks by default: linux and the
// architecture this program was built for.
func HostPlatform() ocispec.Platform {
	return ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH}
}

// MatchPlatform reports whether have satisfies want: same OS and
// architecture, and the same variant when want names one (arm64's empty
// variant equals v8). OS version and features are not compared.
func MatchPlatform(want, have ocispec.Platform) bool {
	if want.OS != have.OS || want.Architecture != have.Architecture {
		return false
	}
	return want.Variant == "" || imageNormVariant(want) == imageNormVariant(have)
}

func imageNormVariant(p ocispec.Platform) string {
	if p.Architecture == "arm64" && p.Variant == "" {
		return "v8"
	}
	return p.Variant
}

func imagePlatformString(p *ocispec.Platform) string {
	if p == nil {
		return "unknown"
	}
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// ResolveOptions select one image of a tag. The zero value picks the only
// manifest when the tag leads to one, else the host's platform.
type ResolveOptions struct {
	// Platform, when set, is the platform to pick from an index, even if
	// the tag leads to a single manifest (whose platform, from the index
	// entry or its config, must then match).
	Platform *ocispec.Platform
}

// ResolvedImage is one image of a layout: its manifest and config, read
// and verified against their digests. It is a snapshot; it is safe for
// concurrent reads and needs no Close.
type ResolvedImage struct {
	Layout      *Layout
	Tag         string
	Descriptor  ocispec.Descriptor // the manifest's descriptor
	Manifest    ocispec.Manifest
	Config      ocispec.Image
	RawManifest []byte
	RawConfig   []byte
}

// Platform returns the image's platform from its config.
func (r *ResolvedImage) Platform() ocispec.Platform {
	return r.Config.Platform
}

// Resolve finds the image tagged tag: the index.json entries carrying the
// tag, nested indexes followed (at most 8 deep), then one manifest picked
// by platform (see ResolveOptions). The manifest and config are verified
// against their digests, the layers' media types checked and the count of
// rootfs.diff_ids compared with the layers.
func (l *Layout) Resolve(ctx context.Context, tag string, opts ResolveOptions) (*ResolvedImage, error) {
	idx, err := l.Index(ctx)
	if err != nil {
		return nil, err
	}
	var tagged []ocispec.Descriptor
	var all []string
	for _, d := range idx.Manifests {
		t, ok := d.Annotations[ocispec.AnnotationRefName]
		if !ok {
			continue
		}
		all = append(all, t)
		if t == tag {
			tagged = append(tagged, d)
		}
	}
	if len(tagged) == 0 {
		return nil, &LayoutError{Path: l.indexPath(), Err: fmt.Errorf("%w: %q (tags: %s)", ErrTagNotFound, tag, strings.Join(all, ", "))}
	}
	manifests, err := l.expandIndex(ctx, tagged, 0, new(int))
	if err != nil {
		return nil, err
	}
	if len(manifests) == 0 {
		return nil, &LayoutError{Path: l.indexPath(), Err: fmt.Errorf("%w: tag %q leads to no image manifest", ErrUnsupportedMediaType, tag)}
	}
	desc, err := imagePickPlatform(manifests, opts.Platform)
	if err != nil {
		return nil, &LayoutError{Path: l.indexPath(), Err: fmt.Errorf("tag %q: %w", tag, err)}
	}
	img, err := l.readImage(ctx, desc)
	if err != nil {
		return nil, err
	}
	img.Tag = tag
	if opts.Platform != nil && desc.Platform == nil && !MatchPlatform(*opts.Platform, img.Config.Platform) {
		return nil, &LayoutError{Path: l.blobPath(img.Manifest.Config.Digest), Err: fmt.Errorf("%w: tag %q is %s, want %s", ErrNoMatchingPlatform, tag, imagePlatformString(&img.Config.Platform), imagePlatformString(opts.Platform))}
	}
	return img, nil
}

// expandIndex replaces index descriptors by the manifests they hold,
// recursively; manifest descriptors are kept; other media types (artifacts)
// are skipped. seen counts the descriptors visited, which are capped (an
// index listing the same child index n times, 8 deep, would otherwise make
// n^8 reads).
func (l *Layout) expandIndex(ctx context.Context, descs []ocispec.Descriptor, depth int, seen *int) ([]ocispec.Descriptor, error) {
	var out []ocispec.Descriptor
	for _, d := range descs {
		if *seen++; *seen > layoutMaxDescriptors {
			return nil, &LayoutError{Path: l.blobPath(d.Digest), Err: fmt.Errorf("%w: more than %d descriptors below one tag", ErrBlobCorrupt, layoutMaxDescriptors)}
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		switch {
		case imageIsManifest(d.MediaType):
			out = append(out, d)
		case imageIsIndex(d.MediaType):
			if depth >= layoutMaxIndexDepth {
				return nil, &LayoutError{Path: l.blobPath(d.Digest), Err: fmt.Errorf("%w: indexes nested more than %d deep", ErrBlobCorrupt, layoutMaxIndexDepth)}
			}
			b, err := l.ReadBlob(ctx, d)
			if err != nil {
				return nil, err
			}
			child, err := layoutParseIndex(b)
			if err != nil {
				return nil, &LayoutError{Path: l.blobPath(d.Digest), Err: err}
			}
			sub, err := l.expandIndex(ctx, child.Manifests, depth+1, seen)
			if err != nil {
				return nil, err
			}
			out = append(out, sub...)
		}
	}
	return out, nil
}

// imagePickPlatform picks one manifest: the only one when no platform is
// asked for, else the first matching the asked (or host) platform,
// preferring an exact variant match.
func imagePickPlatform(ms []ocispec.Descriptor, want *ocispec.Platform) (ocispec.Descriptor, error) {
	if want == nil && len(ms) == 1 {
		return ms[0], nil
	}
	p := HostPlatform()
	if want != nil {
		p = *want
	}
	if want != nil && len(ms) == 1 && ms[0].Platform == nil {
		return ms[0], nil // checked against the config by the caller
	}
	best := -1
	for i, d := range ms {
		if d.Platform == nil || !MatchPlatform(p, *d.Platform) {
			continue
		}
		if best < 0 {
			best = i
		}
		if imageNormVariant(*d.Platform) == imageNormVariant(p) {
			best = i
			break
		}
	}
	if best >= 0 {
		return ms[best], nil
	}
	var have []string
	for i, d := range ms {
		if i == imageMaxPlatformsInErrorText {
			have = append(have, "...")
			break
		}
		have = append(have, imagePlatformString(d.Platform))
	}
	return ocispec.Descriptor{}, fmt.Errorf("%w: want %s, have %s", ErrNoMatchingPlatform, imagePlatformString(&p), strings.Join(have, ", "))
}

// ImageByDescriptor reads the image whose manifest has the given
// descriptor (verified like Resolve does), whether tagged or not.
func (l *Layout) ImageByDescriptor(ctx context.Context, desc ocispec.Descriptor) (*ResolvedImage, error) {
	if !imageIsManifest(desc.MediaType) {
		return nil, &LayoutError{Path: l.blobPath(desc.Digest), Err: fmt.Errorf("%w: %q is not an image manifest", ErrUnsupportedMediaType, desc.MediaType)}
	}
	return l.readImage(ctx, desc)
}

func (l *Layout) readImage(ctx context.Context, desc ocispec.Descriptor) (*ResolvedImage, error) {
	img := &ResolvedImage{Layout: l, Descriptor: desc}
	mpath := l.blobPath(desc.Digest)
	raw, err := l.readJSONBlob(ctx, desc, &img.Manifest)
	if err != nil {
		return nil, err
	}
	img.RawManifest = raw
	m := &img.Manifest
	if m.SchemaVersion != 2 {
		return nil, &LayoutError{Path: mpath, Err: fmt.Errorf("%w: manifest schemaVersion %d, want 2", ErrBlobCorrupt, m.SchemaVersion)}
	}
	if m.MediaType != "" && m.MediaType != desc.MediaType {
		return nil, &LayoutError{Path: mpath, Err: fmt.Errorf("%w: manifest says mediaType %q, its descriptor %q", ErrBlobCorrupt, m.MediaType, desc.MediaType)}
	}
	if !imageIsConfig(m.Config.MediaType) {
		return nil, &LayoutError{Path: mpath, Err: fmt.Errorf("%w: config media type %q is not an image config (an artifact?)", ErrUnsupportedMediaType, m.Config.MediaType)}
	}
	for i, ld := range m.Layers {
		if !IsLayerMediaType(ld.MediaType) {
			return nil, &LayoutError{Path: mpath, Err: fmt.Errorf("%w: layer %d has media type %q", ErrUnsupportedMediaType, i, ld.MediaType)}
		}
		if err := ld.Digest.Validate(); err != nil {
			return nil, &LayoutError{Path: mpath, Err: fmt.Errorf("%w: layer %d: digest %q: %v", ErrBlobCorrupt, i, ld.Digest, err)}
		}
		if ld.Size < 0 {
			return nil, &LayoutError{Path: mpath, Err: fmt.Errorf("%w: layer %d: negative size", ErrBlobCorrupt, i)}
		}
	}
	if err := m.Config.Digest.Validate(); err != nil {
		return nil, &LayoutError{Path: mpath, Err: fmt.Errorf("%w: config digest %q: %v", ErrBlobCorrupt, m.Config.Digest, err)}
	}
	raw, err = l.readJSONBlob(ctx, m.Config, &img.Config)
	if err != nil {
		return nil, err
	}
	img.RawConfig = raw
	cpath := l.blobPath(m.Config.Digest)
	if img.Config.RootFS.Type != "layers" {
		return nil, &LayoutError{Path: cpath, Err: fmt.Errorf("%w: rootfs.type %q, want \"layers\"", ErrBlobCorrupt, img.Config.RootFS.Type)}
	}
	if n, k := len(img.Config.RootFS.DiffIDs), len(m.Layers); n != k {
		return nil, &LayoutError{Path: cpath, Err: fmt.Errorf("%w: %d rootfs.diff_ids for %d layers", ErrBlobCorrupt, n, k)}
	}
	for i, d := range img.Config.RootFS.DiffIDs {
		if err := d.Validate(); err != nil {
			return nil, &LayoutError{Path: cpath, Err: fmt.Errorf("%w: diff_id %d %q: %v", ErrBlobCorrupt, i, d, err)}
		}
	}
	return img, nil
}

// ImageSummary describes one tag of a layout for listing.
type ImageSummary struct {
	Tag        string             `json:"tag"`
	Descriptor ocispec.Descriptor `json:"descriptor"` // the index.json entry
	Images     []ImageInfo        `json:"images"`     // one per platform
}

// ImageInfo describes one image manifest reached from a tag.
type ImageInfo struct {
	Digest   string           `json:"digest"`
	Platform ocispec.Platform `json:"platform"`
	Layers   int              `json:"layers"`
	// Size is the bytes of the manifest, config and layer blobs.
	Size    int64  `json:"size"`
	Created string `json:"created,omitempty"`
	// Error says why the image could not be read (a missing or corrupt
	// blob, an artifact that is not an image); the other fields are then
	// what the index entry told.
	Error string `json:"error,omitempty"`
}

// List summarises every tag of the layout, in index order, reading and
// verifying each manifest and config. A tag whose images cannot be read is
// listed with the reason in ImageInfo.Error; List itself fails only when
// index.json cannot be read.
func (l *Layout) List(ctx context.Context) ([]ImageSummary, error) {
	tags, descs, err := l.Tags(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]ImageSummary, 0, len(tags))
	for i, tag := range tags {
		s := ImageSummary{Tag: tag, Descriptor: descs[i], Images: []ImageInfo{}}
		ms, err := l.expandIndex(ctx, []ocispec.Descriptor{descs[i]}, 0, new(int))
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			s.Images = append(s.Images, ImageInfo{Digest: descs[i].Digest.String(), Error: err.Error()})
			out = append(out, s)
			continue
		}
		for _, md := range ms {
			img, err := l.readImage(ctx, md)
			if err != nil {
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				info := ImageInfo{Digest: md.Digest.String(), Size: md.Size, Error: err.Error()}
				if md.Platform != nil {
					info.Platform = *md.Platform
				}
				s.Images = append(s.Images, info)
				continue
			}
			info := ImageInfo{Digest: md.Digest.String(), Platform: img.Config.Platform, Layers: len(img.Manifest.Layers)}
			info.Size = md.Size + img.Manifest.Config.Size
			for _, ld := range img.Manifest.Layers {
				info.Size += ld.Size
			}
			if img.Config.Created != nil {
				info.Created = img.Config.Created.UTC().Format("2006-01-02T15:04:05Z")
			}
			s.Images = append(s.Images, info)
		}
		slices.SortStableFunc(s.Images, func(a, b ImageInfo) int {
			return strings.Compare(imagePlatformString(&a.Platform), imagePlatformString(&b.Platform))
		})
		out = append(out, s)
	}
	return out, nil
}
