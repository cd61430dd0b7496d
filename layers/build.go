package layers

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// BuildOptions describe an image for Build. The zero value of each field is
// its documented default; Layers and the layout directory are the inputs.
type BuildOptions struct {
	// BaseLayout is the layout directory holding the base image (default:
	// the layout being written). Blobs of a base from another layout are
	// copied, verified, into the target layout.
	BaseLayout string
	// Base is the tag of the base image (default: none, build from
	// scratch).
	Base string
	// Platform picks the base image from an index and, for an image built
	// from scratch, is recorded in the config (default HostPlatform()).
	Platform *ocispec.Platform
	// Layers are the new layers, bottom first. A directory becomes a layer
	// holding its difference from the flattened base plus the layers
	// before it (Create with Lower); a file is a layer blob (tar, tar+gzip
	// or tar+zstd, detected from its bytes) stored as is.
	Layers []string
	// Tag is the tag written into index.json (default "latest"). An entry
	// with the same tag is replaced; other entries are kept.
	Tag string
	// Compression of the layers made from directories (default Gzip).
	Compression Compression
	// SourceDateEpoch, when set, is the config's created time and the
	// history entries' time, and clamps mtimes in the layers made from
	// directories, for reproducible builds. Default: the current time for
	// created, no clamping.
	SourceDateEpoch *time.Time
	// CreatedBy is the history entries' created_by (default
	// "imgtool image build").
	CreatedBy string
	// Apply holds the options used to flatten the base and earlier layers
	// into the scratch tree that directory layers are diffed against (id
	// mapping, limits, devices); its Limits also bound the reading of
	// layer files. Overlay, ExpectDigest and ExpectDiffID are ignored.
	Apply ApplyOptions
	// TempDir is where the scratch tree lives (default os.TempDir()). It
	// must be on a filesystem that can hold the base image's files with
	// their owners and modes.
	TempDir string
	// Concurrency is passed to Create for compression (default: Create's).
	Concurrency int
	// Progress, when set, is called with the bytes processed so far
	// (flattening, reading and writing layers); total is -1 (unknown).
	// Calls may come from several goroutines (compression and layer
	// readers), concurrently: the function must be safe for that.
	Progress func(done, total int64)
}

// BuildResult describes what Build wrote.
type BuildResult struct {
	Manifest ocispec.Descriptor // as written into index.json, with the tag
	Config   ocispec.Descriptor
	// Layers are the new layers in order (not the base's), with digest,
	// diffID, size and media type.
	Layers []Descriptor
}

