package qcow2

import (
	"encoding/binary"
	"fmt"
	"slices"
)

// Flush makes every write that completed before it durable, in QEMU's
// order so that a crash at any point can only leak clusters:
//
//  1. the data is synced;
//  2. refcount blocks, then the refcount table, then (after a move of the
//     table) the header reach the disk, each step synced;
//  3. L2 tables are written and synced, then the L1 table;
//  4. only then refcounts of clusters no longer used are lowered, and
//     written.
//
// With lazy refcounts, step 2 and 4 are left to Close; the dirty bit
// (set before the first allocation) makes the next writable open rebuild
// them. Safe for concurrent use.
func (img *Image) Flush() error {
	if img.rw != nil {
		return img.rw.flush()
	}
	w := img.w
	if w == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return ErrClosed
	}
	return w.flushLocked()
}

func (w *writer) sync() error {
	if err := w.st.Sync(); err != nil {
		return fmt.Errorf("qcow2: syncing %s: %w", w.path, err)
	}
	return nil
}

// flushLocked runs the flush with mu held. No L2 update can run
// concurrently, and every L2 entry in memory points at data whose write
// completed before the entry was set.
func (w *writer) flushLocked() error {
	if w.err != nil {
		return w.err
	}
	if !w.dataWritten && len(w.dirtyL2) == 0 && !w.l1Dirty && len(w.frees) == 0 && (w.lazy || !w.rc.dirty()) {
		return nil
	}
	if err := w.sync(); err != nil {
		return w.fail(err)
	}
	w.dataWritten = false
	if !w.lazy {
		if err := w.writeRefcounts(); err != nil {
			return w.fail(err)
		}
	}
	if err := w.writeL2L1(); err != nil {
		return w.fail(err)
	}
	if len(w.frees) > 0 {
		frees := w.frees
		w.frees = nil
		for _, c := range frees {
			if _, err := w.rc.add(c, -1); err != nil {
				return w.fail(err)
			}
		}
		if !w.lazy {
			if err := w.writeRefcounts(); err != nil {
				return w.fail(err)
			}
		}
	}
	return nil
}

// writeRefcounts writes dirty refcount blocks, then the table, then the
// header if the table moved, syncing after each step.
func (w *writer) writeRefcounts() error {
	rc := w.rc
	wrote, err := rc.writeBlocks()
	if err != nil {
		return err
	}
	if wrote {
		if err := w.sync(); err != nil {
			return err
		}
	}
	if wrote, err = rc.writeTable(); err != nil {
		return err
	}
	if wrote {
		if err := w.sync(); err != nil {
			return err
		}
	}
	if rc.tableMoved {
		h := w.img.hdr
		h.RefcountTableOffset = uint64(rc.tableOff)
		h.RefcountTableClusters = uint32(rc.tableClusters())
		if err := w.writeHeader(); err != nil {
			return err
		}
		if err := w.sync(); err != nil {
			return err
		}
		rc.tableMoved = false
		old := rc.oldTableOff >> w.cb()
		w.meta.remove(old, rc.oldTableClusters)
		for c := old; c < old+rc.oldTableClusters; c++ {
			if _, err := rc.add(c, -1); err != nil {
				return err
			}
		}
		// Lowering those refcounts dirtied blocks again.
		if _, err := rc.writeBlocks(); err != nil {
			return err
		}
		if err := w.sync(); err != nil {
			return err
		}
	}
	return nil
}

// writeL2L1 writes the dirty L2 tables, syncs, then the L1 table.
func (w *writer) writeL2L1() error {
	img := w.img
	if len(w.dirtyL2) > 0 {
		keys := make([]int64, 0, len(w.dirtyL2))
		for k := range w.dirtyL2 {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		buf := make([]byte, w.cs())
		for _, l1i := range keys {
			t := w.dirtyL2[l1i]
			off := img.l1Get(l1i).l2Offset()
			for i, e := range t.entries {
				binary.BigEndian.PutUint64(buf[i*8:], e)
			}
			if err := w.meta.check(off, w.cs(), metaL2); err != nil {
				return err
			}
			if err := writeFull(w.st, buf, off); err != nil {
				return fmt.Errorf("qcow2: writing L2 table of %s at %#x: %w", w.path, off, err)
			}
		}
		if err := w.sync(); err != nil {
			return err
		}
		img.l2.bump()
		for _, l1i := range keys {
			w.dirtyL2[l1i].dirty.Store(false)
			delete(w.dirtyL2, l1i)
		}
		w.growFileSize()
	}
	if w.l1Dirty {
		if err := w.writeL1(); err != nil {
			return err
		}
		if err := w.sync(); err != nil {
			return err
		}
		w.l1Dirty = false
	}
	return nil
}

// writeL1 writes the whole active L1 table.
func (w *writer) writeL1() error {
	img := w.img
	n := img.l1Len()
	buf := make([]byte, n*8)
	for i := range n {
		binary.BigEndian.PutUint64(buf[i*8:], uint64(img.l1Get(i)))
	}
	off := int64(img.hdr.L1TableOffset)
	if err := w.meta.check(off, int64(len(buf)), metaL1); err != nil {
		return err
	}
	if err := writeFull(w.st, buf, off); err != nil {
		return fmt.Errorf("qcow2: writing L1 table of %s: %w", w.path, err)
	}
	return nil
}

// writeHeader rewrites the header, its extensions and the backing name
// in cluster 0.
func (w *writer) writeHeader() error {
	buf, err := w.img.hdr.MarshalBinary()
	if err != nil {
		return err
	}
	if err := w.meta.check(0, int64(len(buf)), metaHeader); err != nil {
		return err
	}
	if err := writeFull(w.st, buf, 0); err != nil {
		return fmt.Errorf("qcow2: writing header of %s: %w", w.path, err)
	}
	return nil
}

// growFileSize tells the read path how large the file is now.
func (w *writer) growFileSize() {
	if sz, err := w.st.Size(); err == nil {
		w.img.setFileSize(sz)
	}
}

// markCorrupt sets the corrupt bit on disk (best effort) after metadata
// was found invalid, as QEMU does; the image then opens read-only until
// it is repaired.
func (w *writer) markCorrupt() {
	h := w.img.hdr
	if h.Version < 3 || h.IncompatibleFeatures&IncompatCorrupt != 0 {
		return
	}
	h.IncompatibleFeatures |= IncompatCorrupt
	if w.writeHeader() == nil {
		w.st.Sync() //nolint:errcheck // best effort; the write already failed
	}
}
