package qcow2

import (
	"fmt"
	"sync/atomic"
)

// Resize changes the guest size. Growing allocates a larger L1 table when
// needed (new clusters, then the header switches to it). Shrinking needs
// shrink set and works only while nothing is allocated past the new size;
// like QEMU, images with internal snapshots can grow but not shrink. It waits
// for and excludes writes; the caller must not read concurrently.
func (img *Image) Resize(size int64, shrink bool) error {
	if img.rw != nil {
		return img.rw.resize(img, size, shrink)
	}
	w, err := img.writerOrErr()
	if err != nil {
		return err
	}
	if size < 0 {
		return fmt.Errorf("qcow2: %s: negative size %d", img.path, size)
	}
	return w.exclusive(func() error {
		h := img.hdr
		if h.NbSnapshots > 0 && size < img.size {
			// Growing is fine (QEMU 5.0+ does it too): snapshots keep
			// their own L1 tables and sizes.
			return fmt.Errorf("qcow2: %s: cannot shrink an image with internal snapshots", img.path)
		}
		if size < img.size && !shrink {
			return fmt.Errorf("qcow2: %s: shrinking from %d to %d bytes needs the shrink option", img.path, img.size, size)
		}
		perL2 := int64(1) << (img.l2Bits + img.clusterBits)
		need := (size + perL2 - 1) / perL2
		if need*8 > maxL1Size {
			return fmt.Errorf("qcow2: %s: size %d needs an L1 table over %d MiB", img.path, size, maxL1Size>>20)
		}
		n := img.l1Len()
		if size < img.size {
			return w.shrink(size, need)
		}
		if need > n {
			return w.growL1(need, size)
		}
		h.Size = uint64(size)
		if err := w.writeHeader(); err != nil {
			return err
		}
		img.size = size
		return w.sync()
	})
}

// growL1 moves the L1 table to new clusters with need entries.
func (w *writer) growL1(need, size int64) error {
	img := w.img
	n := img.l1Len()
	off, err := w.rc.alloc(w.clustersFor(need * 8))
	if err != nil {
		return err
	}
	if err := w.writeRefcounts(); err != nil {
		return err
	}
	l1 := make([]uint64, need)
	copy(l1, img.activeL1())
	if err := w.meta.check(off, need*8, metaNone); err != nil {
		return err
	}
	if err := w.writeTableSync(off, l1); err != nil {
		return err
	}
	oldOff, oldN := int64(img.hdr.L1TableOffset), n
	if err := w.switchL1(off, l1, size); err != nil {
		return err
	}
	if err := w.releaseRange(oldOff, oldN*8); err != nil {
		return err
	}
	return w.writeRefcounts()
}

// switchL1 makes l1, already written and synced at off, the active L1
// table and size the guest size: the header is written and synced
// first, then the writer's view follows.
func (w *writer) switchL1(off int64, l1 []uint64, size int64) error {
	img := w.img
	h := img.hdr
	h.L1TableOffset, h.L1Size, h.Size = uint64(off), uint32(len(l1)), uint64(size)
	if err := w.writeHeader(); err != nil {
		return err
	}
	if err := w.sync(); err != nil {
		return err
	}
	img.size = size
	t := make([]atomic.Uint64, len(l1))
	for i, e := range l1 {
		t[i].Store(e)
	}
	w.l1.Store(&t)
	return nil
}

// shrink drops the guest range past size, which must hold no clusters.
// L2 tables wholly past the end are freed; the L1 table keeps its size.
func (w *writer) shrink(size, need int64) error {
	img := w.img
	h := img.hdr
	firstCluster := w.clustersFor(size)
	end := w.clustersFor(img.size)
	for vc := firstCluster; vc < end; vc++ {
		l1i := vc >> img.l2Bits
		if img.l1Get(l1i).l2Offset() == 0 {
			vc = (l1i+1)<<img.l2Bits - 1
			continue
		}
		entry, _, err := img.lookup(vc)
		if err != nil {
			return err
		}
		if entry.compressed() || entry.host() != 0 {
			return fmt.Errorf("%w: %s: guest cluster %d (offset %d) is allocated; discard it first", ErrShrinkInUse, img.path, vc, vc<<w.cb())
		}
	}
	h.Size = uint64(size)
	if err := w.writeHeader(); err != nil {
		return err
	}
	if err := w.sync(); err != nil {
		return err
	}
	img.size = size
	// Free L2 tables that only map the dropped range.
	var freed []int64
	for i := need; i < img.l1Len(); i++ {
		if off := img.l1Get(i).l2Offset(); off != 0 {
			img.l1Set(i, 0)
			freed = append(freed, off>>w.cb())
		}
	}
	if len(freed) == 0 {
		return nil
	}
	if err := w.writeL1(); err != nil {
		return err
	}
	if err := w.sync(); err != nil {
		return err
	}
	for _, c := range freed {
		if _, err := w.rc.add(c, -1); err != nil {
			return err
		}
	}
	return w.writeRefcounts()
}

// ResizeFile resizes the image at path through Resize: a qcow2 image in
// its metadata, a raw one by truncating the file (shrinking either needs
// shrink). It takes QEMU's writer lock unless opts.ForceShare.
func ResizeFile(path string, size int64, shrink bool, opts Options) error {
	opts.Writable = true
	opts.NoBacking = true
	img, err := Open(path, opts)
	if err != nil {
		return err
	}
	rerr := img.Resize(size, shrink)
	if err := img.Close(); rerr == nil {
		rerr = err
	}
	return rerr
}
