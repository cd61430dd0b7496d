// Package dedup finds and removes duplicate data across disk images and
// container layers.
//
// Scan reports how much of a set of images (qcow2 or raw, read through their
// backing chains) and OCI image layouts is zeros, unique or duplicate.
// Rebase builds a shared base from standalone images and rewrites each one
// as a thin overlay on it; Sparsify drops what an overlay repeats of its
// backing. StoreDedup links identical files across unpacked layers.
//
// Every operation takes a context and an optional progress callback
// func(done, total int64), which may be called from several goroutines.
package dedup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/imgtool/imgtool/internal/zero"
	"github.com/imgtool/imgtool/qcow2"
)

// DefaultChunkSize is the image chunk size when ScanOptions.ChunkSize is 0
// and no input is a qcow2 image (the qcow2 default cluster size).
const DefaultChunkSize = 64 << 10

// DefaultMaxChunks is the index limit when ScanOptions.MaxChunks is 0:
// 64 Mi distinct chunks (4 TiB of unique data at 64 KiB chunks), at
// most 6.4 GiB of memory at BytesPerIndexEntry.
const DefaultMaxChunks = 64 << 20

// segmentSize is the unit of work of image scans: one ReadAt per run of
// non-zero chunks inside it.
const segmentSize = 4 << 20

// ScanOptions configures Scan. The zero value uses GOMAXPROCS workers,
// cluster-sized chunks and DefaultMaxChunks.
type ScanOptions struct {
	// ChunkSize is the unit images are compared in, a power of two from
	// 4 KiB to 2 MiB. 0 means the largest cluster size among the qcow2
	// inputs, or DefaultChunkSize (64 KiB) when there are none.
	ChunkSize int64
	// Workers is the number of goroutines reading and hashing. 0 means
	// runtime.GOMAXPROCS(0).
	Workers int
	// MaxChunks bounds the index (and so the memory, BytesPerIndexEntry
	// per distinct chunk): the scan fails with ErrIndexFull beyond it.
	// A layout scan also keeps every chunk reference and file digest
	// until the end (about 50 bytes each); their count is bounded by
	// MaxChunks too. 0 means DefaultMaxChunks; -1 means no limit.
	MaxChunks int64
	// NoPrefilter hashes every image chunk with SHA-256. By default a
	// cheap 64-bit hash (hash/maphash) is computed first and SHA-256 only
	// for chunks whose cheap hash was seen before (see prefilter.go);
	// BenchmarkScan measures both.
	NoPrefilter bool
	// Image opens images. The zero value opens read-only with locks and
	// whole backing chains.
	Image qcow2.Options
	// Progress, if set, is called with the bytes scanned so far and the
	// total (guest bytes of images plus stored bytes of layer blobs),
	// from any goroutine; calls are serialised and done never decreases.
	Progress func(done, total int64)
}

// Report is what Scan found. Images and layouts are counted separately.
type Report struct {
	Images  *ImageReport  `json:"images,omitempty"`
	Layouts *LayoutReport `json:"layouts,omitempty"`
}

// ImageReport sums the image inputs. TotalBytes = ZeroBytes + UniqueBytes +
// DuplicateBytes.
type ImageReport struct {
	ChunkSize int64 `json:"chunk-size"`
	// TotalBytes is the sum of the guest sizes.
	TotalBytes int64 `json:"total-bytes"`
	// ZeroBytes reads as zeros (unallocated, zero clusters, or data that
	// is all zeros).
	ZeroBytes int64 `json:"zero-bytes"`
	// UniqueBytes is the size of the distinct non-zero chunks: what a
	// deduplicated store of all inputs would hold.
	UniqueBytes int64 `json:"unique-bytes"`
	// DuplicateBytes is the non-zero data that repeats a chunk counted
	// in UniqueBytes: what dedup would save. It is
	// InternalDuplicateBytes + CrossDuplicateBytes.
	DuplicateBytes int64 `json:"duplicate-bytes"`
	// InternalDuplicateBytes repeats a chunk of the same input.
	InternalDuplicateBytes int64 `json:"internal-duplicate-bytes"`
	// CrossDuplicateBytes repeats a chunk first seen in another input.
	CrossDuplicateBytes int64 `json:"cross-duplicate-bytes"`
	// SavedBytes is what dedup would save: DuplicateBytes.
	SavedBytes int64 `json:"saved-bytes"`
	// Chunks is the number of distinct non-zero chunks indexed, and
	// IndexBytes the estimated index memory: BytesPerIndexEntry per
	// chunk, or with the prefilter BytesPerWeakEntry per chunk plus
	// BytesPerIndexEntry per chunk that occurs more than once.
	Chunks     int64          `json:"chunks"`
	IndexBytes int64          `json:"index-bytes"`
	Inputs     []ImageFigures `json:"inputs"`
}

