package qcow2

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"github.com/imgtool/imgtool/internal/imagelock"
)

// openWriter makes img (the top of a chain opened by Open) writable: it
// opens the file for writing, takes QEMU's writer lock, repairs the
// refcounts of an image left dirty by lazy refcounts, and clears
// autoclear features it does not maintain.
func (img *Image) openWriter(opts *Options) error {
	if img.format == FormatRaw {
		return img.openRawWriter(opts)
	}
	return img.openWriterMode(opts, false)
}

// openWriterMode is openWriter; forRepair allows an image marked corrupt
// and leaves a dirty one alone (the caller is about to check it).
func (img *Image) openWriterMode(opts *Options, forRepair bool) error {
	if img.format != FormatQcow2 {
		// Raw images are writable (openRawWriter); only qcow2 has
		// metadata to repair.
		return fmt.Errorf("%w: repairing %s images", ErrUnsupportedFeature, img.format)
	}
	if img.unreadable != nil {
		return fmt.Errorf("%w: cannot write %s: %v", ErrUnsupportedFeature, img.path, img.unreadable)
	}
	h := img.hdr
	if h.IncompatibleFeatures&IncompatCorrupt != 0 && !forRepair {
		return fmt.Errorf("%w: %s is marked corrupt; repair it first (imgtool check -r all)", ErrReadOnly, img.path)
	}
	f, err := img.openForWriting(opts)
	if err != nil {
		return err
	}
	var st storage = osStorage{f}
	if opts.cache != "" && opts.cache != CacheWriteback {
		cs := cachedStorage{osStorage: osStorage{f}, dw: directWriter{f: f}, noSync: opts.cache.noSync()}
		if opts.cache.direct() {
			if cs.dw.d, err = openDirect(f, img.path); err != nil {
				f.Close()
				return err
			}
		}
		st = cs
	}
	if err := img.attachWriter(st, forRepair); err != nil {
		st.Close()
		return err
	}
	return nil
}

// openForWriting opens img's file read-write with QEMU's writer lock
// (unless opts.ForceShare); the lock goes with the descriptor.
func (img *Image) openForWriting(opts *Options) (*os.File, error) {
	f, err := os.OpenFile(img.path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("qcow2: opening %s for writing: %w", img.path, err)
	}
	if !opts.ForceShare {
		if _, err := acquireLock(f, imagelock.Writer); err != nil {
			f.Close()
			return nil, fmt.Errorf("qcow2: cannot write %s: %w", img.path, err)
		}
	}
	return f, nil
}

// attachWriter sets up the writer on storage st, which holds the same
// bytes as img.f.
func (img *Image) attachWriter(st storage, forRepair bool) error {
	h := img.hdr
	size, err := st.Size()
	if err != nil {
		return fmt.Errorf("qcow2: %s: %w", img.path, err)
	}
	w := &writer{
		img:        img,
		st:         st,
		path:       img.path,
		inflight:   map[int64]struct{}{},
		dirtyL2:    map[int64]*l2Table{},
		lazy:       h.CompatibleFeatures&CompatLazyRefcounts != 0,
		maxDirtyL2: max(int(DefaultL2CacheSize/img.clusterSize)/2, 16),
	}
	w.cond = sync.NewCond(&w.mu)
	w.fileSize.Store(size)
	l1 := make([]atomic.Uint64, len(img.l1))
	for i, e := range img.l1 {
		l1[i].Store(e)
	}
	w.l1.Store(&l1)
	w.meta = newMetaMap(img.path, img.clusterBits)
	if err := w.loadMeta(size); err != nil {
		return err
	}
	img.w = w
	if h.IncompatibleFeatures&IncompatDirty != 0 && !forRepair {
		// Left dirty by a crash with lazy refcounts: the on-disk
		// refcounts cannot be trusted. Rebuild them before writing.
		if _, err := img.Check(RepairAll); err != nil {
			img.w = nil
			return fmt.Errorf("qcow2: repairing dirty image %s: %w", img.path, err)
		}
		if h.IncompatibleFeatures&IncompatDirty != 0 {
			h.IncompatibleFeatures &^= IncompatDirty
			if err := w.writeHeader(); err == nil {
				err = w.sync()
			}
		}
	}
	if h.AutoclearFeatures != 0 {
		// Bitmaps are not kept up to date and other autoclear features
		// are unknown: clearing the bits tells QEMU, as the format
		// intends.
		h.AutoclearFeatures = 0
		if err := w.writeHeader(); err == nil {
			err = w.sync()
		}
		if err != nil {
			img.w = nil
			return err
		}
	}
	return nil
}

// loadMeta fills the overlap guard and the refcount state.
func (w *writer) loadMeta(fileSize int64) error {
	img := w.img
	h := img.hdr
	cs := w.cs()
	clusters := func(off, n int64) (int64, int64) {
		if n <= 0 {
			return off >> w.cb(), 0
		}
		return off >> w.cb(), (off+n+cs-1)>>w.cb() - off>>w.cb()
	}
	w.meta.add(0, 1, metaHeader)
	c, n := clusters(int64(h.L1TableOffset), int64(h.L1Size)*8)
	w.meta.add(c, n, metaL1)
	c, n = clusters(int64(h.RefcountTableOffset), int64(h.RefcountTableClusters)*cs)
	w.meta.add(c, n, metaRefTable)
	if h.NbSnapshots > 0 {
		c, n = clusters(int64(h.SnapshotsOffset), snapshotTableSize(img.snapshots))
		w.meta.add(c, n, metaSnapTable)
		for _, s := range img.snapshots {
			c, n = clusters(int64(s.L1TableOffset), int64(s.L1Size)*8)
			w.meta.add(c, n, metaSnapL1)
		}
	}
	for i := range img.l1Len() {
		if off := img.l1Get(i).l2Offset(); off != 0 {
			w.meta.add(off>>w.cb(), 1, metaL2)
		}
	}
	rc, err := newRefcounts(w.st, img.path, h, fileSize, w.meta)
	if err != nil {
		return err
	}
	w.rc = rc
	return nil
}

// snapshotTableSize returns the bytes the snapshot table occupies.
func snapshotTableSize(snaps []Snapshot) int64 {
	n := int64(0)
	for _, s := range snaps {
		n += snapshotEntrySize(&s)
	}
	return n
}

func snapshotEntrySize(s *Snapshot) int64 {
	return (snapshotHeaderSize + int64(len(s.ExtraData)) + int64(len(s.ID)) + int64(len(s.Name)) + 7) &^ 7
}

// closeWriter flushes everything, clears the dirty bit of a lazy
// refcounts image and closes the write file. Called by Close.
func (img *Image) closeWriter() error {
	if img.rw != nil {
		return img.rw.close()
	}
	w := img.w
	if w == nil {
		return nil
	}
	w.lockAll()
	defer w.unlockAll()
	if w.closed {
		return nil
	}
	w.closed = true
	err := w.flushLocked()
	if err == nil && w.lazy && w.dirtyBit {
		err = w.writeRefcounts()
		if err == nil {
			img.hdr.IncompatibleFeatures &^= IncompatDirty
			if err = w.writeHeader(); err == nil {
				err = w.sync()
			}
		}
		if err == nil {
			w.dirtyBit = false
		}
	}
	if cerr := w.st.Close(); cerr != nil && err == nil {
		err = cerr
	}
	return err
}
