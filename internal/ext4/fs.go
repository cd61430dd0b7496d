// Package ext4 builds an ext4 filesystem from OCI layer tarballs without
// mkfs or a mount. An FS is a model of the filesystem in memory (inodes,
// directories, extents, bitmaps); ApplyLayer applies one layer tar to it
// (whiteouts and opaque directories included), writes the new file data
// as it reads it and, at the end, the metadata blocks the layer changed.
// Written to a fresh qcow2 overlay per layer, each level holds only the
// blocks that layer changed.
//
// The filesystem: 4 KiB blocks, no journal, extents, filetype, flex_bg,
// sparse_super, large_file, dir_nlink, extra_isize, 256-byte inodes,
// linear directories, xattrs in the inode or in one block, no checksums.
// The geometry depends on the size alone; the UUID and hash seed on
// Options.Seed; every other field on the layers applied so far. Blocks and
// inodes are allocated from a cursor that only moves forward, so what one
// layer frees is never reused by a later one, and the blocks earlier
// layers wrote stay untouched except for metadata the later layer changes.
package ext4

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
)

// Options configure New. Size is required.
type Options struct {
	// Size is the filesystem size in bytes (rounded down to 4 KiB; a last
	// block group too small for its metadata is dropped). From MinSize
	// to MaxSize.
	Size int64
	// Seed determines the UUID and directory hash seed. Callers pass
	// something that identifies the first layer, so images sharing it
	// share the filesystem identity. Zero is allowed.
	Seed [32]byte
	// Label is the volume label (at most 16 bytes).
	Label string
}

// FS is an ext4 filesystem being built. It is not safe for concurrent
// use. After an error from ApplyLayer the FS is unusable (the error is
// sticky): the layer was half applied.
type FS struct {
	geo  *geometry
	opts Options

	inodes   []*inode // by inode number; nil is free
	nextIno  uint32   // allocation cursor (never moves back)
	nextBlk  uint32   // allocation cursor
	blockBmp [][]byte // per group, lazily allocated
	inodeBmp [][]byte
	freeBlks []uint32 // per group
	freeInos []uint32
	dirs     []uint32 // used dirs per group

	dirtyBmp   map[uint32]bool // block numbers of dirty bitmap blocks
	dirtyItab  map[uint32]bool // inode table block numbers
	dirtyInode map[uint32]bool // inodes whose xattr block needs rebuilding
	dirtyTree  map[uint32]bool // inodes whose extent tree needs rebuilding
	formatted  bool
	err        error

	w     io.WriterAt
	stats LayerStats
}

// New returns an empty filesystem (root directory and lost+found) of the
// given size. Nothing is written until the first ApplyLayer.
func New(opts Options) (*FS, error) {
	geo, err := newGeometry(opts.Size)
	if err != nil {
		return nil, err
	}
	if len(opts.Label) > 16 {
		return nil, fmt.Errorf("ext4: label %q is longer than 16 bytes", opts.Label)
	}
	f := &FS{
		geo: geo, opts: opts,
		inodes:     make([]*inode, firstIno+1, 1024),
		nextIno:    firstIno + 1,
		blockBmp:   make([][]byte, geo.groups),
		inodeBmp:   make([][]byte, geo.groups),
		freeBlks:   make([]uint32, geo.groups),
		freeInos:   make([]uint32, geo.groups),
		dirs:       make([]uint32, geo.groups),
		dirtyBmp:   map[uint32]bool{},
		dirtyItab:  map[uint32]bool{},
		dirtyInode: map[uint32]bool{},
		dirtyTree:  map[uint32]bool{},
	}
	for g := uint32(0); g < geo.groups; g++ {
		f.freeBlks[g] = geo.groupBlocks(g)
		f.freeInos[g] = inodesPerGroup
		bb := make([]byte, blockSize)
		// Bits past the end of a short last group are set.
		for b := geo.groupBlocks(g); b < blocksPerGroup; b++ {
			bb[b/8] |= 1 << (b % 8)
		}
		ib := make([]byte, blockSize)
		for i := uint32(inodesPerGroup); i < 8*blockSize; i++ {
			ib[i/8] |= 1 << (i % 8)
		}
		f.blockBmp[g], f.inodeBmp[g] = bb, ib
	}
	// Fixed metadata: superblock copies, descriptors, bitmaps, tables.
	for g := uint32(0); g < geo.groups; g++ {
		for b := geo.groupStart(g); b < geo.metaEnd(g); b++ {
			f.markBlock(b, true)
		}
	}
	f.nextBlk = geo.metaEnd(0)
	for ino := uint32(1); ino < firstIno; ino++ {
		if ino == rootIno {
			continue // setInode below
		}
		f.markInode(ino, true)
	}
	root := &inode{mode: sIFDIR | 0o755, links: 2, dir: newDir(rootIno, rootIno)}
	f.setInode(rootIno, root)
	lf := &inode{mode: sIFDIR | 0o700, links: 2, dir: newDir(lostFoundIno, rootIno)}
	f.setInode(lostFoundIno, lf)
	f.link(root, "lost+found", lostFoundIno, lf)
	return f, nil
}

// BlockSize is the filesystem block size, 4096.
func (f *FS) BlockSize() int { return blockSize }

// Size is the filesystem size in bytes (a multiple of 4 KiB, at most
// Options.Size).
func (f *FS) Size() int64 { return int64(f.geo.blocks) * blockSize }

