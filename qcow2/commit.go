package qcow2

import (
	"context"
	"errors"
	"fmt"
	"os"
)

// CommitOptions configures Commit. The zero value commits the top image
// into its backing file and then empties the top, as `qemu-img commit`
// does, with twice GOMAXPROCS workers and no progress reporting.
type CommitOptions struct {
	// Base names the image of the backing chain to commit into (qemu-img
	// commit -b); "" means the top image's backing file. A name is
	// matched, as a file, against the images of the chain: as given
	// (relative to the working directory) or relative to the top
	// image's directory. As in qemu-img, giving Base implies Drop: images between
	// the top and Base no longer read correctly afterwards, and the top
	// keeps its data so that it stays valid.
	Base string
	// Drop leaves the top image unchanged (qemu-img commit -d). By
	// default its clusters are discarded once the base holds the data,
	// so that it reads through to the base again.
	Drop bool
	// Workers is the number of goroutines copying data. 0 means
	// twice runtime.GOMAXPROCS(0).
	Workers int
	// Progress, if set, is called with the guest bytes processed so far
	// and the total. Calls are serialised and done never decreases.
	Progress func(done, total int64)
	// Cache is the -t mode of the writes to the base and the top
	// (qemu-img commit -t); "" is CacheWriteback.
	Cache CacheMode
	// CheckReference, if set, vets every backing reference of the chain
	// before it is opened (see Options.CheckReference and ConfineTo).
	CheckReference func(Reference) error
}

// Commit merges the content of the qcow2 image at path (and of the
// images between it and the base) into the base image of its backing
// chain.
//
// Order, so that an interruption never loses data and leaves every image
// consistent: the base is written and flushed first (while the top still
// holds the same data, so the chain reads the same at every moment);
// only then is the top emptied, through its own crash-safe metadata
// updates. The top and the base are opened with QEMU's writer lock, so
// Commit refuses images a running QEMU (or another imgtool) uses.
func Commit(ctx context.Context, path string, opts CommitOptions) error {
	var err error
	if opts.Workers, err = workerCount("commit", path, opts.Workers); err != nil {
		return err
	}
	if err := opts.Cache.valid(); err != nil {
		return err
	}
	drop := opts.Drop || opts.Base != ""
	// The top, locked: as a writer when it will be emptied, else as a
	// reader (refusing writers while its data is copied).
	lock, err := Open(path, Options{NoBacking: true, Writable: !drop, cache: opts.Cache})
	if err != nil {
		return err // names the file already
	}
	defer lock.Close()
	if lock.Format() != FormatQcow2 || lock.Header().BackingFile == "" {
		return fmt.Errorf("%w: %s", ErrNoBacking, path)
	}
	// The chain as the guest sees it, read without locks (the base is
	// locked for writing below, and its writer would conflict with a
	// reader lock of this process).
	chain, err := Open(path, Options{ForceShare: true, CheckReference: opts.CheckReference})
	if err != nil {
		return err
	}
	defer chain.Close()
	if err := chain.Readable(); err != nil {
		return err
	}
	depth, err := commitBaseDepth(chain, opts.Base)
	if err != nil {
		return fmt.Errorf("qcow2: commit %s: %w", path, err)
	}
	baseImg := chain.Layer(depth)
	tgt, err := openCommitTarget(baseImg, opts.Cache)
	if err != nil {
		return fmt.Errorf("qcow2: commit %s: %w", path, err)
	}
	closed := false
	defer func() {
		if !closed {
			tgt.Close()
		}
	}()
	size := chain.Size()
	if tgt.Size() < size {
		if err := tgt.Resize(size); err != nil {
			return fmt.Errorf("qcow2: commit %s: growing the base: %w", path, err)
		}
	}
	if err := copyAbove(ctx, chain, depth, tgt, opts.Workers, opts.Progress); err != nil {
		return fmt.Errorf("qcow2: commit %s: %w", path, err)
	}
	if err := tgt.Flush(); err != nil {
		return fmt.Errorf("qcow2: commit %s: %w", path, err)
	}
	closed = true
	if err := tgt.Close(); err != nil {
		return fmt.Errorf("qcow2: commit %s: %w", path, err)
	}
	if drop {
		return nil
	}
	if err := lock.w.makeEmpty(ctx); err != nil {
		return fmt.Errorf("qcow2: commit %s: emptying the top image: %w", path, err)
	}
	return lock.Close()
}

