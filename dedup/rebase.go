package dedup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"

	"github.com/imgtool/imgtool/internal/atomicfile"
	"github.com/imgtool/imgtool/internal/zero"
	"github.com/imgtool/imgtool/qcow2"
)

// RebaseOptions configures Rebase. The zero value builds a base of the
// clusters a majority of the images share, with 64 KiB clusters (or the
// largest cluster size of the qcow2 inputs), GOMAXPROCS workers.
type RebaseOptions struct {
	// MinShare is how many images must hold the same content at the same
	// guest offset for it to go into the base. 0 means a majority
	// (N/2+1 of N images).
	MinShare int
	// ClusterSize is the cluster size of the base and the overlays. 0
	// means the largest cluster size among the qcow2 inputs, or 64 KiB.
	ClusterSize int64
	// Workers is the number of goroutines reading and comparing. 0 means
	// runtime.GOMAXPROCS(0).
	Workers int
	// Image opens the inputs (ForceShare, chain policy). Writable and
	// Format are ignored.
	Image qcow2.Options
	// Progress, if set, is called with the bytes processed so far and the
	// total (every image read for the base, then once more per image
	// rewritten), from any goroutine.
	Progress func(done, total int64)
}

// RebaseResult reports what Rebase did. Sizes are allocated bytes on disk.
type RebaseResult struct {
	Base string `json:"base"`
	// BaseReused is true when the base existed and was used as it is.
	BaseReused bool `json:"base-reused"`
	// BaseDataBytes is the guest data stored in the base (0 if reused).
	BaseDataBytes int64 `json:"base-data-bytes"`
	// BeforeBytes is the allocated size of the images before, AfterBytes
	// that of the images after plus the base.
	BeforeBytes int64         `json:"before-bytes"`
	AfterBytes  int64         `json:"after-bytes"`
	SavedBytes  int64         `json:"saved-bytes"`
	Images      []RebaseImage `json:"images"`
}

// RebaseImage is the outcome for one image.
type RebaseImage struct {
	Path string `json:"path"`
	// Status is "rebased", or "already" for an image that was already an
	// overlay on the base (a rerun after an interruption).
	Status      string `json:"status"`
	BeforeBytes int64  `json:"before-bytes"`
	AfterBytes  int64  `json:"after-bytes"`
	// DataBytes is the guest data the overlay stores itself.
	DataBytes int64 `json:"data-bytes"`
}

// Rebase builds a shared base image at basePath holding every cluster that
// at least MinShare of the images hold with the same content at the same
// guest offset, then rewrites each image as a qcow2 overlay on the base
// (backing file name relative to the image's directory) that stores only
// the clusters differing from the base. Each image is written under a
// temporary name in its directory, read back and compared with the
// original, and renamed over it. The images may differ in guest size, as
// qemu-img rebase accepts a backing file of any size: the base covers the
// largest of them, each overlay keeps its own image's size, and an image
// votes only on the clusters it covers. Raw images become qcow2 overlays
// under the same name.
//
// Rerunning after an interruption is safe: an existing base is reused as
// it is (any base gives correct overlays; delete it to rebuild it), and
// images that are already overlays on it are left alone.
func Rebase(ctx context.Context, basePath string, images []string, opts RebaseOptions) (*RebaseResult, error) {
	if len(images) == 0 {
		return nil, errors.New("dedup: rebase: no images")
	}
	k := opts.MinShare
	if k == 0 {
		k = len(images)/2 + 1
	}
	if k < 1 || k > len(images) {
		return nil, fmt.Errorf("dedup: rebase: min-share %d out of range 1..%d", k, len(images))
	}
	iopts := opts.Image
	iopts.Writable = false
	iopts.Format = ""
	res := &RebaseResult{Base: basePath}
	baseSt, baseErr := os.Stat(basePath)
	if baseErr != nil && !errors.Is(baseErr, os.ErrNotExist) {
		return nil, fmt.Errorf("dedup: %w", baseErr)
	}
	var imgs []*qcow2.Image
	defer func() {
		for _, img := range imgs {
			if img != nil {
				img.Close()
			}
		}
	}()
	var seen []os.FileInfo
	for _, p := range images {
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("dedup: %w", err)
		}
		if baseErr == nil && os.SameFile(st, baseSt) {
			return nil, fmt.Errorf("%w: %s is the base itself", ErrUnsupported, p)
		}
		for _, other := range seen {
			if os.SameFile(st, other) {
				return nil, fmt.Errorf("dedup: rebase: %s given twice", p)
			}
		}
		seen = append(seen, st)
		img, err := qcow2.Open(p, iopts)
		if err != nil {
			return nil, fmt.Errorf("dedup: %w", err)
		}
		imgs = append(imgs, img)
		if err := rewritable(img); err != nil {
			return nil, err
		}
		before := allocated(p)
		ri := RebaseImage{Path: p, Status: "rebased", BeforeBytes: before}
		if baseErr == nil && backedBy(img, baseSt) {
			ri.Status = "already"
		}
		res.Images = append(res.Images, ri)
		res.BeforeBytes += before
	}
	cs := opts.ClusterSize
	if cs == 0 {
		for _, img := range imgs {
			cs = max(cs, img.ClusterSize())
		}
		if cs == 0 {
			cs = DefaultChunkSize
		}
	}
	var size, total int64 // the largest image; the bytes to process
	for i, img := range imgs {
		size = max(size, img.Size())
		if res.Images[i].Status != "already" {
			total += img.Size()
		}
		if baseErr != nil {
			total += img.Size()
		}
	}
	prog := newProgress(opts.Progress, total)
	if baseErr == nil {
		// Any base gives correct overlays, whatever its size: past its
		// end it reads as zeros, and the overlays store what differs.
		b, err := qcow2.Open(basePath, iopts)
		if err != nil {
			return nil, fmt.Errorf("dedup: existing base: %w", err)
		}
		b.Close()
		res.BaseReused = true
	} else {
		n, err := buildBase(ctx, basePath, imgs, k, cs, opts.Workers, prog)
		if err != nil {
			return nil, err
		}
		res.BaseDataBytes = n
	}
	absBase, err := filepath.Abs(basePath)
	if err != nil {
		return nil, fmt.Errorf("dedup: %w", err)
	}
	for i, img := range imgs {
		ri := &res.Images[i]
		if ri.Status == "already" {
			ri.AfterBytes = ri.BeforeBytes
			continue
		}
		absImg, err := filepath.Abs(ri.Path)
		if err != nil {
			return nil, fmt.Errorf("dedup: %w", err)
		}
		rel, err := filepath.Rel(filepath.Dir(absImg), absBase)
		if err != nil {
			rel = absBase
		}
		st, err := rewrite(ctx, rewriteSpec{
			src:     img,
			dst:     ri.Path,
			opts:    qcow2.CreateOptions{ClusterSize: cs, BackingFile: rel, BackingFormat: qcow2.FormatQcow2},
			open:    iopts,
			workers: opts.Workers,
			prog:    prog,
		})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", ri.Path, err)
		}
		img.Close()
		imgs[i] = nil
		ri.DataBytes = st.DataBytes
		ri.AfterBytes = allocated(ri.Path)
	}
	for _, ri := range res.Images {
		res.AfterBytes += ri.AfterBytes
	}
	res.AfterBytes += allocated(basePath)
	res.SavedBytes = res.BeforeBytes - res.AfterBytes
	return res, nil
}

