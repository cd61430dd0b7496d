package overlay

import (
	"bytes"
	"context"
	"fmt"
	"io"

	"github.com/imgtool/imgtool/qcow2"
)

// The cluster copies behind chain init (copy a base into a new image),
// add --import (store only what differs from the parent) and squash
// (commit a level into its parent). They work through the qcow2 package's
// public read and write API (ReadAt, WriteAt, WriteZeroes, Extents), so
// every write goes through its crash-safe allocation path.

// copyChunk is the unit copyDiff reads at a time; it is raised to the
// cluster size of the target when that is larger.
const copyChunk = 1 << 20

// copyDiff makes the guest content of dst equal to that of src over
// [0, src.Size()), writing only the clusters (of dst's cluster size)
// whose content differs from what dst shows now, that is from what its
// backing levels show. A differing cluster that src has all zeros
// becomes a zero cluster (no data stored); the others are written whole.
// Ranges that neither image stores data for (unallocated or zero in both
// chains) are skipped without reading. dst must be writable and at least
// as large as src. progress, if set, gets the guest bytes done and
// src.Size(), from this goroutine.
func copyDiff(ctx context.Context, dst, src *qcow2.Image, progress func(done, total int64)) error {
	size := src.Size()
	if dst.Size() < size {
		return fmt.Errorf("overlay: %s (%d bytes) is smaller than %s (%d bytes)", dst.Path(), dst.Size(), src.Path(), size)
	}
	if err := src.Readable(); err != nil {
		return err
	}
	cs := dst.ClusterSize()
	chunk := max(int64(copyChunk), cs)
	a := make([]byte, chunk)
	b := make([]byte, chunk)
	for off := int64(0); off < size; off += chunk {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(chunk, size-off)
		skip, err := noData(src, off, n)
		if err == nil && skip {
			skip, err = noData(dst, off, n)
		}
		if err != nil {
			return err
		}
		if !skip {
			if err := diffChunk(dst, src, off, a[:n], b[:n], cs); err != nil {
				return err
			}
		}
		if progress != nil {
			progress(off+n, size)
		}
	}
	return nil
}

// diffChunk compares src and dst over [off, off+len(a)) cluster by
// cluster and writes src's content into dst where they differ.
func diffChunk(dst, src *qcow2.Image, off int64, a, b []byte, cs int64) error {
	if _, err := src.ReadAt(a, off); err != nil && err != io.EOF {
		return fmt.Errorf("overlay: reading %s at %d: %w", src.Path(), off, err)
	}
	if _, err := dst.ReadAt(b, off); err != nil && err != io.EOF {
		return fmt.Errorf("overlay: reading %s at %d: %w", dst.Path(), off, err)
	}
	for i := int64(0); i < int64(len(a)); i += cs {
		j := min(i+cs, int64(len(a)))
		if bytes.Equal(a[i:j], b[i:j]) {
			continue
		}
		if allZero(a[i:j]) {
			if err := dst.WriteZeroes(off+i, j-i); err != nil {
				return fmt.Errorf("overlay: writing %s at %d: %w", dst.Path(), off+i, err)
			}
			continue
		}
		if _, err := dst.WriteAt(a[i:j], off+i); err != nil {
			return fmt.Errorf("overlay: writing %s at %d: %w", dst.Path(), off+i, err)
		}
	}
	return nil
}

// noData reports whether img's chain stores no data for [off, off+n):
// every run is unallocated or a zero run, so it reads as zeros.
func noData(img *qcow2.Image, off, n int64) (bool, error) {
	if off >= img.Size() {
		return true, nil
	}
	none := true
	err := img.WalkExtents(off, n, func(e qcow2.Extent) error {
		if e.Kind == qcow2.KindData || e.Kind == qcow2.KindCompressed {
			none = false
			return errStopWalk
		}
		return nil
	})
	if err == errStopWalk {
		err = nil
	}
	if err != nil {
		return false, fmt.Errorf("overlay: mapping %s: %w", img.Path(), err)
	}
	return none, nil
}

// errStopWalk ends a WalkExtents early; it never leaves this file.
var errStopWalk = fmt.Errorf("overlay: stop walk")

func allZero(p []byte) bool {
	for len(p) >= 8 {
		if p[0]|p[1]|p[2]|p[3]|p[4]|p[5]|p[6]|p[7] != 0 {
			return false
		}
		p = p[8:]
	}
	for _, v := range p {
		if v != 0 {
			return false
		}
	}
	return true
}

// commitTop copies what top stores in its own file (data, compressed and
// zero runs at depth 0) into dst at the same guest offsets, so that dst
// then shows what top showed over top's size (qemu-img commit). top may
// be opened with or without its backing chain; only its own runs are
// read. dst is grown to top's size first if it is smaller, with the new
// range zeroed so that a larger backing file below dst does not show
// through. progress gets the bytes copied and the total top stores.
func commitTop(ctx context.Context, dst, top *qcow2.Image, progress func(done, total int64)) error {
	if err := top.Readable(); err != nil {
		return err
	}
	var runs []qcow2.Extent
	var total int64
	err := top.WalkExtents(0, top.Size(), func(e qcow2.Extent) error {
		if e.Depth == 0 && e.Present() {
			runs = append(runs, e)
			total += e.Length
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("overlay: mapping %s: %w", top.Path(), err)
	}
	if old := dst.Size(); old < top.Size() {
		if err := dst.Resize(top.Size(), false); err != nil {
			return fmt.Errorf("overlay: growing %s: %w", dst.Path(), err)
		}
		if dst.Backing() != nil || dst.Header().BackingFile != "" {
			if err := dst.WriteZeroes(old, top.Size()-old); err != nil {
				return fmt.Errorf("overlay: zeroing the grown range of %s: %w", dst.Path(), err)
			}
		}
	}
	buf := make([]byte, copyChunk)
	var done int64
	for _, e := range runs {
		if e.Kind == qcow2.KindZero {
			if err := dst.WriteZeroes(e.Start, e.Length); err != nil {
				return fmt.Errorf("overlay: writing %s at %d: %w", dst.Path(), e.Start, err)
			}
			done += e.Length
			if progress != nil {
				progress(done, total)
			}
			continue
		}
		for off := e.Start; off < e.Start+e.Length; {
			if err := ctx.Err(); err != nil {
				return err
			}
			n := min(int64(len(buf)), e.Start+e.Length-off)
			if _, err := top.ReadAt(buf[:n], off); err != nil && err != io.EOF {
				return fmt.Errorf("overlay: reading %s at %d: %w", top.Path(), off, err)
			}
			if _, err := dst.WriteAt(buf[:n], off); err != nil {
				return fmt.Errorf("overlay: writing %s at %d: %w", dst.Path(), off, err)
			}
			off += n
			done += n
			if progress != nil {
				progress(done, total)
			}
		}
	}
	return nil
}
