package qcow2

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"time"
)

// exclusive runs fn with all I/O excluded and the metadata flushed;
// afterwards the writer's caches are reloaded from disk, since fn may
// rewrite tables behind them.
func (w *writer) exclusive(fn func() error) error {
	w.lockAll()
	defer w.unlockAll()
	if err := w.refusal(); err != nil {
		return err
	}
	if err := w.flushLocked(); err != nil {
		return err
	}
	ferr := fn()
	if err := w.reload(); err != nil && ferr == nil {
		ferr = err
	}
	return ferr
}

func (img *Image) writerOrErr() (*writer, error) {
	if img.rw != nil {
		return nil, fmt.Errorf("%w: %s is a raw image (only qcow2 has internal snapshots)", ErrUnsupportedFeature, img.path)
	}
	if img.w == nil {
		return nil, fmt.Errorf("%w: %s", ErrReadOnly, img.path)
	}
	return img.w, nil
}

// findSnapshot returns the index of the snapshot whose name (or else ID)
// is name.
func (img *Image) findSnapshot(name string) int {
	for i, s := range img.snapshots {
		if s.Name == name {
			return i
		}
	}
	for i, s := range img.snapshots {
		if s.ID == name {
			return i
		}
	}
	return -1
}

// readL1At reads an L1 table of n entries.
func (w *writer) readL1At(off int64, n int64) ([]uint64, error) {
	raw := make([]byte, n*8)
	if err := readFull(w.st, raw, off); err != nil {
		return nil, err
	}
	return decodeTable(raw), nil
}

// writeTableSync writes table t at off and syncs.
func (w *writer) writeTableSync(off int64, t []uint64) error {
	if err := writeFull(w.st, encodeTable(t), off); err != nil {
		return err
	}
	return w.sync()
}

// addTree changes by delta the refcounts of every L2 table and data
// cluster an L1 table reaches (not the L1 table itself).
func (w *writer) addTree(l1 []uint64, delta int64) error {
	img := w.img
	words := w.entryWords()
	buf := make([]byte, w.cs())
	for _, e := range l1 {
		l2 := l1Entry(e).l2Offset()
		if l2 == 0 {
			continue
		}
		if err := readFull(w.st, buf, l2); err != nil {
			return err
		}
		for j := int64(0); j < w.cs()/8; j += words {
			entry := l2Entry(binary.BigEndian.Uint64(buf[j*8:]))
			if entry.compressed() {
				off, size := entry.compressedLocation(img.clusterBits)
				off &^= 511
				for c := off >> w.cb(); c <= (off+size-1)>>w.cb(); c++ {
					if _, err := w.rc.add(c, delta); err != nil {
						return err
					}
				}
				continue
			}
			if host := entry.host(); host != 0 {
				if _, err := w.rc.add(host>>w.cb(), delta); err != nil {
					return err
				}
			}
		}
		if _, err := w.rc.add(l2>>w.cb(), delta); err != nil {
			return err
		}
	}
	return nil
}

// encodeSnapshots serialises a snapshot table.
func encodeSnapshots(snaps []Snapshot) []byte {
	var out []byte
	be := binary.BigEndian
	for _, s := range snaps {
		var hdr [snapshotHeaderSize]byte
		be.PutUint64(hdr[0:], s.L1TableOffset)
		be.PutUint32(hdr[8:], s.L1Size)
		be.PutUint16(hdr[12:], uint16(len(s.ID)))
		be.PutUint16(hdr[14:], uint16(len(s.Name)))
		be.PutUint32(hdr[16:], s.DateSec)
		be.PutUint32(hdr[20:], s.DateNsec)
		be.PutUint64(hdr[24:], s.VMClockNsec)
		be.PutUint32(hdr[32:], uint32(min(s.VMStateSize, 0xffffffff)))
		be.PutUint32(hdr[36:], uint32(len(s.ExtraData)))
		out = append(out, hdr[:]...)
		out = append(out, s.ExtraData...)
		out = append(out, s.ID...)
		out = append(out, s.Name...)
		for len(out)%8 != 0 {
			out = append(out, 0)
		}
	}
	return out
}