// Build writes a new image into the OCI layout at layoutDir (created, like
// umoci init, when missing or empty): the base image's layers (if any)
// followed by one layer per opts.Layers entry, a config extending the
// base's (rootfs.diff_ids, history, created) and a manifest, then points
// opts.Tag at it in index.json.
//
// Every blob is written atomically and verified; index.json is replaced by
// rename as the last step, so a failed or cancelled Build leaves the
// existing index and blobs as they were (new blobs it had stored stay,
// unreferenced, as with umoci; a garbage collection removes them).
func Build(ctx context.Context, layoutDir string, opts BuildOptions) (*BuildResult, error) {
	tag := opts.Tag
	if tag == "" {
		tag = "latest"
	}
	if err := ValidateTag(tag); err != nil {
		return nil, err
	}
	kinds := make([]bool, len(opts.Layers)) // true: directory
	paths := make([]string, len(opts.Layers))
	lastDir := -1
	for i, p := range opts.Layers {
		fi, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("layers: build: layer %d: %w", i, err)
		}
		paths[i] = p
		switch {
		case fi.IsDir():
			// Create refuses a symlink as its root: resolve it here.
			if paths[i], err = filepath.EvalSymlinks(p); err != nil {
				return nil, fmt.Errorf("layers: build: layer %d: %w", i, err)
			}
			kinds[i] = true
			lastDir = i
		case fi.Mode().IsRegular():
		default:
			return nil, fmt.Errorf("layers: build: layer %d: %s is neither a directory nor a regular file", i, p)
		}
	}
	// Resolve the base before creating the target layout, so that a bad
	// base leaves no new layout behind.
	var base *ResolvedImage
	if opts.Base != "" {
		bdir := opts.BaseLayout
		if bdir == "" {
			bdir = layoutDir
		}
		bl, err := OpenLayout(bdir)
		if err != nil {
			return nil, fmt.Errorf("base image: %w", err)
		}
		if base, err = bl.Resolve(ctx, opts.Base, ResolveOptions{Platform: opts.Platform}); err != nil {
			return nil, fmt.Errorf("base image: %w", err)
		}
	}
	l, err := InitLayout(layoutDir)
	if err != nil {
		return nil, err
	}
	if base != nil && buildSameDir(base.Layout.Dir(), layoutDir) {
		base.Layout = l
	}

	var done atomic.Int64
	report := func(int64, int64) {}
	if opts.Progress != nil {
		report = func(n, _ int64) { opts.Progress(done.Add(n), -1) }
	}

	// The base's layers, in the target layout, under non-deprecated types.
	var layers []ocispec.Descriptor
	var diffIDs []digest.Digest
	if base != nil {
		for i, ld := range base.Manifest.Layers {
			mt, err := CanonicalLayerMediaType(ld.MediaType)
			if err != nil {
				return nil, err
			}
			if base.Layout != l {
				if err := buildCopyBlob(ctx, base.Layout, l, ld); err != nil {
					return nil, fmt.Errorf("base layer %d: %w", i, err)
				}
			} else if ok, err := l.HasBlob(ld); err != nil {
				return nil, err
			} else if !ok {
				return nil, &LayoutError{Path: l.blobPath(ld.Digest), Err: fmt.Errorf("%w: base layer %d", ErrBlobNotFound, i)}
			}
			layers = append(layers, ocispec.Descriptor{MediaType: mt, Digest: ld.Digest, Size: ld.Size, Annotations: ld.Annotations})
			diffIDs = append(diffIDs, base.Config.RootFS.DiffIDs[i])
		}
	}

	// The scratch tree that directory layers are diffed against.
	var flat string
	ao := opts.Apply
	ao.Overlay, ao.ExpectDigest, ao.ExpectDiffID = false, "", ""
	if lastDir >= 0 {
		tmp, err := os.MkdirTemp(opts.TempDir, "imgtool-build-*")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(tmp)
		flat = filepath.Join(tmp, "rootfs")
		if err := os.Mkdir(flat, 0o755); err != nil {
			return nil, err
		}
		if base != nil {
			var prog func(done, total int64)
			if opts.Progress != nil {
				var last int64
				prog = func(d, _ int64) { report(d-last, -1); last = d }
			}
			// From the target layout, where the base's blobs now are.
			inTarget := *base
			inTarget.Layout = l
			if err := inTarget.applyLayers(ctx, flat, len(base.Manifest.Layers), ao, prog); err != nil {
				return nil, fmt.Errorf("flattening base image: %w", err)
			}
		}
	}

	res := &BuildResult{}
	for i, p := range paths {
		var d Descriptor
		if kinds[i] {
			lower := flat
			if base == nil && i == 0 {
				lower = "" // nothing below: a plain layer of the tree
			}
			d, err = buildDirLayer(ctx, l, p, lower, opts, report)
		} else {
			d, err = buildFileLayer(ctx, l, p, ao.Limits, report)
		}
		if err != nil {
			return nil, fmt.Errorf("layer %d (%s): %w", i, p, err)
		}
		desc := ocispec.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size}
		if i < lastDir {
			// A later directory layer is diffed against this one too.
			if err := buildApplyBlob(ctx, l, desc, d.DiffID, flat, ao, report); err != nil {
				return nil, fmt.Errorf("layer %d (%s): applying to the scratch tree: %w", i, p, err)
			}
		}
		layers = append(layers, desc)
		diffIDs = append(diffIDs, d.DiffID)
		res.Layers = append(res.Layers, d)
	}

	cfg, plat, err := buildConfig(base, opts, diffIDs)
	if err != nil {
		return nil, err
	}
	if res.Config, err = l.WriteBlobBytes(ctx, ocispec.MediaTypeImageConfig, cfg); err != nil {
		return nil, err
	}
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: res.Config, Layers: layers}
	m.SchemaVersion = 2
	if m.Layers == nil {
		m.Layers = []ocispec.Descriptor{}
	}
	mb, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	mdesc, err := l.WriteBlobBytes(ctx, ocispec.MediaTypeImageManifest, mb)
	if err != nil {
		return nil, err
	}
	if plat.OS != "" && plat.Architecture != "" {
		mdesc.Platform = &plat
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := l.SetTag(ctx, tag, mdesc); err != nil {
		return nil, err
	}
	mdesc.Annotations = map[string]string{ocispec.AnnotationRefName: tag}
	res.Manifest = mdesc
	return res, nil
}

func buildSameDir(a, b string) bool {
	fa, err1 := os.Stat(a)
	fb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(fa, fb)
}

