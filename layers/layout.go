package layers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/imgtool/imgtool/internal/atomicfile"
	"github.com/imgtool/imgtool/internal/jsonfile"
)

// Errors of the image-layout half of the package. Callers branch on them
// with errors.Is; the returned errors wrap them with the file and detail.
var (
	// ErrNotLayout: the directory is not an OCI image layout (no or bad
	// oci-layout file, or no index.json).
	ErrNotLayout = errors.New("layers: not an OCI image layout")
	// ErrTagNotFound: no entry of index.json carries the requested tag.
	ErrTagNotFound = errors.New("layers: tag not found in image layout")
	// ErrNoMatchingPlatform: an index holds no manifest for the requested
	// (or the host's) platform.
	ErrNoMatchingPlatform = errors.New("layers: no manifest for the platform")
	// ErrBlobNotFound: a descriptor names a blob that the layout lacks.
	ErrBlobNotFound = errors.New("layers: blob not found in image layout")
	// ErrBlobCorrupt: a blob's size or digest differs from its descriptor,
	// or its JSON does not parse.
	ErrBlobCorrupt = errors.New("layers: corrupt blob")
	// ErrUnsupportedMediaType: a descriptor's media type is not one this
	// package reads at that place (say, a layer type where a manifest is due).
	ErrUnsupportedMediaType = errors.New("layers: unsupported media type")
	// ErrTargetNotEmpty: Unpack was given a target directory that exists
	// and is not empty.
	ErrTargetNotEmpty = errors.New("layers: unpack target is not empty")
	// ErrInvalidTag: a tag is empty or holds characters a ref.name may not.
	ErrInvalidTag = errors.New("layers: invalid tag")
)

// LayoutError describes a problem with one file of an image layout.
type LayoutError struct {
	Path string // the file, e.g. /srv/img/blobs/sha256/ab12...
	Err  error  // what is wrong, usually wrapping one of the Err* sentinels
}

func (e *LayoutError) Error() string { return e.Path + ": " + e.Err.Error() }
func (e *LayoutError) Unwrap() error { return e.Err }

const (
	layoutFileName = ocispec.ImageLayoutFile // "oci-layout"
	indexFileName  = "index.json"
	blobsDirName   = ocispec.ImageBlobsDir // "blobs"

	// layoutMaxJSON caps index.json, manifests and configs read into
	// memory. Real ones are a few KiB; containerd caps manifests at 4 MiB.
	layoutMaxJSON = 8 << 20
	// layoutMaxIndexDepth caps how deep nested indexes may go.
	layoutMaxIndexDepth = 8
	// layoutMaxDescriptors caps the descriptors visited below one tag.
	layoutMaxDescriptors = 4096
)

// Layout is an OCI image layout directory (image-spec image-layout.md):
// an oci-layout file, index.json and blobs/ALG/HEX.
//
// A Layout holds only the directory name; every method reads the files
// afresh, so it is cheap and needs no Close. Reading methods are safe for
// concurrent use, also with writers: blobs appear by rename and index.json
// is replaced by rename, so a reader sees the old or the new index, never a
// torn one. Methods that change index.json (SetTag, RemoveTag, Build) hold
// an flock on the directory for their read-modify-write, so concurrent
// imgtool writers (goroutines or processes) do not lose each other's tags;
// other tools that rewrite index.json (umoci, skopeo) do not take that
// lock, so do not run them on the same layout at the same time.
type Layout struct {
	dir string
	// noSync skips fsync (tests and fuzzing only; the default is durable).
	noSync bool
}

// OpenLayout opens an existing image layout. It checks the oci-layout file
// and that index.json exists; it fails with ErrNotLayout otherwise.
func OpenLayout(dir string) (*Layout, error) {
	l := &Layout{dir: dir}
	if err := l.checkLayoutFile(); err != nil {
		return nil, err
	}
	if _, err := os.Stat(l.indexPath()); err != nil {
		return nil, notLayout(l.indexPath(), err)
	}
	return l, nil
}

// InitLayout opens the image layout at dir, creating it (like umoci init)
// when dir does not exist or is an empty directory. A non-empty directory
// that is not a layout is left untouched and fails with ErrNotLayout.
func InitLayout(dir string) (*Layout, error) { return layoutInit(dir, false) }