// commitBaseDepth finds the chain position of the base named base (""
// is the backing file of the top).
func commitBaseDepth(chain *Image, base string) (int, error) {
	if base == "" {
		if chain.Backing() == nil {
			return 0, ErrNoBacking
		}
		return 1, nil
	}
	// The name as given (relative to the working directory), else as a
	// backing name is resolved (relative to the top image's directory).
	var want []os.FileInfo
	for _, p := range []string{base, combinePath(chain.Path(), base)} {
		if fi, err := os.Stat(p); err == nil {
			want = append(want, fi)
		}
	}
	for d, l := 1, chain.Backing(); l != nil; d, l = d+1, l.Backing() {
		if l.Path() == base {
			return d, nil
		}
		li, err := os.Stat(l.Path())
		if err != nil {
			continue
		}
		for _, fi := range want {
			if os.SameFile(fi, li) {
				return d, nil
			}
		}
	}
	return 0, fmt.Errorf("%q is not in the backing chain", base)
}

// commitTarget is the image a commit or rebase writes into.
type commitTarget interface {
	WriteAt(p []byte, off int64) (int, error)
	WriteZeroes(off, n int64) error
	Size() int64
	Resize(size int64) error
	Flush() error
	Close() error
}

// openCommitTarget opens the file of chain layer l for writing with
// QEMU's writer lock: a qcow2 base with its own backing chain (for
// copy-on-write of partial clusters), a raw base directly.
func openCommitTarget(l *Image, cache CacheMode) (commitTarget, error) {
	img, err := Open(l.Path(), Options{Format: l.Format(), Writable: true, cache: cache})
	if err != nil {
		return nil, err
	}
	return qcowTarget{img}, nil
}

// qcowTarget is a writable Image (qcow2 or raw) whose Resize only grows.
type qcowTarget struct{ *Image }

func (t qcowTarget) Resize(size int64) error { return t.Image.Resize(size, false) }

// copyJob is a guest range for a copy worker.
type copyJob struct {
	off, n int64
	zero   bool
}

// copyAbove writes into tgt the guest content of every range that an
// image above chain position depth decides, with parallel workers.
func copyAbove(ctx context.Context, chain *Image, depth int, tgt commitTarget, workers int, progress func(done, total int64)) error {
	return copyRanges(ctx, chain, tgt, workers, progress, func(e Extent) (bool, bool) {
		if e.Kind == KindUnallocated || e.Depth >= depth {
			return false, false
		}
		return true, e.Kind == KindZero
	})
}

// copyRanges walks the extents of src and, for each one pick selects,
// writes its guest content (or zeroes, when pick says so) to tgt.
func copyRanges(ctx context.Context, src *Image, tgt commitTarget, workers int, progress func(done, total int64), pick func(Extent) (sel, zero bool)) error {
	size := src.Size()
	const unit = 1 << 20
	advance := newProgressMeter(progress, size).add
	worker := func() func(copyJob) error {
		buf := make([]byte, unit)
		return func(j copyJob) error {
			if j.zero {
				if err := tgt.WriteZeroes(j.off, j.n); err != nil {
					return err
				}
				advance(j.n)
				return nil
			}
			b := buf[:j.n]
			if err := readGuestAt(src, b, j.off); err != nil {
				return err
			}
			if _, err := tgt.WriteAt(b, j.off); err != nil {
				return err
			}
			advance(j.n)
			return nil
		}
	}
	return runPool(ctx, workers, worker, func(ctx context.Context, emit func(copyJob) error) error {
		return src.WalkExtents(0, size, func(e Extent) error {
			sel, zero := pick(e)
			if !sel {
				advance(e.Length)
				return nil
			}
			for off, end := e.Start, e.Start+e.Length; off < end; {
				next := min(end, (off/unit+1)*unit)
				if zero {
					next = end
				}
				if err := emit(copyJob{off, next - off, zero}); err != nil {
					return err
				}
				off = next
			}
			return nil
		})
	})
}

// makeEmpty unallocates every cluster of the image, so that it reads
// through to its backing file (QEMU's make_empty), and flushes. L2
// entries are cleared first; the clusters are freed by the flush once
// the tables are on disk.
func (w *writer) makeEmpty(ctx context.Context) error {
	img := w.img
	w.lockAll()
	defer w.unlockAll()
	if err := w.refusal(); err != nil {
		return err
	}
	for l1i := range img.l1Len() {
		if err := ctx.Err(); err != nil {
			return errors.Join(err, w.flushLocked())
		}
		if img.l1Get(l1i).l2Offset() == 0 {
			continue
		}
		t, err := w.writableL2(l1i)
		if err != nil {
			return w.fail(err)
		}
		changed := false
		for k := int64(0); k < int64(len(t.entries)); k += w.entryWords() {
			e := l2Entry(t.entries[k])
			var bm uint64
			if img.extL2 {
				bm = t.entries[k+1]
			}
			if e == 0 && bm == 0 {
				continue
			}
			w.freeEntry(e &^ entryZero)
			t.entries[k] = 0
			if img.extL2 {
				t.entries[k+1] = 0
			}
			changed = true
		}
		if changed {
			w.publishL2(l1i, t)
			if err := w.maybeFlush(); err != nil {
				return err
			}
		}
	}
	return w.flushLocked()
}
