package qcow2

// Accessors through which the read path sees state that the write path
// changes while reads run. A read-only image uses the plain fields; a
// writable one the writer's atomic copies.

// l1Len returns the number of active L1 entries.
func (img *Image) l1Len() int64 {
	if w := img.w; w != nil {
		return int64(len(*w.l1.Load()))
	}
	return int64(len(img.l1))
}

// l1Get returns active L1 entry i (i < l1Len()).
func (img *Image) l1Get(i int64) l1Entry {
	if w := img.w; w != nil {
		return l1Entry((*w.l1.Load())[i].Load())
	}
	return l1Entry(img.l1[i])
}

// activeL1 returns a copy of the active L1 table.
func (img *Image) activeL1() []uint64 {
	l1 := make([]uint64, img.l1Len())
	for i := range l1 {
		l1[i] = uint64(img.l1Get(int64(i)))
	}
	return l1
}

// l1Set stores active L1 entry i; only the writer calls it, with its
// metadata mutex held.
func (img *Image) l1Set(i int64, v l1Entry) {
	(*img.w.l1.Load())[i].Store(uint64(v))
}

// fileSizeNow returns the size of the image file, which grows while the
// image is written.
func (img *Image) fileSizeNow() int64 {
	if w := img.w; w != nil {
		return w.fileSize.Load()
	}
	if rw := img.rw; rw != nil {
		return rw.fileSize.Load()
	}
	return img.fileSize
}

func (img *Image) setFileSize(n int64) {
	if w := img.w; w != nil {
		for {
			cur := w.fileSize.Load()
			if n <= cur || w.fileSize.CompareAndSwap(cur, n) {
				return
			}
		}
	}
}

// snapshotsNow returns the current snapshot list (the writer replaces
// img.snapshots with no I/O in flight).
func (img *Image) snapshotsNow() []Snapshot { return img.snapshots }
