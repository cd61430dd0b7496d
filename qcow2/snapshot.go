package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// snapshotHeaderSize is the fixed part of a snapshot table entry.
const snapshotHeaderSize = 40

// Snapshot is one internal snapshot from the snapshot table. Reads of an
// Image always return the active state, not a snapshot.
type Snapshot struct {
	ID            string
	Name          string
	DateSec       uint32
	DateNsec      uint32
	VMClockNsec   uint64
	VMStateSize   uint64 // the 64-bit size from the extra data when present
	Icount        int64  // instruction count, -1 when not recorded
	DiskSize      uint64 // guest size when taken; 0 when not recorded
	L1TableOffset uint64
	L1Size        uint32
	// ExtraData is the whole extra data area, kept for rewriting.
	ExtraData []byte
}

// Snapshots returns the internal snapshots of this image (not of its
// backing files). The caller must not modify the slice.
func (img *Image) Snapshots() []Snapshot { return img.snapshots }

func (img *Image) loadSnapshots() error {
	h := img.hdr
	if h.NbSnapshots == 0 {
		return nil
	}
	// The table is read incrementally; its total size is bounded by
	// QEMU's limit and by the file size.
	off := int64(h.SnapshotsOffset)
	limit := min(img.fileSize, off+maxSnapshotsSize)
	read := func(n int64) ([]byte, error) {
		if off+n > limit {
			return nil, img.corrupt("snapshot table", off, "entry of %d bytes runs past the end of the table area", n)
		}
		b := make([]byte, n)
		if _, err := img.r.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("qcow2: reading snapshot table of %s: %w", img.path, err)
		}
		return b, nil
	}
	be := binary.BigEndian
	img.snapshots = make([]Snapshot, 0, min(h.NbSnapshots, 1024))
	for i := uint32(0); i < h.NbSnapshots; i++ {
		start := off
		b, err := read(snapshotHeaderSize)
		if err != nil {
			return err
		}
		s := Snapshot{
			L1TableOffset: be.Uint64(b[0:]),
			L1Size:        be.Uint32(b[8:]),
			DateSec:       be.Uint32(b[16:]),
			DateNsec:      be.Uint32(b[20:]),
			VMClockNsec:   be.Uint64(b[24:]),
			VMStateSize:   uint64(be.Uint32(b[32:])),
			Icount:        -1,
		}
		idSize := int64(be.Uint16(b[12:]))
		nameSize := int64(be.Uint16(b[14:]))
		extra := int64(be.Uint32(b[36:]))
		if extra > maxSnapshotExtra {
			return img.corrupt("snapshot extra_data_size", start+36, "%d exceeds %d", extra, maxSnapshotExtra)
		}
		off += snapshotHeaderSize
		if s.ExtraData, err = read(extra); err != nil {
			return err
		}
		off += extra
		if extra >= 8 {
			s.VMStateSize = be.Uint64(s.ExtraData)
		}
		if extra >= 16 {
			s.DiskSize = be.Uint64(s.ExtraData[8:])
		}
		if extra >= 24 {
			s.Icount = int64(be.Uint64(s.ExtraData[16:]))
		}
		id, err := read(idSize)
		if err != nil {
			return err
		}
		off += idSize
		name, err := read(nameSize)
		if err != nil {
			return err
		}
		off += nameSize
		s.ID, s.Name = string(id), string(name)
		off = (off + 7) &^ 7
		if uint64(s.L1Size)*8 > maxL1Size {
			return img.corrupt("snapshot l1_size", start+8, "snapshot %q: %d entries exceed the %d MiB limit", s.Name, s.L1Size, maxL1Size>>20)
		}
		if err := checkTable(img.path, fmt.Sprintf("snapshot %q l1_table_offset", s.Name), start, s.L1TableOffset, uint64(s.L1Size)*8, img.clusterSize, img.fileSize); err != nil {
			return err
		}
		img.snapshots = append(img.snapshots, s)
	}
	return nil
}
