package ext4

import (
	"slices"
)

// commit writes what the layer changed besides file data: directory
// blocks, extent trees, xattr blocks, inode table blocks, bitmaps, group
// descriptors and the superblock.
func (f *FS) commit() error {
	var meta int64
	buf := make([]byte, blockSize)
	// Directory blocks: allocate new ones (contiguous per directory),
	// then write every dirty one.
	for ino, in := range f.inodes {
		if in == nil || in.dir == nil {
			continue
		}
		d := in.dir
		if d.dirty {
			for i, blk := range d.blocks {
				if blk.phys != 0 {
					continue
				}
				b, _, err := f.allocRun(1)
				if err != nil {
					return err
				}
				blk.phys = b
				_ = i
			}
			in.extents = in.extents[:0]
			for i, blk := range d.blocks {
				in.addExtent(uint32(i), blk.phys, 1)
			}
			in.size = int64(len(d.blocks)) * blockSize
			d.dirty = false
			f.dirtyTree[uint32(ino)] = true
			f.touch(uint32(ino))
		}
		for i, blk := range d.blocks {
			if !blk.dirty {
				continue
			}
			d.encodeBlock(i, uint32(ino), buf)
			if err := f.writeBlock(blk.phys, buf); err != nil {
				return err
			}
			blk.dirty = false
			meta++
		}
	}
	// Extent trees and xattr blocks.
	for _, ino := range sortedKeys(f.dirtyTree) {
		in := f.inodes[ino]
		if in == nil {
			continue
		}
		if len(in.extents) > rootEntries || len(in.treeBlocks) > 0 {
			n := len(in.treeBlocks)
			if err := f.buildTree(in); err != nil {
				return err
			}
			meta += int64(len(in.treeBlocks) - n)
		}
		f.touch(ino)
	}
	for _, ino := range sortedKeys(f.dirtyInode) {
		in := f.inodes[ino]
		if in == nil {
			continue
		}
		if in.xattrBlock != 0 {
			f.freeBlocks(in.xattrBlock, 1)
			in.xattrBlock = 0
		}
		if len(in.xattrs) > 0 && !fitsInInode(in.xattrs) {
			blk, err := encodeXattrBlock(in.xattrs)
			if err != nil {
				return err
			}
			b, _, err := f.allocRun(1)
			if err != nil {
				return err
			}
			if err := f.writeBlock(b, blk); err != nil {
				return err
			}
			in.xattrBlock = b
			meta++
		}
		f.touch(ino)
	}
	clear(f.dirtyTree)
	clear(f.dirtyInode)
	// Inode tables.
	for _, b := range sortedKeys(f.dirtyItab) {
		g := (b - f.geo.inodeTable[0]) / itableBlocks
		// Find the group whose table holds b.
		for g = 0; g < f.geo.groups; g++ {
			if b >= f.geo.inodeTable[g] && b < f.geo.inodeTable[g]+itableBlocks {
				break
			}
		}
		first := g*inodesPerGroup + (b-f.geo.inodeTable[g])*inodesPerBlock + 1
		clear(buf)
		for i := uint32(0); i < inodesPerBlock; i++ {
			ino := first + i
			if int(ino) < len(f.inodes) && f.inodes[ino] != nil {
				if err := f.inodes[ino].encode(buf[i*inodeSize:(i+1)*inodeSize], ino); err != nil {
					return err
				}
			}
		}
		if err := f.writeBlock(b, buf); err != nil {
			return err
		}
		meta++
	}
	clear(f.dirtyItab)
	// Bitmaps.
	if !f.formatted {
		for g := uint32(0); g < f.geo.groups; g++ {
			f.dirtyBmp[f.geo.blockBmp[g]] = true
			f.dirtyBmp[f.geo.inodeBmp[g]] = true
		}
	}
	for _, b := range sortedKeys(f.dirtyBmp) {
		var data []byte
		for g := uint32(0); g < f.geo.groups; g++ {
			if f.geo.blockBmp[g] == b {
				data = f.blockBmp[g]
			} else if f.geo.inodeBmp[g] == b {
				data = f.inodeBmp[g]
			}
		}
		if err := f.writeBlock(b, data); err != nil {
			return err
		}
		meta++
	}
	clear(f.dirtyBmp)
	// Descriptors and superblock: the primary each layer, the backups
	// once (as mke2fs and the kernel do, backups keep the counts of when
	// they were written).
	gdt := f.encodeGDT()
	for g := uint32(0); g < f.geo.groups; g++ {
		if !hasSuper(g) || (g > 0 && f.formatted) {
			continue
		}
		start := f.geo.groupStart(g)
		sb := make([]byte, blockSize)
		off := 0
		if g == 0 {
			off = 1024
		}
		f.encodeSuper(sb[off:off+1024], g)
		if err := f.writeBlock(start, sb); err != nil {
			return err
		}
		if _, err := f.w.WriteAt(gdt, int64(start+1)*blockSize); err != nil {
			return err
		}
		meta += 1 + int64(f.geo.gdtBlocks)
	}
	f.formatted = true
	f.stats.MetaBlocks = meta
	return nil
}

func sortedKeys(m map[uint32]bool) []uint32 {
	keys := make([]uint32, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func (f *FS) encodeGDT() []byte {
	b := make([]byte, f.geo.gdtBlocks*blockSize)
	for g := uint32(0); g < f.geo.groups; g++ {
		d := b[g*descSize:]
		le32(d[0:], f.geo.blockBmp[g])
		le32(d[4:], f.geo.inodeBmp[g])
		le32(d[8:], f.geo.inodeTable[g])
		le16(d[12:], uint16(f.freeBlks[g]))
		le16(d[14:], uint16(f.freeInos[g]))
		le16(d[16:], uint16(f.dirs[g]))
	}
	return b
}

func (f *FS) encodeSuper(b []byte, group uint32) {
	var freeB, freeI uint64
	for g := uint32(0); g < f.geo.groups; g++ {
		freeB += uint64(f.freeBlks[g])
		freeI += uint64(f.freeInos[g])
	}
	le32(b[0x0:], f.geo.groups*inodesPerGroup)
	le32(b[0x4:], f.geo.blocks)
	le32(b[0xC:], uint32(freeB))
	le32(b[0x10:], uint32(freeI))
	le32(b[0x14:], 0) // first data block
	le32(b[0x18:], 2) // 4 KiB
	le32(b[0x1C:], 2)
	le32(b[0x20:], blocksPerGroup)
	le32(b[0x24:], blocksPerGroup)
	le32(b[0x28:], inodesPerGroup)
	le16(b[0x36:], 0xFFFF) // max mount count: -1
	le16(b[0x38:], 0xEF53)
	le16(b[0x3A:], 1) // clean
	le16(b[0x3C:], 1) // errors: continue
	le32(b[0x4C:], 1) // dynamic revision
	le32(b[0x54:], firstIno)
	le16(b[0x58:], inodeSize)
	le16(b[0x5A:], uint16(group))
	le32(b[0x5C:], compatExtAttr)
	le32(b[0x60:], incompatFiletype|incompatExtents|incompatFlexBG)
	le32(b[0x64:], roCompatSparse|roCompatLargeFile|roCompatDirNlink|roCompatExtraIsize)
	u := f.uuid()
	copy(b[0x68:], u[:])
	copy(b[0x78:0x88], f.opts.Label)
	hs := f.hashSeed()
	copy(b[0xEC:], hs[:])
	b[0xFC] = 1 // half_md4
	le16(b[0x15C:], 32)
	le16(b[0x15E:], 32)
	le32(b[0x160:], 1) // signed directory hash
	b[0x174] = logFlex
}
