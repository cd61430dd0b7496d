package dedup

import (
	"bytes"
	"context"
	"fmt"
	"sync"

	"github.com/imgtool/imgtool/internal/atomicfile"
	"github.com/imgtool/imgtool/internal/zero"
	"github.com/imgtool/imgtool/qcow2"
)

// rewriteSpec says how to rewrite one image as an overlay.
type rewriteSpec struct {
	src  *qcow2.Image // the content to keep (read through its chain)
	dst  string       // the path to replace
	opts qcow2.CreateOptions
	// open opens images (ForceShare).
	open    qcow2.Options
	workers int
	prog    *progress
}

// rewriteStats counts what a rewrite stored.
type rewriteStats struct {
	DataBytes int64 // guest bytes written as data clusters
	ZeroBytes int64 // guest bytes marked as zero over a non-zero backing
}

// rewrite writes the guest content of s.src into a new qcow2 image created
// with s.opts (normally with a backing file), storing only the clusters
// whose content differs from what the backing shows: equal clusters stay
// unallocated, clusters that read as zeros over a non-zero backing become
// zero clusters (real zeros on version 2). The new image is written under a
// temporary name next to dst, read back and compared with s.src, and only
// then renamed over dst.
func rewrite(ctx context.Context, s rewriteSpec) (rewriteStats, error) {
	var st rewriteStats
	opts := s.opts
	opts.Size = s.src.Size()
	// s.src is dst itself, open and locked by this process: no second
	// lock. The temp file is named, in dst's directory, so the new
	// image's relative backing name resolves from it.
	af, err := atomicfile.Create(s.dst, atomicfile.Options{Named: true, NoLock: true})
	if err != nil {
		return st, fmt.Errorf("dedup: %w", err)
	}
	defer af.Abort()
	tmp := af.TempPath()
	if err := qcow2.CreateFile(af.File, s.dst, opts); err != nil {
		return st, fmt.Errorf("dedup: %w", err)
	}
	wo := s.open
	wo.Writable = true
	wo.Format = qcow2.FormatQcow2
	out, err := qcow2.Open(tmp, wo)
	if err != nil {
		return st, fmt.Errorf("dedup: %w", err)
	}
	st, err = fillOverlay(ctx, s.src, out, s.workers, s.prog)
	if cerr := out.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("dedup: %s: %w", tmp, cerr)
	}
	if err != nil {
		return st, err
	}
	ro := s.open
	ro.Format = qcow2.FormatQcow2
	check, err := qcow2.Open(tmp, ro)
	if err != nil {
		return st, fmt.Errorf("dedup: %w", err)
	}
	err = compareImages(ctx, s.src, check, s.workers)
	check.Close()
	if err != nil {
		return st, err
	}
	if err := af.Commit(); err != nil {
		return st, fmt.Errorf("dedup: %w", err)
	}
	return st, nil
}