// rewritable says why img cannot be rewritten, or nil.
func rewritable(img *qcow2.Image) error {
	if err := img.Readable(); err != nil {
		return fmt.Errorf("dedup: %s: %w", img.Path(), err)
	}
	if len(img.Snapshots()) > 0 {
		return fmt.Errorf("%w: %s has internal snapshots, which a rewrite would lose", ErrUnsupported, img.Path())
	}
	if h := img.Header(); h != nil && h.Bitmaps != nil {
		return fmt.Errorf("%w: %s has persistent dirty bitmaps, which a rewrite would lose", ErrUnsupported, img.Path())
	}
	return nil
}

// backedBy reports whether img's backing file is the file base.
func backedBy(img *qcow2.Image, base os.FileInfo) bool {
	bp := img.BackingPath()
	if bp == "" {
		return false
	}
	st, err := os.Stat(bp)
	return err == nil && os.SameFile(st, base)
}

// buildBase writes the base image, as large as the largest image: for each
// cluster, the content that at least k images hold at that offset (zeros
// stay unallocated). Only the images that reach into a cluster vote on it;
// the last, partial cluster of a shorter image reads as zeros past its
// end. It returns the guest data bytes stored.
func buildBase(ctx context.Context, path string, imgs []*qcow2.Image, k int, cs int64, workers int, prog *progress) (int64, error) {
	var size int64
	for _, img := range imgs {
		size = max(size, img.Size())
	}
	af, err := atomicfile.Create(path, atomicfile.Options{})
	if err != nil {
		return 0, fmt.Errorf("dedup: %w", err)
	}
	defer af.Abort()
	if err := qcow2.CreateFile(af.File, path, qcow2.CreateOptions{Size: size, ClusterSize: cs}); err != nil {
		return 0, fmt.Errorf("dedup: %w", err)
	}
	tmp := af.TempPath()
	out, err := qcow2.Open(tmp, qcow2.Options{Writable: true, Format: qcow2.FormatQcow2})
	if err != nil {
		return 0, fmt.Errorf("dedup: %w", err)
	}
	// One segment buffer per image per worker: keep them to ~64 MiB per
	// worker whatever the number of images.
	seg := max(cs, min(int64(segmentSize), (64<<20)/int64(len(imgs)))/cs*cs)
	var stored atomic.Int64
	err = parallelSegments(ctx, size, seg, workers, func(off, n int64, bufs *segBufs) error {
		data := make([][]byte, len(imgs))
		for i, img := range imgs {
			if off >= img.Size() {
				continue // this image does not reach the segment
			}
			data[i] = bufs.get(i, n)
			if err := readPadded(img, data[i], off); err != nil {
				return err
			}
			prog.add(min(n, img.Size()-off))
		}
		groups := make([]int, 0, len(imgs)) // representative image of each group
		counts := make([]int, 0, len(imgs))
		for c := int64(0); c < n; c += cs {
			end := min(c+cs, n)
			groups, counts = groups[:0], counts[:0]
			best := -1
			for i, img := range imgs {
				if off+c >= img.Size() {
					continue // no vote past the image's end
				}
				ch := data[i][c:end]
				g := 0
				for g < len(groups) && !bytes.Equal(ch, data[groups[g]][c:end]) {
					g++
				}
				if g == len(groups) {
					groups = append(groups, i)
					counts = append(counts, 0)
				}
				counts[g]++
				if counts[g] >= k && (best < 0 || counts[g] > counts[best]) {
					best = g
				}
			}
			if best < 0 {
				continue
			}
			ch := data[groups[best]][c:end]
			if zero.Is(ch) {
				continue
			}
			if _, err := out.WriteAt(ch, off+c); err != nil {
				return fmt.Errorf("dedup: %s: write at %d: %w", tmp, off+c, err)
			}
			stored.Add(int64(len(ch)))
		}
		return nil
	})
	if err == nil {
		err = out.Flush()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, err
	}
	if err := af.Commit(); err != nil {
		return 0, fmt.Errorf("dedup: %w", err)
	}
	return stored.Load(), nil
}