func layoutInit(dir string, noSync bool) (*Layout, error) {
	l := &Layout{dir: dir, noSync: noSync}
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
	case err != nil:
		return nil, err
	case len(entries) > 0:
		if _, err := OpenLayout(dir); err != nil {
			return nil, err
		}
		return l, nil
	}
	if err := os.MkdirAll(filepath.Join(dir, blobsDirName, "sha256"), 0o755); err != nil {
		return nil, err
	}
	lay, _ := json.Marshal(ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
	if err := layoutWriteFileAtomic(filepath.Join(dir, layoutFileName), lay, l.noSync); err != nil {
		return nil, err
	}
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{}}
	idx.SchemaVersion = 2
	if err := l.writeIndex(&idx); err != nil {
		return nil, err
	}
	return l, nil
}

// Dir returns the layout's directory.
func (l *Layout) Dir() string { return l.dir }

func (l *Layout) indexPath() string { return filepath.Join(l.dir, indexFileName) }

// notLayout is the LayoutError of file p, which makes its directory no
// layout because of err. The LayoutError names p, so err says only what
// is wrong ("no such file or directory", not "open P: no such file or
// directory" after "P: ...").
func notLayout(p string, err error) error {
	msg := err.Error()
	var pe *fs.PathError
	if errors.As(err, &pe) && pe.Path == p {
		msg = pe.Err.Error()
	}
	return &LayoutError{Path: p, Err: fmt.Errorf("%w: %s", ErrNotLayout, strings.TrimPrefix(msg, p+": "))}
}

func (l *Layout) checkLayoutFile() error {
	p := filepath.Join(l.dir, layoutFileName)
	b, err := jsonfile.ReadCapped(p, 64<<10)
	if err != nil {
		return notLayout(p, err)
	}
	var lay ocispec.ImageLayout
	if err := json.Unmarshal(b, &lay); err != nil {
		return notLayout(p, err)
	}
	// image-layout.md: imageLayoutVersion is "1.0.0"; accept 1.x.
	if !strings.HasPrefix(lay.Version, "1.") {
		return &LayoutError{Path: p, Err: fmt.Errorf("%w: imageLayoutVersion %q, want 1.x", ErrNotLayout, lay.Version)}
	}
	return nil
}

// Index reads and parses index.json.
func (l *Layout) Index(ctx context.Context) (*ocispec.Index, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p := l.indexPath()
	b, err := jsonfile.ReadCapped(p, layoutMaxJSON)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, notLayout(p, err)
		}
		return nil, err
	}
	idx, err := layoutParseIndex(b)
	if err != nil {
		return nil, &LayoutError{Path: p, Err: err}
	}
	return idx, nil
}

// writeIndex replaces index.json atomically (temp file, fsync, rename).
func (l *Layout) writeIndex(idx *ocispec.Index) error {
	b, err := json.Marshal(idx)
	if err != nil {
		return err
	}
	return layoutWriteFileAtomic(l.indexPath(), b, l.noSync)
}

// Tags returns the tags of index.json in index order, each with its
// descriptor. Entries without a ref.name annotation are skipped.
func (l *Layout) Tags(ctx context.Context) ([]string, []ocispec.Descriptor, error) {
	idx, err := l.Index(ctx)
	if err != nil {
		return nil, nil, err
	}
	var tags []string
	var descs []ocispec.Descriptor
	for _, d := range idx.Manifests {
		if t, ok := d.Annotations[ocispec.AnnotationRefName]; ok {
			tags = append(tags, t)
			descs = append(descs, d)
		}
	}
	return tags, descs, nil
}

// SetTag points tag at desc in index.json: entries carrying the tag are
// replaced by one entry for desc, every other entry is kept in its place.
// The blob desc names must already be in the layout. index.json is
// rewritten through a temp file and rename.
func (l *Layout) SetTag(ctx context.Context, tag string, desc ocispec.Descriptor) error {
	if err := ValidateTag(tag); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if ok, err := l.HasBlob(desc); err != nil {
		return err
	} else if !ok {
		return &LayoutError{Path: l.blobPath(desc.Digest), Err: fmt.Errorf("%w: tag %q would point at a missing blob", ErrBlobNotFound, tag)}
	}
	ann := make(map[string]string, len(desc.Annotations)+1)
	for k, v := range desc.Annotations {
		ann[k] = v
	}
	ann[ocispec.AnnotationRefName] = tag
	desc.Annotations = ann
	return l.updateIndex(ctx, func(idx *ocispec.Index) error {
		out := make([]ocispec.Descriptor, 0, len(idx.Manifests)+1)
		replaced := false
		for _, d := range idx.Manifests {
			if d.Annotations[ocispec.AnnotationRefName] == tag {
				if !replaced {
					out = append(out, desc)
					replaced = true
				}
				continue
			}
			out = append(out, d)
		}
		if !replaced {
			out = append(out, desc)
		}
		idx.Manifests = out
		return nil
	})
}