// writeSnapshotTable writes snaps to new clusters, switches the header to
// them and frees the old table. Refcounts are written first.
func (w *writer) writeSnapshotTable(snaps []Snapshot) error {
	h := w.img.hdr
	oldOff, oldSize := int64(h.SnapshotsOffset), snapshotTableSize(w.img.snapshots)
	data := encodeSnapshots(snaps)
	var newOff int64
	if len(data) > 0 {
		var err error
		if newOff, err = w.rc.alloc(w.clustersFor(int64(len(data)))); err != nil {
			return err
		}
		if err := w.writeRefcounts(); err != nil {
			return err
		}
		if err := w.meta.check(newOff, int64(len(data)), metaNone); err != nil {
			return err
		}
		if err := writeFull(w.st, data, newOff); err != nil {
			return err
		}
		if err := w.sync(); err != nil {
			return err
		}
	}
	h.NbSnapshots = uint32(len(snaps))
	h.SnapshotsOffset = uint64(newOff)
	if err := w.writeHeader(); err != nil {
		return err
	}
	if err := w.sync(); err != nil {
		return err
	}
	w.img.snapshots = snaps
	if err := w.releaseRange(oldOff, oldSize); err != nil {
		return err
	}
	return w.writeRefcounts()
}

// CreateSnapshot records the current guest state as internal snapshot
// name (qemu-img snapshot -c). It waits for and excludes writes; the
// caller must not read the image concurrently (tables are rewritten).
func (img *Image) CreateSnapshot(name string) error {
	w, err := img.writerOrErr()
	if err != nil {
		return err
	}
	if name == "" || len(name) > 0xffff {
		return fmt.Errorf("qcow2: %s: invalid snapshot name %q", img.path, name)
	}
	return w.exclusive(func() error {
		if img.findSnapshot(name) >= 0 {
			return fmt.Errorf("%w: %s: %q", ErrSnapshotExists, img.path, name)
		}
		if len(img.snapshots) >= maxSnapshots {
			return fmt.Errorf("qcow2: %s: too many snapshots", img.path)
		}
		l1 := img.activeL1()
		n := int64(len(l1))
		// Everything the active table reaches gains a reference.
		if err := w.addTree(l1, 1); err != nil {
			return err
		}
		var l1Off int64
		if n > 0 {
			if l1Off, err = w.rc.alloc(w.clustersFor(n * 8)); err != nil {
				return err
			}
		}
		if err := w.writeRefcounts(); err != nil {
			return err
		}
		// Shared now: no COPIED flags in the active tables.
		if err := w.fixCopied(); err != nil {
			return err
		}
		for i := range l1 {
			l1[i] &^= entryCopied
		}
		if n > 0 {
			if err := w.writeTableSync(l1Off, l1); err != nil {
				return err
			}
		}
		maxID := 0
		for _, s := range img.snapshots {
			if v, err := strconv.Atoi(s.ID); err == nil && v > maxID {
				maxID = v
			}
		}
		now := time.Now()
		extra := make([]byte, 24)
		binary.BigEndian.PutUint64(extra[8:], uint64(img.size))
		binary.BigEndian.PutUint64(extra[16:], ^uint64(0)) // no icount
		s := Snapshot{
			ID: strconv.Itoa(maxID + 1), Name: name,
			DateSec: uint32(now.Unix()), DateNsec: uint32(now.Nanosecond()),
			DiskSize: uint64(img.size), Icount: -1,
			L1TableOffset: uint64(l1Off), L1Size: uint32(n), ExtraData: extra,
		}
		snaps := append(append([]Snapshot(nil), img.snapshots...), s)
		if int64(len(encodeSnapshots(snaps))) > maxSnapshotsSize {
			return fmt.Errorf("qcow2: %s: snapshot table would exceed its size limit", img.path)
		}
		return w.writeSnapshotTable(snaps)
	})
}