// ImageFigures are the figures of one image input. Inputs are counted in
// the order given: SharedBytes is data this input shares with the inputs
// before it, NewBytes what it adds to them.
type ImageFigures struct {
	Path       string `json:"path"`
	Format     string `json:"format"`
	ChainDepth int    `json:"chain-depth"`
	TotalBytes int64  `json:"total-bytes"`
	ZeroBytes  int64  `json:"zero-bytes"`
	// DataBytes is the non-zero content (TotalBytes - ZeroBytes).
	DataBytes int64 `json:"data-bytes"`
	// InternalDuplicateBytes repeats a chunk of this same input.
	InternalDuplicateBytes int64 `json:"internal-duplicate-bytes"`
	// SharedBytes is distinct content of this input already present in
	// an earlier input.
	SharedBytes int64 `json:"shared-bytes"`
	// NewBytes is distinct content seen in no earlier input.
	NewBytes int64 `json:"new-bytes"`
}

// Scan reads every input once and reports zero, unique and duplicate data.
// Paths are qcow2 or raw images (read through their backing chains) or OCI
// image layout directories. Images are read by parallel workers, one input
// after the other; memory is the index (BytesPerIndexEntry per distinct
// chunk) plus one 4 MiB buffer per worker.
func Scan(ctx context.Context, paths []string, opts ScanOptions) (*Report, error) {
	var imgs, lays []string
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("dedup: %w", err)
		}
		if st.IsDir() {
			if _, err := os.Stat(filepath.Join(p, "oci-layout")); err != nil {
				return nil, fmt.Errorf("dedup: %s: a directory but not an OCI image layout (no oci-layout file)", p)
			}
			lays = append(lays, p)
		} else {
			imgs = append(imgs, p)
		}
	}
	if len(paths) == 0 {
		return nil, errors.New("dedup: nothing to scan")
	}
	var total int64
	var opened []*qcow2.Image
	defer func() {
		for _, img := range opened {
			img.Close()
		}
	}()
	for _, p := range imgs {
		img, err := qcow2.Open(p, opts.Image)
		if err != nil {
			return nil, fmt.Errorf("dedup: %w", err)
		}
		opened = append(opened, img)
		if err := img.Readable(); err != nil {
			return nil, fmt.Errorf("dedup: %s: %w", p, err)
		}
		total += img.Size()
	}
	var layoutTotal int64
	var plan []*layoutLayer
	var nimages, nrefs int
	if len(lays) > 0 {
		var err error
		if plan, nimages, nrefs, err = layoutPlan(ctx, lays); err != nil {
			return nil, err
		}
		for _, ll := range plan {
			layoutTotal += ll.desc.Size
		}
	}
	prog := newProgress(opts.Progress, total+layoutTotal)
	rep := &Report{}
	if len(opened) > 0 {
		r, err := scanImages(ctx, opened, opts, prog)
		if err != nil {
			return nil, err
		}
		rep.Images = r
	}
	if len(lays) > 0 {
		r, err := scanLayouts(ctx, lays, plan, nimages, nrefs, opts, prog)
		if err != nil {
			return nil, err
		}
		rep.Layouts = r
	}
	return rep, nil
}

// progress adds up bytes done from several goroutines and calls fn with
// the running sum. Calls are serialised and done never decreases.
type progress struct {
	fn    func(done, total int64)
	total int64
	mu    sync.Mutex
	done  int64
}

func newProgress(fn func(done, total int64), total int64) *progress {
	return &progress{fn: fn, total: total}
}

func (p *progress) add(n int64) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done += n
	if p.fn != nil {
		p.fn(p.done, p.total)
	}
}

func (o *ScanOptions) workers() int {
	if o.Workers > 0 {
		return o.Workers
	}
	return runtime.GOMAXPROCS(0)
}

func (o *ScanOptions) maxChunks() int64 {
	switch {
	case o.MaxChunks < 0:
		return 0
	case o.MaxChunks == 0:
		return DefaultMaxChunks
	}
	return o.MaxChunks
}

// chunkSizeFor picks the chunk size for a set of images.
func chunkSizeFor(imgs []*qcow2.Image, want int64) (int64, error) {
	if want != 0 {
		if want < 4<<10 || want > 2<<20 || want&(want-1) != 0 {
			return 0, fmt.Errorf("dedup: chunk size %d is not a power of two from 4 KiB to 2 MiB", want)
		}
		return want, nil
	}
	cs := int64(0)
	for _, img := range imgs {
		cs = max(cs, img.ClusterSize())
	}
	if cs == 0 {
		cs = DefaultChunkSize
	}
	return max(cs, 4<<10), nil
}