// RemoveTag drops the entries of index.json carrying tag. The blobs stay
// (as with umoci, a garbage collection removes unreferenced blobs). It
// fails with ErrTagNotFound when no entry carries the tag.
func (l *Layout) RemoveTag(ctx context.Context, tag string) error {
	return l.updateIndex(ctx, func(idx *ocispec.Index) error {
		out := idx.Manifests[:0]
		found := false
		for _, d := range idx.Manifests {
			if d.Annotations[ocispec.AnnotationRefName] == tag {
				found = true
				continue
			}
			out = append(out, d)
		}
		if !found {
			return &LayoutError{Path: l.indexPath(), Err: fmt.Errorf("%w: %q", ErrTagNotFound, tag)}
		}
		idx.Manifests = out
		return nil
	})
}

// updateIndex changes index.json under the index lock: it reads the
// index, lets edit change it and writes it back (atomically) unless edit
// fails.
func (l *Layout) updateIndex(ctx context.Context, edit func(*ocispec.Index) error) error {
	unlock, err := l.lockIndex()
	if err != nil {
		return err
	}
	defer unlock()
	idx, err := l.Index(ctx)
	if err != nil {
		return err
	}
	if err := edit(idx); err != nil {
		return err
	}
	return l.writeIndex(idx)
}

// ValidateTag checks a tag against the characters image-spec's ref.name
// grammar allows (alphanumerics and -._:@/+), at most 255 bytes.
func ValidateTag(tag string) error {
	if tag == "" {
		return fmt.Errorf("%w: empty", ErrInvalidTag)
	}
	if len(tag) > 255 {
		return fmt.Errorf("%w: %d bytes, at most 255", ErrInvalidTag, len(tag))
	}
	for i := 0; i < len(tag); i++ {
		c := tag[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("-._:@/+", c) >= 0:
		default:
			return fmt.Errorf("%w: %q has character %q", ErrInvalidTag, tag, c)
		}
	}
	return nil
}

// ImageRef is a layout reference DIR[:TAG] as umoci and skopeo's oci:
// transport write it.
type ImageRef struct {
	Dir string
	Tag string
}

func (r ImageRef) String() string { return r.Dir + ":" + r.Tag }

// ParseImageRef splits DIR[:TAG]; TAG defaults to "latest". The tag is the
// part after the last colon that follows the last slash, so DIR may hold
// colons in earlier components.
func ParseImageRef(s string) (ImageRef, error) {
	if s == "" {
		return ImageRef{}, fmt.Errorf("layers: empty image reference")
	}
	dir, tag := s, "latest"
	if i := strings.LastIndexByte(s, ':'); i >= 0 && i > strings.LastIndexByte(s, '/') {
		dir, tag = s[:i], s[i+1:]
	}
	if dir == "" {
		return ImageRef{}, fmt.Errorf("layers: image reference %q has no directory", s)
	}
	if err := ValidateTag(tag); err != nil {
		return ImageRef{}, fmt.Errorf("image reference %q: %w", s, err)
	}
	return ImageRef{Dir: dir, Tag: tag}, nil
}

func layoutParseIndex(b []byte) (*ocispec.Index, error) {
	var idx ocispec.Index
	if err := json.Unmarshal(b, &idx); err != nil {
		return nil, fmt.Errorf("%w: index: %v", ErrBlobCorrupt, err)
	}
	if idx.SchemaVersion != 2 {
		return nil, fmt.Errorf("%w: index schemaVersion %d, want 2", ErrBlobCorrupt, idx.SchemaVersion)
	}
	if idx.MediaType != "" && idx.MediaType != ocispec.MediaTypeImageIndex && idx.MediaType != mediaTypeDockerManifestList {
		return nil, fmt.Errorf("%w: index has mediaType %q", ErrUnsupportedMediaType, idx.MediaType)
	}
	for i, d := range idx.Manifests {
		if err := d.Digest.Validate(); err != nil {
			return nil, fmt.Errorf("%w: index entry %d: digest %q: %v", ErrBlobCorrupt, i, d.Digest, err)
		}
		if d.Size < 0 {
			return nil, fmt.Errorf("%w: index entry %d: negative size %d", ErrBlobCorrupt, i, d.Size)
		}
	}
	return &idx, nil
}

// layoutWriteFileAtomic writes b to path whole (see internal/atomicfile).
// Layout files are imgtool's own, which no QEMU holds: no image lock.
func layoutWriteFileAtomic(path string, b []byte, noSync bool) error {
	return atomicfile.WriteFile(path, b, atomicfile.Options{Sync: layoutSync(noSync), NoLock: true})
}

func layoutSync(noSync bool) atomicfile.Sync {
	if noSync {
		return atomicfile.NoSync
	}
	return atomicfile.Durable
}
