package qcow2

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"
)

// repairLocked fixes what check found. ops and mu are held exclusively
// and the metadata is flushed.
func (w *writer) repairLocked(ck *checker, mode RepairMode) error {
	img := w.img
	if mode == RepairLeaks && !ck.rebuild && ck.res.Corruptions == 0 {
		// Lower each leaked refcount in place.
		for c := int64(0); c < int64(len(ck.ref)); c++ {
			stored, err := ck.stored(c)
			if err != nil {
				return err
			}
			if stored > ck.ref[c] {
				if err := w.rc.set(c, ck.ref[c]); err != nil {
					return err
				}
			}
		}
		if err := w.writeRefcounts(); err != nil {
			return err
		}
		return w.reload()
	}
	if mode == RepairLeaks {
		// Corruptions need -r all; leaks alone cannot be fixed safely
		// when refcounts are also too low, so leave the image alone.
		return nil
	}
	// Misaligned L2 entries become zero clusters (version 3) or
	// unallocated ones.
	if len(ck.badL2) > 0 {
		var e [16]byte
		n := 8
		if img.extL2 {
			n = 16
			binary.BigEndian.PutUint64(e[8:], bitmapAllocMask<<32)
		} else if img.hdr.Version >= 3 {
			binary.BigEndian.PutUint64(e[:], entryZero)
		}
		for _, off := range ck.badL2 {
			if err := writeFull(w.st, e[:n], off); err != nil {
				return err
			}
		}
		if err := w.sync(); err != nil {
			return err
		}
	}
	if err := w.rebuildRefcounts(); err != nil {
		return err
	}
	if err := w.fixCopied(); err != nil {
		return err
	}
	if img.hdr.IncompatibleFeatures&(IncompatDirty|IncompatCorrupt) != 0 {
		img.hdr.IncompatibleFeatures &^= IncompatDirty | IncompatCorrupt
		if err := w.writeHeader(); err != nil {
			return err
		}
		if err := w.sync(); err != nil {
			return err
		}
		w.dirtyBit = false
	}
	return w.reload()
}

// rebuildRefcounts computes every refcount from the references and
// writes a new refcount table and blocks past the end of the file; the
// header switches to them last, so a crash leaves the old ones in use.
func (w *writer) rebuildRefcounts() error {
	img := w.img
	res, ck, err := img.check(false)
	if err != nil {
		return err
	}
	if res.CheckErrors > 0 {
		return fmt.Errorf("qcow2: %s: cannot rebuild refcounts: metadata could not be read", w.path)
	}
	ref := ck.ref
	cs := w.cs()
	perBlock := cs * 8 >> img.hdr.RefcountOrder
	start := int64(len(ref))
	var t, b int64
	for {
		total := start + t + b
		nb := (total + perBlock - 1) / perBlock
		nt := (nb*8 + cs - 1) / cs
		if nb == b && nt == t {
			break
		}
		b, t = nb, nt
	}
	if t*cs > maxRefcountTable {
		return fmt.Errorf("qcow2: %s: rebuilt refcount table would exceed %d MiB", w.path, maxRefcountTable>>20)
	}
	total := start + t + b
	full := make([]uint64, total)
	copy(full, ref)
	for c := start; c < total; c++ {
		full[c] = 1
	}
	order := img.hdr.RefcountOrder
	maxVal := refcountMax(order)
	table := make([]byte, t*cs)
	blk := &refBlock{data: make([]byte, cs)}
	for idx := range b {
		clear(blk.data)
		for i := range perBlock {
			c := idx*perBlock + i
			if c >= total {
				break
			}
			if full[c] > maxVal {
				return fmt.Errorf("%w: cluster %d of %s has %d references", errRefcountOverflow, c, w.path, full[c])
			}
			setRefcount(blk.data, order, i, full[c])
		}
		off := (start + t + idx) * cs
		if err := writeFull(w.st, blk.data, off); err != nil {
			return err
		}
		binary.BigEndian.PutUint64(table[idx*8:], uint64(off))
	}
	if err := w.sync(); err != nil {
		return err
	}
	if err := writeFull(w.st, table, start*cs); err != nil {
		return err
	}
	if err := w.sync(); err != nil {
		return err
	}
	img.hdr.RefcountTableOffset = uint64(start * cs)
	img.hdr.RefcountTableClusters = uint32(t)
	w.meta.add(0, 1, metaHeader)
	if err := w.writeHeader(); err != nil {
		return err
	}
	return w.sync()
}

// fixCopied sets COPIED exactly on the active L1 and L2 entries whose
// cluster has refcount 1. The refcounts on disk must be right.
func (w *writer) fixCopied() error {
	img := w.img
	h := img.hdr
	rc, err := newRefcounts(w.st, w.path, h, w.fileSize.Load(), nil)
	if err != nil {
		return err
	}
	raw := make([]byte, int64(h.L1Size)*8)
	if err := readFull(w.st, raw, int64(h.L1TableOffset)); err != nil {
		return err
	}
	l1 := decodeTable(raw)
	l1Changed := false
	words := int64(1)
	if img.extL2 {
		words = 2
	}
	buf := make([]byte, w.cs())
	for i, raw := range l1 {
		e := l1Entry(raw)
		off := e.l2Offset()
		if off == 0 || off&(w.cs()-1) != 0 {
			continue
		}
		n, err := rc.get(off >> w.cb())
		if err != nil {
			return err
		}
		if want := n == 1; want != e.copied() {
			l1[i] ^= entryCopied
			l1Changed = true
		}
		if err := readFull(w.st, buf, off); err != nil {
			return err
		}
		changed := false
		for j := int64(0); j < w.cs()/8; j += words {
			entry := l2Entry(binary.BigEndian.Uint64(buf[j*8:]))
			host := entry.host()
			if entry.compressed() {
				if entry.copied() {
					binary.BigEndian.PutUint64(buf[j*8:], uint64(entry&^entryCopied))
					changed = true
				}
				continue
			}
			if host == 0 {
				continue
			}
			n, err := rc.get(host >> w.cb())
			if err != nil {
				return err
			}
			if want := n == 1; want != entry.copied() {
				binary.BigEndian.PutUint64(buf[j*8:], uint64(entry^entryCopied))
				changed = true
			}
		}
		if changed {
			if err := writeFull(w.st, buf, off); err != nil {
				return err
			}
		}
	}
	if err := w.sync(); err != nil {
		return err
	}
	if l1Changed {
		for i, e := range l1 {
			binary.BigEndian.PutUint64(raw[i*8:], e)
		}
		if err := writeFull(w.st, raw, int64(h.L1TableOffset)); err != nil {
			return err
		}
		if err := w.sync(); err != nil {
			return err
		}
	}
	return nil
}

// reload rereads the writer's view of the metadata from disk after a
// repair rewrote it behind the caches. ops and mu are held.
func (w *writer) reload() error {
	img := w.img
	h := img.hdr
	size, err := w.st.Size()
	if err != nil {
		return err
	}
	w.fileSize.Store(size)
	raw := make([]byte, int64(h.L1Size)*8)
	if err := readFull(w.st, raw, int64(h.L1TableOffset)); err != nil {
		return err
	}
	entries := decodeTable(raw)
	l1 := make([]atomic.Uint64, len(entries))
	for i, e := range entries {
		l1[i].Store(e)
	}
	w.l1.Store(&l1)
	img.l2 = newL2Cache(len(entries), w.cs(), img.l2.budget(w.cs()))
	w.dirtyL2 = map[int64]*l2Table{}
	w.frees = nil
	w.meta = newMetaMap(w.path, w.cb())
	return w.loadMeta(size)
}