// UsedBlocks is the number of blocks in use.
func (f *FS) UsedBlocks() int64 {
	var free int64
	for _, n := range f.freeBlks {
		free += int64(n)
	}
	return int64(f.geo.blocks) - free
}

func (f *FS) uuid() [16]byte {
	h := sha256.Sum256(append([]byte("imgtool ext4 uuid\x00"), f.opts.Seed[:]...))
	var u [16]byte
	copy(u[:], h[:16])
	u[6] = u[6]&0x0f | 0x40 // version 4 layout, as mke2fs writes
	u[8] = u[8]&0x3f | 0x80
	return u
}

func (f *FS) hashSeed() [16]byte {
	h := sha256.Sum256(append([]byte("imgtool ext4 hash seed\x00"), f.opts.Seed[:]...))
	var u [16]byte
	copy(u[:], h[:16])
	return u
}

// markBlock sets or clears block b in its group's bitmap.
func (f *FS) markBlock(b uint32, used bool) {
	g, i := b/blocksPerGroup, b%blocksPerGroup
	bm := f.blockBmp[g]
	bit := byte(1) << (i % 8)
	if (bm[i/8]&bit != 0) == used {
		panic(fmt.Sprintf("ext4: block %d already %v", b, used)) // an allocator bug, never input
	}
	bm[i/8] ^= bit
	if used {
		f.freeBlks[g]--
	} else {
		f.freeBlks[g]++
	}
	f.dirtyBmp[f.geo.blockBmp[g]] = true
}

func (f *FS) blockUsed(b uint32) bool {
	g, i := b/blocksPerGroup, b%blocksPerGroup
	return f.blockBmp[g][i/8]&(1<<(i%8)) != 0
}

func (f *FS) markInode(ino uint32, used bool) {
	g, i := (ino-1)/inodesPerGroup, (ino-1)%inodesPerGroup
	bm := f.inodeBmp[g]
	bm[i/8] ^= 1 << (i % 8)
	if used {
		f.freeInos[g]--
	} else {
		f.freeInos[g]++
	}
	f.dirtyBmp[f.geo.inodeBmp[g]] = true
}

// allocRun allocates up to n contiguous blocks at the cursor and returns
// the first and how many (at least 1).
func (f *FS) allocRun(n uint32) (uint32, uint32, error) {
	for f.nextBlk < f.geo.blocks && f.blockUsed(f.nextBlk) {
		f.nextBlk++
	}
	if f.nextBlk >= f.geo.blocks {
		return 0, 0, fmt.Errorf("%w: no free blocks left in %d MiB", ErrNoSpace, f.Size()>>20)
	}
	start := f.nextBlk
	var got uint32
	for got < n && f.nextBlk < f.geo.blocks && !f.blockUsed(f.nextBlk) {
		f.markBlock(f.nextBlk, true)
		f.nextBlk++
		got++
	}
	return start, got, nil
}

func (f *FS) freeBlocks(start, n uint32) {
	for b := start; b < start+n; b++ {
		f.markBlock(b, false)
	}
	f.stats.FreedBlocks += int64(n)
}

func (f *FS) allocInode(in *inode) (uint32, error) {
	if f.nextIno > uint32(f.geo.groups)*inodesPerGroup {
		return 0, fmt.Errorf("%w: all %d inodes used", ErrNoSpace, f.geo.groups*inodesPerGroup)
	}
	ino := f.nextIno
	f.nextIno++
	f.setInode(ino, in)
	return ino, nil
}

func (f *FS) setInode(ino uint32, in *inode) {
	for uint32(len(f.inodes)) <= ino {
		f.inodes = append(f.inodes, nil)
	}
	f.inodes[ino] = in
	in.ino = ino
	f.markInode(ino, true)
	if in.isDir() {
		f.dirs[(ino-1)/inodesPerGroup]++
	}
	f.touch(ino)
}

// touch marks inode ino's table block dirty.
func (f *FS) touch(ino uint32) {
	f.dirtyItab[f.itableBlock(ino)] = true
}

func (f *FS) itableBlock(ino uint32) uint32 {
	g, i := (ino-1)/inodesPerGroup, (ino-1)%inodesPerGroup
	return f.geo.inodeTable[g] + i/inodesPerBlock
}

// freeInode releases inode ino and all its blocks.
func (f *FS) freeInode(ino uint32) {
	in := f.inodes[ino]
	if in.dir == nil {
		for _, e := range in.extents {
			f.freeBlocks(e.phys, e.n)
		}
	}
	for _, b := range in.treeBlocks {
		f.freeBlocks(b, 1)
	}
	if in.xattrBlock != 0 {
		f.freeBlocks(in.xattrBlock, 1)
	}
	if in.dir != nil {
		for _, db := range in.dir.blocks {
			if db.phys != 0 {
				f.freeBlocks(db.phys, 1)
			}
		}
		f.dirs[(ino-1)/inodesPerGroup]--
	}
	f.inodes[ino] = nil
	delete(f.dirtyInode, ino)
	delete(f.dirtyTree, ino)
	f.markInode(ino, false)
	f.touch(ino)
}

func le16(b []byte, v uint16) { binary.LittleEndian.PutUint16(b, v) }
func le32(b []byte, v uint32) { binary.LittleEndian.PutUint32(b, v) }