// DeleteSnapshot removes internal snapshot name (or ID) and frees what
// only it used (qemu-img snapshot -d). It waits for and excludes writes;
// the caller must not read the image concurrently.
func (img *Image) DeleteSnapshot(name string) error {
	return img.onSnapshot(name, func(w *writer, i int) error {
		s := img.snapshots[i]
		snaps := append(append([]Snapshot(nil), img.snapshots[:i]...), img.snapshots[i+1:]...)
		// First the table no longer names it ...
		if err := w.writeSnapshotTable(snaps); err != nil {
			return err
		}
		// ... then what it reached loses a reference.
		l1, err := w.readL1At(int64(s.L1TableOffset), int64(s.L1Size))
		if err != nil {
			return err
		}
		if err := w.addTree(l1, -1); err != nil {
			return err
		}
		return w.releaseL1(int64(s.L1TableOffset), int64(s.L1Size)*8)
	})
}

// ApplySnapshot reverts the guest to internal snapshot name (or ID)
// (qemu-img snapshot -a). It waits for and excludes writes; the caller
// must not read the image concurrently.
func (img *Image) ApplySnapshot(name string) error {
	return img.onSnapshot(name, func(w *writer, i int) error {
		s := img.snapshots[i]
		h := img.hdr
		snapL1, err := w.readL1At(int64(s.L1TableOffset), int64(s.L1Size))
		if err != nil {
			return err
		}
		oldL1 := img.activeL1()
		oldN := int64(len(oldL1))
		// The snapshot's tree gains the active table's reference first.
		if err := w.addTree(snapL1, 1); err != nil {
			return err
		}
		newSize := int64(h.Size)
		if s.DiskSize != 0 {
			newSize = int64(s.DiskSize)
		}
		l1Off, l1N := int64(h.L1TableOffset), oldN
		var oldTableOff, oldTableClusters int64
		if int64(len(snapL1)) > oldN {
			// A larger table goes to new clusters.
			l1N = int64(len(snapL1))
			oldTableOff, oldTableClusters = l1Off, w.clustersFor(oldN*8)
			if l1Off, err = w.rc.alloc(w.clustersFor(l1N * 8)); err != nil {
				return err
			}
		}
		if err := w.writeRefcounts(); err != nil {
			return err
		}
		newL1 := make([]uint64, l1N)
		for k, e := range snapL1 {
			newL1[k] = e &^ entryCopied
		}
		if err := w.writeTableSync(l1Off, newL1); err != nil {
			return err
		}
		if err := w.switchL1(l1Off, newL1, newSize); err != nil {
			return err
		}
		// The old active tree loses its reference.
		if err := w.addTree(oldL1, -1); err != nil {
			return err
		}
		return w.releaseL1(oldTableOff, oldTableClusters<<w.cb())
	})
}

// onSnapshot runs fn, with all I/O excluded (see exclusive), on the
// index of the snapshot whose name (or else ID) is name.
func (img *Image) onSnapshot(name string, fn func(w *writer, i int) error) error {
	w, err := img.writerOrErr()
	if err != nil {
		return err
	}
	return w.exclusive(func() error {
		i := img.findSnapshot(name)
		if i < 0 {
			return fmt.Errorf("%w: %s: %q", ErrSnapshotNotFound, img.path, name)
		}
		return fn(w, i)
	})
}

// releaseL1 frees an L1 table no longer used (size bytes at off), writes
// the refcounts and then the COPIED flags they call for.
func (w *writer) releaseL1(off, size int64) error {
	if err := w.releaseRange(off, size); err != nil {
		return err
	}
	if err := w.writeRefcounts(); err != nil {
		return err
	}
	return w.fixCopied()
}
