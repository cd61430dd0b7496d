package qcow2

import (
	"encoding/binary"
	"fmt"
	"io"
)

// RepairMode says what Check may fix, as qemu-img check -r.
type RepairMode int

const (
	// RepairNone only reports.
	RepairNone RepairMode = iota
	// RepairLeaks lowers refcounts that are higher than the references.
	RepairLeaks
	// RepairAll also fixes corruptions: refcounts lower than the
	// references (by rebuilding all refcounts), wrong COPIED flags and
	// misaligned L2 entries (they become zero clusters, as in QEMU).
	RepairAll
)

// CheckResult is what Check found, with qemu-img check's fields.
type CheckResult struct {
	Filename           string `json:"filename"`
	Format             string `json:"format"`
	CheckErrors        int64  `json:"check-errors"`
	ImageEndOffset     int64  `json:"image-end-offset"`
	Corruptions        int64  `json:"corruptions,omitempty"`
	Leaks              int64  `json:"leaks,omitempty"`
	CorruptionsFixed   int64  `json:"corruptions-fixed,omitempty"`
	LeaksFixed         int64  `json:"leaks-fixed,omitempty"`
	TotalClusters      int64  `json:"total-clusters"`
	AllocatedClusters  int64  `json:"allocated-clusters,omitempty"`
	FragmentedClusters int64  `json:"fragmented-clusters,omitempty"`
	CompressedClusters int64  `json:"compressed-clusters,omitempty"`
	// Messages describe each problem found (one line each, like
	// qemu-img's stderr output).
	Messages []string `json:"-"`
}

// ExitCode returns qemu-img check's exit status for the result: 0 clean,
// 2 corruptions, 3 leaks only (1 is for checks that could not complete).
func (r *CheckResult) ExitCode() int {
	switch {
	case r.CheckErrors > 0:
		return 1
	case r.Corruptions > 0:
		return 2
	case r.Leaks > 0:
		return 3
	}
	return 0
}

// checker computes the reference counts an image's metadata implies and
// compares them with the stored ones.
type checker struct {
	img  *Image
	rd   io.ReaderAt
	cb   uint32
	cs   int64
	size int64 // file size
	ref  []uint64
	res  *CheckResult
	// rebuild: the refcount structures themselves are damaged.
	rebuild bool
	// misaligned L2 entries (file offset of the entry) for repair.
	badL2 []int64
	// stored returns the stored refcount of a cluster.
	stored func(c int64) (uint64, error)
}

func (ck *checker) msg(format string, args ...any) {
	if len(ck.res.Messages) < 10000 {
		ck.res.Messages = append(ck.res.Messages, fmt.Sprintf(format, args...))
	}
}

// inc counts one reference to every cluster of [off, off+n).
func (ck *checker) inc(off, n int64) {
	if n <= 0 {
		return
	}
	first := off >> ck.cb
	last := (off + n - 1) >> ck.cb
	fileClusters := (ck.size + ck.cs - 1) >> ck.cb
	for c := first; c <= last; c++ {
		if c >= fileClusters {
			ck.msg("ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset %#x size %#x", off, n)
			ck.res.Corruptions++
			return
		}
		ck.ref[c]++
	}
}

func (ck *checker) readTable(off, n int64) ([]uint64, error) {
	raw := make([]byte, n)
	if err := readFull(ck.rd.(storage), raw, off); err != nil {
		return nil, err
	}
	return decodeTable(raw), nil
}

