package ext4

import (
	"errors"
	"fmt"
)

// On-disk constants. The filesystem always uses 4 KiB blocks, groups of
// 32768 blocks, 256-byte inodes and flex_bg groups of 16.
const (
	blockSize      = 4096
	blocksPerGroup = 8 * blockSize
	inodeSize      = 256
	inodesPerBlock = blockSize / inodeSize
	// inodesPerGroup is fixed (one inode per 16 KiB, mke2fs's default
	// ratio), so the geometry depends on the size alone.
	inodesPerGroup = 8192
	itableBlocks   = inodesPerGroup * inodeSize / blockSize
	logFlex        = 4
	groupsPerFlex  = 1 << logFlex
	descSize       = 32
	firstIno       = 11
	rootIno        = 2
	lostFoundIno   = 11

	// MinSize is the smallest filesystem New accepts.
	MinSize = 16 << 20
	// MaxSize is the largest: 1 TiB. Every group's bitmaps are kept in
	// memory and written with the first layer (no uninit_bg), 64 KiB per
	// GiB of size.
	MaxSize = 1 << 40
)

// Feature flags written to the superblock (the kernel's names).
const (
	compatExtAttr      = 0x8
	incompatFiletype   = 0x2
	incompatExtents    = 0x40
	incompatFlexBG     = 0x200
	roCompatSparse     = 0x1
	roCompatLargeFile  = 0x2
	roCompatDirNlink   = 0x20
	roCompatExtraIsize = 0x40
)

// ErrNoSpace means the layers need more blocks or inodes than the
// filesystem has.
var ErrNoSpace = errors.New("ext4: filesystem full")

// geometry is the fixed layout of a filesystem of a given size.
type geometry struct {
	blocks     uint32 // total blocks
	groups     uint32
	gdtBlocks  uint32
	blockBmp   []uint32 // per group
	inodeBmp   []uint32
	inodeTable []uint32
}

// hasSuper reports whether group g holds a superblock backup
// (sparse_super: groups 0, 1 and powers of 3, 5 and 7).
func hasSuper(g uint32) bool {
	if g <= 1 {
		return true
	}
	for _, b := range []uint32{3, 5, 7} {
		n := b
		for n < g {
			n *= b
		}
		if n == g {
			return true
		}
	}
	return false
}

func (geo *geometry) groupStart(g uint32) uint32 { return g * blocksPerGroup }

func (geo *geometry) groupBlocks(g uint32) uint32 {
	if g == geo.groups-1 {
		return geo.blocks - g*blocksPerGroup
	}
	return blocksPerGroup
}

// superBlocks is the number of blocks a superblock copy and its group
// descriptors take at the start of group g.
func (geo *geometry) superBlocks(g uint32) uint32 {
	if hasSuper(g) {
		return 1 + geo.gdtBlocks
	}
	return 0
}

func newGeometry(size int64) (*geometry, error) {
	if size < MinSize || size > MaxSize {
		return nil, fmt.Errorf("ext4: size %d out of range (%d to %d bytes)", size, int64(MinSize), int64(MaxSize))
	}
	blocks := uint64(size / blockSize)
	if blocks >= 1<<32 {
		blocks = 1<<32 - 1
	}
	for {
		geo := &geometry{blocks: uint32(blocks)}
		geo.groups = uint32((blocks + blocksPerGroup - 1) / blocksPerGroup)
		geo.gdtBlocks = (geo.groups*descSize + blockSize - 1) / blockSize
		if err := geo.place(); err != nil {
			// The last group is too small for what it must hold: drop it,
			// as mke2fs does.
			last := blocks % blocksPerGroup
			if last == 0 || geo.groups == 1 {
				return nil, err
			}
			blocks -= last
			continue
		}
		return geo, nil
	}
}

// place puts the bitmaps and inode tables of each flex group at the
// start of its first group, after any superblock copy.
func (geo *geometry) place() error {
	n := geo.groups
	geo.blockBmp = make([]uint32, n)
	geo.inodeBmp = make([]uint32, n)
	geo.inodeTable = make([]uint32, n)
	for lead := uint32(0); lead < n; lead += groupsPerFlex {
		members := min(groupsPerFlex, n-lead)
		at := geo.groupStart(lead) + geo.superBlocks(lead)
		need := members * (2 + itableBlocks)
		// Leave room for a root directory, lost+found and some data.
		if at-geo.groupStart(lead)+need+16 > geo.groupBlocks(lead) {
			return fmt.Errorf("ext4: group %d is too small for its metadata", lead)
		}
		for i := uint32(0); i < members; i++ {
			geo.blockBmp[lead+i] = at + i
			geo.inodeBmp[lead+i] = at + members + i
			geo.inodeTable[lead+i] = at + 2*members + i*itableBlocks
		}
	}
	for g := uint32(0); g < n; g++ {
		if geo.superBlocks(g) >= geo.groupBlocks(g) {
			return fmt.Errorf("ext4: group %d is too small", g)
		}
	}
	return nil
}

// metaEnd returns the first block after the fixed metadata at the start
// of group g (superblock copy, descriptors, flex group tables).
func (geo *geometry) metaEnd(g uint32) uint32 {
	end := geo.groupStart(g) + geo.superBlocks(g)
	if g%groupsPerFlex == 0 {
		members := min(groupsPerFlex, geo.groups-g)
		end += members * (2 + itableBlocks)
	}
	return end
}