// buildCopyBlob copies one blob from src to dst, verified on both ends.
func buildCopyBlob(ctx context.Context, src, dst *Layout, desc ocispec.Descriptor) error {
	if ok, err := dst.HasBlob(desc); err != nil || ok {
		return err
	}
	rc, err := src.OpenBlob(desc)
	if err != nil {
		return err
	}
	defer rc.Close()
	_, err = dst.WriteBlob(ctx, rc, desc)
	return err
}

// buildDirLayer creates a layer from dir, diffed against lower, into a new
// blob of l.
func buildDirLayer(ctx context.Context, l *Layout, dir, lower string, opts BuildOptions, report func(int64, int64)) (Descriptor, error) {
	w, err := l.newBlobWriter(digest.SHA256)
	if err != nil {
		return Descriptor{}, err
	}
	defer w.Abort()
	d, err := Create(ctx, &buildCountWriter{w: w, report: report}, dir, CreateOptions{
		Compression:     opts.Compression,
		Lower:           lower,
		SourceDateEpoch: opts.SourceDateEpoch,
		Concurrency:     opts.Concurrency,
	})
	if err != nil {
		return Descriptor{}, err
	}
	if _, err := w.Commit(ocispec.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size}); err != nil {
		return Descriptor{}, err
	}
	return d, nil
}

// buildApplyBlob applies a stored layer blob onto dir; Apply verifies its
// digest and diffID.
func buildApplyBlob(ctx context.Context, l *Layout, desc ocispec.Descriptor, diffID digest.Digest, dir string, ao ApplyOptions, report func(int64, int64)) error {
	f, err := l.openBlobFile(desc)
	if err != nil {
		return err
	}
	defer f.Close()
	ao.ExpectDigest, ao.ExpectDiffID = desc.Digest, diffID
	d, err := Apply(ctx, &buildCountReader{r: f, report: report}, dir, ao)
	if err == nil && d.Size != desc.Size {
		err = &LayoutError{Path: f.Name(), Err: fmt.Errorf("%w: applied %d of its %d bytes", ErrBlobCorrupt, d.Size, desc.Size)}
	}
	return err
}

// buildConfig makes the new config: the base's JSON with every field kept
// (Docker extras included) except rootfs, history and created, which are
// replaced; or a minimal config for the platform when there is no base.
func buildConfig(base *ResolvedImage, opts BuildOptions, diffIDs []digest.Digest) ([]byte, ocispec.Platform, error) {
	created := time.Now().UTC()
	if opts.SourceDateEpoch != nil {
		created = opts.SourceDateEpoch.UTC()
	}
	fields := map[string]json.RawMessage{}
	var plat ocispec.Platform
	var history []ocispec.History
	if base != nil {
		if err := json.Unmarshal(base.RawConfig, &fields); err != nil {
			return nil, plat, fmt.Errorf("base config: %w", err)
		}
		plat = base.Config.Platform
		history = append(history, base.Config.History...)
	} else {
		plat = HostPlatform()
		if opts.Platform != nil {
			plat = *opts.Platform
		}
		fields["config"] = json.RawMessage("{}")
	}
	by := opts.CreatedBy
	if by == "" {
		by = "imgtool image build"
	}
	for _, p := range opts.Layers {
		history = append(history, ocispec.History{Created: &created, CreatedBy: by, Comment: "layer from " + filepath.Base(p)})
	}
	set := func(k string, v any) error {
		b, err := json.Marshal(v)
		fields[k] = b
		return err
	}
	if err := set("created", created); err != nil {
		return nil, plat, err
	}
	if err := set("rootfs", ocispec.RootFS{Type: "layers", DiffIDs: append([]digest.Digest{}, diffIDs...)}); err != nil {
		return nil, plat, err
	}
	if len(history) > 0 {
		if err := set("history", history); err != nil {
			return nil, plat, err
		}
	}
	if base == nil {
		set("architecture", plat.Architecture)
		set("os", plat.OS)
		if plat.Variant != "" {
			set("variant", plat.Variant)
		}
	}
	b, err := json.Marshal(fields) // map keys sorted: reproducible
	if err != nil {
		return nil, plat, err
	}
	mplat := ocispec.Platform{OS: plat.OS, Architecture: plat.Architecture, Variant: plat.Variant, OSVersion: plat.OSVersion}
	return b, mplat, nil
}

// buildCountWriter reports bytes written.
type buildCountWriter struct {
	w      interface{ Write([]byte) (int, error) }
	report func(int64, int64)
}

func (c *buildCountWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.report(int64(n), -1)
	return n, err
}