// walkL1 counts an L1 table, its L2 tables and their clusters. active
// gathers the statistics qemu-img reports.
func (ck *checker) walkL1(l1Off int64, l1Size int64, active bool) error {
	img := ck.img
	ck.inc(l1Off, l1Size*8)
	l1, err := ck.readTable(l1Off, l1Size*8)
	if err != nil {
		return err
	}
	extL2 := img.extL2
	words := int64(1)
	if extL2 {
		words = 2
	}
	for i, raw := range l1 {
		e := l1Entry(raw)
		l2Off := e.l2Offset()
		if l2Off == 0 {
			continue
		}
		if l2Off&(ck.cs-1) != 0 {
			ck.msg("ERROR l2_offset=%x: Table is not cluster aligned; L1 entry corrupted", l2Off)
			ck.res.Corruptions++
			continue
		}
		if l2Off+ck.cs > ck.size {
			ck.msg("ERROR l2_offset=%x: L2 table lies past the end of the file", l2Off)
			ck.res.Corruptions++
			continue
		}
		ck.inc(l2Off, ck.cs)
		l2, err := ck.readTable(l2Off, ck.cs)
		if err != nil {
			return err
		}
		next := int64(0)
		for j := int64(0); j < int64(len(l2))/words; j++ {
			entry := l2Entry(l2[j*words])
			var bitmap uint64
			if extL2 {
				bitmap = l2[j*words+1]
			}
			entryOff := l2Off + j*8*words
			guestCluster := int64(i)*(int64(len(l2))/words) + j
			_ = guestCluster
			if entry.compressed() {
				if entry.copied() {
					ck.msg("ERROR: cluster %d: copied flag must never be set for compressed clusters", entry>>ck.cb)
					ck.res.Corruptions++
				}
				if extL2 && bitmap != 0 {
					ck.msg("ERROR compressed cluster %d with a non-zero subcluster bitmap %#x", j, bitmap)
					ck.res.Corruptions++
				}
				off, size := entry.compressedLocation(ck.cb)
				start := off &^ 511
				ck.inc(start, off+size-start)
				if active {
					ck.res.AllocatedClusters++
					ck.res.CompressedClusters++
					ck.res.FragmentedClusters++
				}
				continue
			}
			host := entry.host()
			if extL2 {
				if bitmapInvalid(host, bitmap) {
					ck.msg("ERROR invalid subcluster bitmap %#x in L2 entry at %#x", bitmap, entryOff)
					ck.res.Corruptions++
				}
			}
			if host == 0 {
				continue
			}
			if active {
				ck.res.AllocatedClusters++
				if next != 0 && host != next {
					ck.res.FragmentedClusters++
				}
				next = host + ck.cs
			}
			// Like QEMU, a misaligned entry counts the clusters its
			// range touches.
			ck.inc(host, ck.cs)
			if host&(ck.cs-1) != 0 {
				ck.msg("ERROR offset=%x: Data cluster is not properly aligned; L2 entry corrupted.", host)
				ck.res.Corruptions++
				if active {
					ck.badL2 = append(ck.badL2, entryOff)
				}
			}
		}
	}
	return nil
}

// Check checks the image's metadata like qemu-img check and, if mode
// says so, repairs it. The image must be the only user of the file
// (Open takes the locks). Repairs need an image opened writable.
func (img *Image) Check(mode RepairMode) (*CheckResult, error) {
	if img.format != FormatQcow2 {
		return nil, fmt.Errorf("%w: checking %s images", ErrUnsupportedFeature, img.format)
	}
	if mode != RepairNone && img.w == nil {
		return nil, fmt.Errorf("%w: %s: repairing needs a writable image", ErrReadOnly, img.path)
	}
	if img.w != nil {
		img.w.lockAll()
		defer img.w.unlockAll()
		if err := img.w.flushLocked(); err != nil {
			return nil, err
		}
	}
	res, ck, err := img.check(true)
	if err != nil || mode == RepairNone {
		return res, err
	}
	if res.Corruptions == 0 && res.Leaks == 0 {
		return res, img.w.markConsistent(res)
	}
	leaks, corruptions := res.Leaks, res.Corruptions
	if err := img.w.repairLocked(ck, mode); err != nil {
		return res, err
	}
	after, _, err := img.check(true)
	if err != nil {
		return res, err
	}
	after.LeaksFixed = leaks - after.Leaks
	if mode == RepairAll {
		after.CorruptionsFixed = max(corruptions-after.Corruptions, 0)
	}
	after.Messages = append(res.Messages, after.Messages...)
	return after, img.w.markConsistent(after)
}

// markConsistent clears the dirty and corrupt bits once a repair left no
// corruptions, as qemu-img check -r does.
func (w *writer) markConsistent(res *CheckResult) error {
	h := w.img.hdr
	if res.CheckErrors > 0 || res.Corruptions > 0 || h.IncompatibleFeatures&(IncompatDirty|IncompatCorrupt) == 0 {
		return nil
	}
	h.IncompatibleFeatures &^= IncompatDirty | IncompatCorrupt
	if err := w.writeHeader(); err != nil {
		return err
	}
	w.dirtyBit = false
	return w.sync()
}

