package qcow2

import "encoding/binary"

// The on-disk encodings of table entries: L1 entries, L2 entries
// (standard, and the descriptor half of extended ones), refcount table
// entries and refcount block entries. Every bit test goes through here.

// Bits of L1 and L2 entries and of the subcluster bitmap of extended L2
// entries, and the offset field of refcount table entries.
const (
	entryCopied        = 1 << 63            // L1, L2: refcount is exactly 1, writable in place
	entryCompressed    = 1 << 62            // L2: compressed cluster descriptor follows
	entryZero          = 1 << 0             // standard L2: the cluster reads as zeros
	hostOffsetMask     = 0x00fffffffffffe00 // bits 9..55 of L1 and standard L2 entries
	bitmapAllocMask    = 0xffffffff         // extended L2 bitmap: allocation bits; zero bits are <<32
	refTableOffsetMask = 0xfffffffffffffe00 // bits 9..63 of a refcount table entry (0..8 reserved)
)

// l2Entry is an L2 entry (for extended L2, its first 64 bits; the
// subcluster bitmap is the second word, kept as a plain uint64).
type l2Entry uint64

// host returns the host cluster offset of a normal or preallocated zero
// cluster (0 if none). Meaningless for a compressed entry.
func (e l2Entry) host() int64 { return int64(e & hostOffsetMask) }

// copied reports QCOW_OFLAG_COPIED: the cluster's refcount is 1.
func (e l2Entry) copied() bool { return e&entryCopied != 0 }

// compressed reports a compressed cluster descriptor.
func (e l2Entry) compressed() bool { return e&entryCompressed != 0 }

// zero reports the zero flag of a standard L2 entry (extended L2 entries
// keep zero bits in the bitmap instead).
func (e l2Entry) zero() bool { return e&entryZero != 0 }

// compressedLocation decodes a compressed cluster descriptor of an image
// with 1<<clusterBits byte clusters into the host byte offset and the
// number of bytes to read. off+size is sector aligned.
func (e l2Entry) compressedLocation(clusterBits uint32) (off, size int64) {
	shift := 62 - (clusterBits - 8)
	desc := uint64(e) &^ (entryCopied | entryCompressed)
	off = int64(desc & (1<<shift - 1))
	sectors := int64(desc>>shift) + 1
	return off, sectors*512 - off&511
}

// dataEntry returns the L2 entry of a cluster the image owns alone at
// host offset host.
func dataEntry(host int64) l2Entry { return l2Entry(host) | entryCopied }

// compressedEntry encodes the descriptor of size compressed bytes at host
// offset off in an image with 1<<clusterBits byte clusters.
func compressedEntry(clusterBits uint32, off, size int64) l2Entry {
	shift := 62 - (clusterBits - 8)
	sectors := uint64((off+size-1)>>9 - off>>9)
	return entryCompressed | l2Entry(sectors<<shift) | l2Entry(off)
}

// l1Entry is an L1 table entry: the offset of an L2 table.
type l1Entry uint64

// l2Offset returns the offset of the L2 table (0: none allocated).
func (e l1Entry) l2Offset() int64 { return int64(e & hostOffsetMask) }

// copied reports QCOW_OFLAG_COPIED: the L2 table's refcount is 1.
func (e l1Entry) copied() bool { return e&entryCopied != 0 }

// tableEntry returns the L1 entry of an L2 table the image owns alone at
// host offset off.
func tableEntry(off int64) l1Entry { return l1Entry(off) | entryCopied }

// refTableEntry is a refcount table entry: the offset of a refcount block.
type refTableEntry uint64

// blockOffset returns the offset of the refcount block (0: none).
func (e refTableEntry) blockOffset() int64 { return int64(e & refTableOffsetMask) }

// getRefcount returns entry i of a refcount block with 1<<order bit
// entries: widths under 8 bits pack least significant bit first, wider
// ones are big-endian.
func getRefcount(blk []byte, order uint32, i int64) uint64 {
	switch order {
	case 0, 1, 2:
		w := int64(1) << order
		bit := i * w
		return uint64(blk[bit/8]>>(bit%8)) & (1<<w - 1)
	case 3:
		return uint64(blk[i])
	case 4:
		return uint64(binary.BigEndian.Uint16(blk[i*2:]))
	case 5:
		return uint64(binary.BigEndian.Uint32(blk[i*4:]))
	default:
		return binary.BigEndian.Uint64(blk[i*8:])
	}
}

// setRefcount stores v (which must fit) as entry i of a refcount block
// with 1<<order bit entries; the inverse of getRefcount.
func setRefcount(blk []byte, order uint32, i int64, v uint64) {
	switch order {
	case 0, 1, 2:
		w := int64(1) << order
		bit := i * w
		sh := bit % 8
		mask := byte(1<<w-1) << sh
		blk[bit/8] = blk[bit/8]&^mask | byte(v)<<sh&mask
	case 3:
		blk[i] = byte(v)
	case 4:
		binary.BigEndian.PutUint16(blk[i*2:], uint16(v))
	case 5:
		binary.BigEndian.PutUint32(blk[i*4:], uint32(v))
	default:
		binary.BigEndian.PutUint64(blk[i*8:], v)
	}
}

// refcountMax returns the largest refcount 1<<order bit entries hold.
func refcountMax(order uint32) uint64 {
	if order >= 6 {
		return ^uint64(0)
	}
	return 1<<(1<<order) - 1
}

// bitmapInvalid reports an extended L2 subcluster bitmap that QEMU
// refuses: a subcluster both allocated and zero, or allocation bits in
// an entry without a host cluster.
func bitmapInvalid(host int64, bitmap uint64) bool {
	return bitmap&(bitmap>>32)&bitmapAllocMask != 0 || host == 0 && bitmap&bitmapAllocMask != 0
}