// fillOverlay copies into out (whose backing chain is already open) the
// clusters of src that differ from out's backing.
func fillOverlay(ctx context.Context, src, out *qcow2.Image, workers int, prog *progress) (rewriteStats, error) {
	cs := out.ClusterSize()
	seg := max(int64(segmentSize), cs)
	backing := out.Backing()
	var mu sync.Mutex
	var st rewriteStats
	err := parallelSegments(ctx, src.Size(), seg, workers, func(off, n int64, bufs *segBufs) error {
		a, b := bufs.get(0, n), bufs.get(1, n)
		if _, err := src.ReadAt(a, off); err != nil {
			return fmt.Errorf("dedup: %s: read at %d: %w", src.Path(), off, err)
		}
		if backing != nil {
			if err := readPadded(backing, b, off); err != nil {
				return err
			}
		} else {
			clear(b)
		}
		var local rewriteStats
		// Runs of clusters to write as data, flushed as one WriteAt.
		runStart := int64(-1)
		flush := func(end int64) error {
			if runStart < 0 {
				return nil
			}
			if _, err := out.WriteAt(a[runStart:end], off+runStart); err != nil {
				return fmt.Errorf("dedup: %s: write at %d: %w", out.Path(), off+runStart, err)
			}
			local.DataBytes += end - runStart
			runStart = -1
			return nil
		}
		for c := int64(0); c < n; c += cs {
			end := min(c+cs, n)
			ca, cb := a[c:end], b[c:end]
			if bytes.Equal(ca, cb) {
				if err := flush(c); err != nil {
					return err
				}
				continue
			}
			if zero.Is(ca) {
				if err := flush(c); err != nil {
					return err
				}
				if err := out.WriteZeroes(off+c, end-c); err != nil {
					return fmt.Errorf("dedup: %s: write zeroes at %d: %w", out.Path(), off+c, err)
				}
				local.ZeroBytes += end - c
				continue
			}
			if runStart < 0 {
				runStart = c
			}
		}
		if err := flush(n); err != nil {
			return err
		}
		mu.Lock()
		st.DataBytes += local.DataBytes
		st.ZeroBytes += local.ZeroBytes
		mu.Unlock()
		prog.add(n)
		return nil
	})
	if err != nil {
		return st, err
	}
	if err := out.Flush(); err != nil {
		return st, fmt.Errorf("dedup: %s: %w", out.Path(), err)
	}
	return st, nil
}

// readPadded reads len(p) bytes of img at off; bytes past img's size read
// as zeros (a backing file shorter than its overlay).
func readPadded(img *qcow2.Image, p []byte, off int64) error {
	clear(p)
	if off >= img.Size() {
		return nil
	}
	n := min(int64(len(p)), img.Size()-off)
	if _, err := img.ReadAt(p[:n], off); err != nil {
		return fmt.Errorf("dedup: %s: read at %d: %w", img.Path(), off, err)
	}
	return nil
}

// compareImages reads a and b in parallel and fails with ErrVerify at the
// first differing segment.
func compareImages(ctx context.Context, a, b *qcow2.Image, workers int) error {
	if a.Size() != b.Size() {
		return fmt.Errorf("%w: %s is %d bytes, %s is %d", ErrVerify, b.Path(), b.Size(), a.Path(), a.Size())
	}
	return parallelSegments(ctx, a.Size(), segmentSize, workers, func(off, n int64, bufs *segBufs) error {
		x, y := bufs.get(0, n), bufs.get(1, n)
		if _, err := a.ReadAt(x, off); err != nil {
			return fmt.Errorf("dedup: %s: read at %d: %w", a.Path(), off, err)
		}
		if _, err := b.ReadAt(y, off); err != nil {
			return fmt.Errorf("dedup: %s: read at %d: %w", b.Path(), off, err)
		}
		if !bytes.Equal(x, y) {
			i := 0
			for x[i] == y[i] {
				i++
			}
			return fmt.Errorf("%w: %s and %s differ at offset %d", ErrVerify, b.Path(), a.Path(), off+int64(i))
		}
		return nil
	})
}

// segBufs holds a worker's buffers, one per slot, grown on demand.
type segBufs struct{ b [][]byte }

func (s *segBufs) get(i int, n int64) []byte {
	for len(s.b) <= i {
		s.b = append(s.b, nil)
	}
	if int64(cap(s.b[i])) < n {
		s.b[i] = make([]byte, n)
	}
	return s.b[i][:n]
}

// parallelSegments calls fn for each segment [off, off+n) of [0, size) from
// workers goroutines (0 means GOMAXPROCS), each with its own buffers. It
// stops at the first error or when ctx is done.
func parallelSegments(ctx context.Context, size, seg int64, workers int, fn func(off, n int64, bufs *segBufs) error) error {
	if workers <= 0 {
		workers = (&ScanOptions{}).workers()
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	work := make(chan int64)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var bufs segBufs
			for off := range work {
				if ctx.Err() != nil {
					continue
				}
				if err := fn(off, min(seg, size-off), &bufs); err != nil {
					cancel(err)
				}
			}
		}()
	}
feed:
	for off := int64(0); off < size; off += seg {
		select {
		case work <- off:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	return context.Cause(ctx)
}