// check runs the checks without repairing. A writer's mu is held (or
// there is no writer). Without refStructs the refcount table and blocks
// are left out of the computed counts (for a rebuild).
func (img *Image) check(refStructs bool) (*CheckResult, *checker, error) {
	h := img.hdr
	var rd storage
	var size int64
	if img.w != nil {
		rd = img.w.st
		s, err := rd.Size()
		if err != nil {
			return nil, nil, err
		}
		size = s
	} else {
		rd = readOnlyStorage{img.r}
		size = img.fileSize
	}
	res := &CheckResult{Filename: img.path, Format: "qcow2"}
	res.TotalClusters = (img.size + img.clusterSize - 1) >> img.clusterBits
	ck := &checker{img: img, rd: rd, cb: img.clusterBits, cs: img.clusterSize, size: size, res: res}
	fileClusters := (size + ck.cs - 1) >> ck.cb
	ck.ref = make([]uint64, fileClusters)

	ck.inc(0, ck.cs) // header
	if err := ck.walkL1(int64(h.L1TableOffset), int64(h.L1Size), true); err != nil {
		res.CheckErrors++
		return res, ck, nil
	}
	for _, s := range img.snapshotsNow() {
		if err := ck.walkL1(int64(s.L1TableOffset), int64(s.L1Size), false); err != nil {
			res.CheckErrors++
			return res, ck, nil
		}
	}
	if h.NbSnapshots > 0 {
		ck.inc(int64(h.SnapshotsOffset), snapshotTableSize(img.snapshotsNow()))
	}
	if h.Encryption != nil {
		ck.inc(int64(h.Encryption.Offset), int64(h.Encryption.Length))
	}
	// As in QEMU, bitmaps count only while the autoclear bit says the
	// extension is consistent (a writer without bitmap support, like
	// this package, clears it: their clusters then show as leaks).
	if h.Bitmaps != nil && h.Bitmaps.NbBitmaps > 0 && h.AutoclearFeatures&AutoclearBitmaps != 0 {
		ck.countBitmaps(h.Bitmaps)
	}
	if !refStructs {
		return res, ck, nil
	}
	ck.inc(int64(h.RefcountTableOffset), int64(h.RefcountTableClusters)<<ck.cb)

	// Refcount blocks.
	reftable, err := ck.readTable(int64(h.RefcountTableOffset), int64(h.RefcountTableClusters)<<ck.cb)
	if err != nil {
		res.CheckErrors++
		return res, ck, nil
	}
	order := h.RefcountOrder
	perBlock := ck.cs * 8 >> order
	blockOK := make([]bool, len(reftable))
	for i, e := range reftable {
		off := refTableEntry(e).blockOffset()
		if off == 0 {
			continue
		}
		if off&(ck.cs-1) != 0 {
			ck.msg("ERROR refcount block %d is not cluster aligned; refcount table entry corrupted", i)
			res.Corruptions++
			ck.rebuild = true
			continue
		}
		if off>>ck.cb >= fileClusters {
			ck.msg("ERROR refcount block %d is outside image", i)
			res.Corruptions++
			ck.rebuild = true
			continue
		}
		ck.inc(off, ck.cs)
		blockOK[i] = true
	}
	for i, e := range reftable {
		if blockOK[i] {
			c := refTableEntry(e).blockOffset() >> ck.cb
			if ck.ref[c] != 1 {
				ck.msg("ERROR refcount block %d refcount=%d", i, ck.ref[c])
				res.Corruptions++
				ck.rebuild = true
			}
		}
	}
	var cached []byte
	cachedIdx := int64(-1)
	ck.stored = func(c int64) (uint64, error) {
		idx := c / perBlock
		if idx >= int64(len(reftable)) || !blockOK[idx] {
			return 0, nil
		}
		if idx != cachedIdx {
			if cached == nil {
				cached = make([]byte, ck.cs)
			}
			if err := readFull(rd, cached, refTableEntry(reftable[idx]).blockOffset()); err != nil {
				return 0, err
			}
			cachedIdx = idx
		}
		return getRefcount(cached, order, c%perBlock), nil
	}

	// Compare.
	highest := int64(-1)
	// Like QEMU, only clusters inside the file are compared.
	for c := int64(0); c < int64(len(ck.ref)); c++ {
		computed := ck.ref[c]
		stored, err := ck.stored(c)
		if err != nil {
			res.CheckErrors++
			continue
		}
		if stored > 0 || computed > 0 {
			highest = c
		}
		if stored == computed {
			continue
		}
		if stored < computed {
			ck.msg("ERROR cluster %d refcount=%d reference=%d", c, stored, computed)
			res.Corruptions++
		} else {
			ck.msg("Leaked cluster %d refcount=%d reference=%d", c, stored, computed)
			res.Leaks++
		}
	}
	res.ImageEndOffset = (highest + 1) << ck.cb

	// COPIED flags of the active tables.
	l1, err := ck.readTable(int64(h.L1TableOffset), int64(h.L1Size)*8)
	if err != nil {
		res.CheckErrors++
		return res, ck, nil
	}
	words := int64(1)
	if img.extL2 {
		words = 2
	}
	for i, raw := range l1 {
		e := l1Entry(raw)
		l2Off := e.l2Offset()
		if l2Off == 0 || l2Off&(ck.cs-1) != 0 || l2Off+ck.cs > size {
			continue
		}
		rcnt, err := ck.stored(l2Off >> ck.cb)
		if err != nil {
			continue
		}
		if (rcnt == 1) != e.copied() {
			ck.msg("ERROR OFLAG_COPIED L2 cluster: l1_index=%d l1_entry=%x refcount=%d", i, e, rcnt)
			res.Corruptions++
		}
		l2, err := ck.readTable(l2Off, ck.cs)
		if err != nil {
			res.CheckErrors++
			continue
		}
		for j := int64(0); j < int64(len(l2))/words; j++ {
			entry := l2Entry(l2[j*words])
			host := entry.host()
			if entry.compressed() || host == 0 || host&(ck.cs-1) != 0 {
				continue
			}
			rcnt, err := ck.stored(host >> ck.cb)
			if err != nil {
				continue
			}
			if (rcnt == 1) != entry.copied() {
				ck.msg("ERROR OFLAG_COPIED data cluster: l2_entry=%x refcount=%d", entry, rcnt)
				res.Corruptions++
			}
		}
	}
	return res, ck, nil
}