func scanImages(ctx context.Context, imgs []*qcow2.Image, opts ScanOptions, prog *progress) (*ImageReport, error) {
	cs, err := chunkSizeFor(imgs, opts.ChunkSize)
	if err != nil {
		return nil, err
	}
	seg := max(int64(segmentSize), cs)
	ix := newChunkIndex(opts.maxChunks())
	var adder chunkAdder = strongAdder{ix}
	var pf *prefilter
	if !opts.NoPrefilter {
		// The strong index holds what occurs twice, the prefilter
		// everything: both are bounded by MaxChunks.
		pf = newPrefilter(imgs, ix, opts.maxChunks())
		adder = pf
	}
	rep := &ImageReport{ChunkSize: cs}
	bufs := sync.Pool{New: func() any { b := make([]byte, seg); return &b }}
	for i, img := range imgs {
		f := ImageFigures{Path: img.Path(), Format: string(img.Format()), TotalBytes: img.Size()}
		for d := 1; img.Layer(d) != nil; d++ {
			f.ChainDepth = d
		}
		var zeroB, internal, shared, fresh atomic.Int64
		// The segment buffers come from bufs, shared by all images,
		// rather than from parallelSegments' per-call ones.
		err := parallelSegments(ctx, img.Size(), seg, opts.workers(), func(off, n int64, _ *segBufs) error {
			bp := bufs.Get().(*[]byte)
			defer bufs.Put(bp)
			st, err := scanSegment(img, off, n, cs, (*bp)[:n], adder, int32(i))
			if err != nil {
				return err
			}
			zeroB.Add(st.zero)
			internal.Add(st.internal)
			shared.Add(st.shared)
			fresh.Add(st.fresh)
			prog.add(n)
			return nil
		})
		if err != nil {
			return nil, err
		}
		f.ZeroBytes = zeroB.Load()
		f.DataBytes = f.TotalBytes - f.ZeroBytes
		f.InternalDuplicateBytes = internal.Load()
		f.SharedBytes = shared.Load()
		f.NewBytes = fresh.Load()
		rep.Inputs = append(rep.Inputs, f)
		rep.TotalBytes += f.TotalBytes
		rep.ZeroBytes += f.ZeroBytes
		rep.UniqueBytes += f.NewBytes
		rep.InternalDuplicateBytes += f.InternalDuplicateBytes
		rep.CrossDuplicateBytes += f.SharedBytes
	}
	rep.DuplicateBytes = rep.InternalDuplicateBytes + rep.CrossDuplicateBytes
	rep.SavedBytes = rep.DuplicateBytes
	rep.Chunks = ix.len()
	rep.IndexBytes = rep.Chunks * BytesPerIndexEntry
	if pf != nil {
		rep.Chunks, rep.IndexBytes = pf.stats()
	}
	return rep, nil
}

type segStats struct{ zero, internal, shared, fresh int64 }

// scanSegment hashes the chunks of [off, off+n) of img. Chunks the
// metadata shows as zero or unallocated are not read.
func scanSegment(img *qcow2.Image, off, n, cs int64, buf []byte, ix chunkAdder, in int32) (segStats, error) {
	var st segStats
	nchunks := (n + cs - 1) / cs
	// needRead[k] says chunk k holds some data according to the metadata.
	var needArr [segmentSize / (4 << 10)]bool
	need := needArr[:0]
	if int(nchunks) <= len(needArr) {
		need = needArr[:nchunks]
	} else {
		need = make([]bool, nchunks)
	}
	err := img.WalkExtents(off, n, func(e qcow2.Extent) error {
		if e.Kind == qcow2.KindData || e.Kind == qcow2.KindCompressed {
			first := (e.Start - off) / cs
			last := (e.Start + e.Length - 1 - off) / cs
			for k := first; k <= last; k++ {
				need[k] = true
			}
		}
		return nil
	})
	if err != nil {
		return st, fmt.Errorf("dedup: %s: %w", img.Path(), err)
	}
	for k := int64(0); k < nchunks; {
		if !need[k] {
			st.zero += min(cs, n-k*cs)
			k++
			continue
		}
		// One ReadAt for the run of chunks that need reading.
		j := k
		for j < nchunks && need[j] {
			j++
		}
		lo, hi := k*cs, min(j*cs, n)
		if _, err := img.ReadAt(buf[lo:hi], off+lo); err != nil {
			return st, fmt.Errorf("dedup: %s: read at %d: %w", img.Path(), off+lo, err)
		}
		for c := lo; c < hi; c += cs {
			chunk := buf[c:min(c+cs, hi)]
			if zero.Is(chunk) {
				st.zero += int64(len(chunk))
				continue
			}
			s, err := ix.add(chunk, in, off+c)
			if err != nil {
				return st, err
			}
			switch s {
			case seenNew:
				st.fresh += int64(len(chunk))
			case seenEarlier:
				st.shared += int64(len(chunk))
			case seenInternal:
				st.internal += int64(len(chunk))
			}
		}
		k = j
	}
	return st, nil
}
