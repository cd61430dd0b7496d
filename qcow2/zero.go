package qcow2

import "fmt"

// WriteZeroes makes the n bytes at guest offset off read as zeros. Whole
// clusters (subclusters with extended L2) are not written: version 3
// images mark them with the zero flag and free their host clusters;
// version 2 images unallocate them when no backing file shows through,
// and otherwise get real zeros written, as QEMU does. Partial clusters
// get zeros written.
//
// It waits for and excludes concurrent writes (it frees clusters an
// in-place write could be using). A read racing with it over the same
// range may see the old or the new content.
func (img *Image) WriteZeroes(off, n int64) error {
	return img.zeroOrDiscard(off, n, false)
}

// Discard tells the image the n bytes at off are no longer needed. Whole
// clusters in the range are freed; partial clusters are left alone. The
// discarded range reads as zeros, except on version 2 images with a
// backing file, where it reads as the backing file again (QEMU's
// behaviour: version 2 has no zero flag).
func (img *Image) Discard(off, n int64) error {
	return img.zeroOrDiscard(off, n, true)
}

func (img *Image) zeroOrDiscard(off, n int64, discard bool) error {
	if img.rw != nil {
		return img.rw.zeroOrDiscard(img, off, n, discard)
	}
	w := img.w
	if w == nil {
		return fmt.Errorf("%w: %s", ErrReadOnly, img.path)
	}
	if off < 0 || n < 0 || off > img.size || n > img.size-off {
		return fmt.Errorf("qcow2: %s: range %d+%d is outside the image (%d bytes)", img.path, off, n, img.size)
	}
	w.ops.Lock()
	defer w.ops.Unlock()
	if err := w.usable(); err != nil {
		return err
	}
	unit := w.cs()
	if img.extL2 && !discard {
		unit = w.scSize()
	}
	end := off + n
	// A range ending at the end of the image covers its last, partial,
	// unit.
	alignedEnd := end &^ (unit - 1)
	if end == img.size {
		alignedEnd = (end + unit - 1) &^ (unit - 1)
	}
	alignedStart := (off + unit - 1) &^ (unit - 1)
	if alignedStart >= alignedEnd {
		if !discard {
			return w.writeZeroBytes(off, n)
		}
		return nil
	}
	if !discard {
		if err := w.writeZeroBytes(off, alignedStart-off); err != nil {
			return err
		}
		if alignedEnd < end {
			if err := w.writeZeroBytes(alignedEnd, end-alignedEnd); err != nil {
				return err
			}
		}
	}
	for pos := alignedStart; pos < alignedEnd; {
		vc := pos >> w.cb()
		cstart := vc << w.cb()
		cend := min(cstart+w.cs(), alignedEnd)
		if err := w.zeroCluster(vc, pos-cstart, cend-cstart, discard); err != nil {
			return err
		}
		pos = cend
	}
	return nil
}

// writeZeroBytes writes real zeros. ops is held.
func (w *writer) writeZeroBytes(off, n int64) error {
	if n <= 0 {
		return nil
	}
	if w.zeroBuf == nil {
		w.zeroBuf = make([]byte, max(w.cs(), 64<<10))
	}
	for n > 0 {
		k := min(n, int64(len(w.zeroBuf)), w.img.size-off)
		if k <= 0 {
			return nil
		}
		if _, err := w.writeRange(w.zeroBuf[:k], off); err != nil {
			return err
		}
		off += k
		n -= k
	}
	return nil
}

// hasBackingAt reports whether a backing file shows through at guest
// offset off.
func (w *writer) hasBackingAt(off int64) bool {
	img := w.img
	if img.hdr.BackingFile == "" {
		return false
	}
	if img.backing == nil {
		return true // not opened: assume it does
	}
	return off < img.backing.size
}

// zeroCluster zeroes (or discards) bytes [from, to) of guest cluster vc;
// the range is whole clusters, or whole subclusters with extended L2.
// ops is held exclusively.
func (w *writer) zeroCluster(vc, from, to int64, discard bool) error {
	img := w.img
	whole := from == 0 && to >= min(w.cs(), img.size-vc<<w.cb())
	w.mu.Lock()
	defer w.mu.Unlock()
	entry, bitmap, err := w.entry(vc)
	if err != nil {
		return err
	}
	host := entry.host()
	compressed := entry.compressed()
	allocated := compressed || host != 0
	backing := w.hasBackingAt(vc << w.cb())
	var newEntry l2Entry
	var newBitmap uint64
	free := false
	switch {
	case discard && !backing && !allocated && (!img.extL2 || bitmap == 0):
		return nil // already reads as zeros and holds nothing
	case !img.extL2:
		if !whole {
			return nil // only discards get here with partial clusters
		}
		if img.hdr.Version < 3 && backing && !discard {
			w.mu.Unlock()
			err := w.writeZeroBytes(vc<<w.cb(), to-from)
			w.mu.Lock()
			return err
		}
		if img.hdr.Version >= 3 && (backing || discard) {
			newEntry = entryZero
		}
		if !discard && img.hdr.Version >= 3 && !backing && entry == entryZero {
			return nil
		}
		free = allocated
	case whole:
		newBitmap = bitmapAllocMask << 32
		free = allocated
	default:
		// Some subclusters of an extended L2 cluster.
		if compressed {
			w.mu.Unlock()
			err := w.writeZeroBytes(vc<<w.cb()+from, to-from)
			w.mu.Lock()
			return err
		}
		var mask uint64
		for sc := from >> img.scBits; sc < (to+w.scSize()-1)>>img.scBits; sc++ {
			mask |= 1 << sc
		}
		newEntry = entry
		newBitmap = bitmap&^mask | mask<<32
		if host != 0 && !entry.copied() {
			// A shared cluster's bitmap cannot change in place: the
			// remaining subclusters keep pointing at it through a new
			// L2 entry, which is fine as the refcount counts entries.
			newEntry = entry
		}
	}
	if newEntry == entry && newBitmap == bitmap {
		return nil
	}
	if err := w.beforeAlloc(); err != nil {
		return err
	}
	if err := w.setEntry(vc, newEntry, newBitmap); err != nil {
		return w.fail(err)
	}
	if free {
		w.freeEntry(entry)
	}
	return w.maybeFlush()
}