// countBitmaps counts the bitmap directory and the bitmap tables and
// their data clusters, as QEMU's check does.
func (ck *checker) countBitmaps(b *BitmapsExt) {
	if b.DirectorySize == 0 || b.DirectorySize > maxBitmapDirectorySize {
		return
	}
	ck.inc(int64(b.DirectoryOffset), int64(b.DirectorySize))
	dir := make([]byte, b.DirectorySize)
	if readFull(ck.rd.(storage), dir, int64(b.DirectoryOffset)) != nil {
		return
	}
	be := binary.BigEndian
	for p := 0; p+24 <= len(dir); {
		tableOff := int64(be.Uint64(dir[p:]))
		tableSize := int64(be.Uint32(dir[p+8:]))
		nameSize := int(be.Uint16(dir[p+18:]))
		extra := int(be.Uint32(dir[p+20:]))
		if tableSize > 0 && tableSize*8 <= maxL1Size {
			ck.inc(tableOff, tableSize*8)
			if tab, err := ck.readTable(tableOff, tableSize*8); err == nil {
				for _, e := range tab {
					if off := l1Entry(e).l2Offset(); off != 0 {
						ck.inc(off, ck.cs)
					}
				}
			}
		}
		p += (24 + extra + nameSize + 7) &^ 7
	}
}

// readOnlyStorage lets the checker read a file opened read-only.
type readOnlyStorage struct{ io.ReaderAt }

func (readOnlyStorage) WriteAt([]byte, int64) (int, error) { return 0, ErrReadOnly }
func (readOnlyStorage) Sync() error                        { return nil }
func (readOnlyStorage) Truncate(int64) error               { return ErrReadOnly }
func (readOnlyStorage) Size() (int64, error)               { return 0, ErrReadOnly }
func (readOnlyStorage) Close() error                       { return nil }

// CheckFile checks the qcow2 image at path (without opening its backing
// file), like qemu-img check. With a repair mode it opens the image for
// writing, even when it is marked corrupt, and repairs it. opts supplies
// ForceShare and the cache size; Format, Writable and NoBacking are set
// here.
func CheckFile(path string, mode RepairMode, opts Options) (*CheckResult, error) {
	opts.Format = FormatQcow2
	opts.NoBacking = true
	opts.Writable = false
	ro := opts
	if mode != RepairNone {
		ro.ForceShare = true // the writer lock below is what counts
	}
	img, err := Open(path, ro)
	if err != nil {
		return nil, err
	}
	defer img.Close()
	if mode != RepairNone {
		if err := img.openWriterMode(&opts, true); err != nil {
			return nil, err
		}
	}
	return img.Check(mode)
}
