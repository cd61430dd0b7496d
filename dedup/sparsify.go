package dedup

import (
	"context"
	"fmt"

	"github.com/imgtool/imgtool/qcow2"
)

// SparsifyOptions configures Sparsify. The zero value uses GOMAXPROCS
// workers and opens the image with locks.
type SparsifyOptions struct {
	// Workers is the number of goroutines reading and comparing. 0 means
	// runtime.GOMAXPROCS(0).
	Workers int
	// Image opens the image (ForceShare, chain policy). Writable and
	// Format are ignored.
	Image qcow2.Options
	// Progress, if set, is called with the guest bytes processed so far
	// and the total, from any goroutine.
	Progress func(done, total int64)
}

// SparsifyResult reports what Sparsify did. Sizes are allocated bytes.
type SparsifyResult struct {
	Path        string `json:"path"`
	BeforeBytes int64  `json:"before-bytes"`
	AfterBytes  int64  `json:"after-bytes"`
	SavedBytes  int64  `json:"saved-bytes"`
	// DataBytes is the guest data the image still stores itself.
	DataBytes int64 `json:"data-bytes"`
}

// Sparsify rewrites the qcow2 image at path so that it stores only the
// clusters whose content differs from what its backing file shows: clusters
// equal to the backing become unallocated again, and clusters that read as
// zeros are dropped where no backing data shows through, or become zero
// clusters over non-zero backing data (version 3; version 2 must store real
// zeros there). The guest content stays byte-identical: the new image is
// written under a temporary name, compared with the original and renamed
// over it. It keeps the backing file name and format, cluster size, version,
// extended L2 and compression type; images with internal snapshots or
// bitmaps are refused (ErrUnsupported), as are raw images.
func Sparsify(ctx context.Context, path string, opts SparsifyOptions) (*SparsifyResult, error) {
	iopts := opts.Image
	iopts.Writable = false
	iopts.Format = ""
	img, err := qcow2.Open(path, iopts)
	if err != nil {
		return nil, fmt.Errorf("dedup: %w", err)
	}
	defer img.Close()
	h := img.Header()
	if h == nil {
		return nil, fmt.Errorf("%w: %s is a raw image (sparsify works on qcow2)", ErrUnsupported, path)
	}
	if err := rewritable(img); err != nil {
		return nil, err
	}
	if h.DataFile != "" {
		return nil, fmt.Errorf("%w: %s keeps its data in an external file", ErrUnsupported, path)
	}
	co := qcow2.CreateOptions{
		ClusterSize:   h.ClusterSize(),
		ExtendedL2:    h.ExtendedL2(),
		BackingFile:   h.BackingFile,
		BackingFormat: qcow2.Format(img.BackingFormat()),
		LazyRefcounts: h.CompatibleFeatures&qcow2.CompatLazyRefcounts != 0,
		RefcountBits:  h.RefcountBits(),
	}
	if h.Version == 2 {
		co.Compat = "0.10"
	}
	if h.CompressionType == qcow2.CompressionZstd {
		co.CompressionType = "zstd"
	}
	res := &SparsifyResult{Path: path, BeforeBytes: allocated(path)}
	st, err := rewrite(ctx, rewriteSpec{
		src:     img,
		dst:     path,
		opts:    co,
		open:    iopts,
		workers: opts.Workers,
		prog:    newProgress(opts.Progress, img.Size()),
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	res.DataBytes = st.DataBytes
	res.AfterBytes = allocated(path)
	res.SavedBytes = res.BeforeBytes - res.AfterBytes
	return res, nil
}
