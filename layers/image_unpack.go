package layers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sync/atomic"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// UnpackOptions tune Unpack. The zero value unpacks the tag's image for the
// host platform (or its only manifest) with ApplyOptions' defaults.
type UnpackOptions struct {
	// Platform picks the image from an index (see ResolveOptions).
	Platform *ocispec.Platform
	// Apply is passed to Apply for every layer (id mapping, limits, device
	// policy...). Its Overlay field must be false, and ExpectDigest and
	// ExpectDiffID are set by Unpack from the manifest and config.
	Apply ApplyOptions
	// Progress, when set, is called with the compressed bytes of layer
	// blobs read so far and their total. Calls come one at a time but may
	// come from a goroutine other than the caller's (the layer reader's).
	Progress func(done, total int64)
}

// Unpack flattens the image tagged tag of the layout in layoutDir into
// target, like `umoci raw unpack`: the layers are applied in order with
// Apply, each verified against its manifest digest and its config diffID
// while it streams. target must be missing or an empty directory; when
// Unpack created it and fails, it removes it again, otherwise a failed
// Unpack leaves what it had applied. It returns the image unpacked.
func Unpack(ctx context.Context, layoutDir, tag, target string, opts UnpackOptions) (*ResolvedImage, error) {
	if opts.Apply.Overlay {
		return nil, fmt.Errorf("layers: Unpack flattens an image; UnpackOptions.Apply.Overlay must be false")
	}
	l, err := OpenLayout(layoutDir)
	if err != nil {
		return nil, err
	}
	img, err := l.Resolve(ctx, tag, ResolveOptions{Platform: opts.Platform})
	if err != nil {
		return nil, err
	}
	created, err := imagePrepareTarget(target)
	if err != nil {
		return nil, err
	}
	if err := img.applyLayers(ctx, target, len(img.Manifest.Layers), opts.Apply, opts.Progress); err != nil {
		if created {
			os.RemoveAll(target)
		}
		return nil, err
	}
	return img, nil
}

// imagePrepareTarget creates target or checks that it is an empty
// directory. It reports whether it created it.
func imagePrepareTarget(target string) (bool, error) {
	entries, err := os.ReadDir(target)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.Mkdir(target, 0o755); err != nil {
			return false, err
		}
		return true, nil
	}
	if err != nil {
		return false, err
	}
	if len(entries) > 0 {
		return false, fmt.Errorf("%w: %s", ErrTargetNotEmpty, target)
	}
	return false, nil
}

// applyLayers applies the first n layers of the image onto dir in order.
// Applying is sequential (each layer's whiteouts and hardlinks depend on
// the layers below); each layer is decompressed and verified as it is
// applied, in one pass.
func (r *ResolvedImage) applyLayers(ctx context.Context, dir string, n int, ao ApplyOptions, progress func(done, total int64)) error {
	var total int64
	for _, ld := range r.Manifest.Layers[:n] {
		total += ld.Size
	}
	var done atomic.Int64
	if progress != nil {
		progress(0, total)
	}
	for i, ld := range r.Manifest.Layers[:n] {
		if err := ctx.Err(); err != nil {
			return err
		}
		// Apply hashes the blob and checks ExpectDigest, so the file is
		// opened without a second hashing reader.
		f, err := r.Layout.openBlobFile(ld)
		if err != nil {
			return fmt.Errorf("layer %d of %s: %w", i, r.Descriptor.Digest, err)
		}
		var src io.Reader = f
		if progress != nil {
			src = &imageProgressReader{r: f, done: &done, total: total, fn: progress}
		}
		o := ao
		o.Overlay = false
		o.ExpectDigest = ld.Digest
		o.ExpectDiffID = r.Config.RootFS.DiffIDs[i]
		var d Descriptor
		d, err = Apply(ctx, src, dir, o)
		if err == nil && d.Size != ld.Size {
			// The digest matched, so this cannot happen unless Apply
			// stopped early; never accept a partly read blob.
			err = &LayoutError{Path: f.Name(), Err: fmt.Errorf("%w: applied %d of its %d bytes", ErrBlobCorrupt, d.Size, ld.Size)}
		}
		f.Close()
		if err != nil {
			return fmt.Errorf("layer %d (%s) of %s: %w", i, ld.Digest, r.Descriptor.Digest, err)
		}
	}
	return nil
}

// imageProgressReader reports bytes read to a progress callback.
type imageProgressReader struct {
	r     io.Reader
	done  *atomic.Int64
	total int64
	fn    func(done, total int64)
}

func (p *imageProgressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 {
		p.fn(p.done.Add(int64(n)), p.total)
	}
	return n, err
}
