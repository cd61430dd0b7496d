package ext4

import (
	"fmt"
)

// File types in i_mode.
const (
	sIFMT   = 0o170000
	sIFSOCK = 0o140000
	sIFLNK  = 0o120000
	sIFREG  = 0o100000
	sIFBLK  = 0o060000
	sIFDIR  = 0o040000
	sIFCHR  = 0o020000
	sIFIFO  = 0o010000

	flagExtents = 0x80000
	// maxExtentLen is the longest initialized extent.
	maxExtentLen = 32768
)

// extent maps n blocks from logical block logical to physical block phys.
type extent struct {
	logical, phys, n uint32
}

// inode is the in-memory form of one inode.
type inode struct {
	ino        uint32
	mode       uint16
	uid, gid   uint32
	size       int64
	mtime      int64 // seconds
	mtimeNsec  uint32
	links      uint32
	extents    []extent // data (regular files, slow symlinks; dirs at commit)
	treeBlocks []uint32 // extent index and leaf blocks
	root       []byte   // i_block when the extents need a tree
	fastLink   []byte   // fast symlink target
	slowLink   []byte   // slow symlink target (also in its block)
	rdevMajor  uint32
	rdevMinor  uint32
	xattrs     []xattr // sorted
	xattrBlock uint32
	dir        *dir
}

func (in *inode) isDir() bool { return in.mode&sIFMT == sIFDIR }

// fileType is the directory entry file type of in.
func (in *inode) fileType() uint8 {
	switch in.mode & sIFMT {
	case sIFREG:
		return 1
	case sIFDIR:
		return 2
	case sIFCHR:
		return 3
	case sIFBLK:
		return 4
	case sIFIFO:
		return 5
	case sIFSOCK:
		return 6
	case sIFLNK:
		return 7
	}
	return 0
}

// dataBlocks counts the blocks in in.extents.
func (in *inode) dataBlocks() uint64 {
	var n uint64
	for _, e := range in.extents {
		n += uint64(e.n)
	}
	return n
}

// encode writes the 256-byte on-disk inode into b.
func (in *inode) encode(b []byte, ino uint32) error {
	clear(b)
	le16(b[0x0:], in.mode)
	le16(b[0x2:], uint16(in.uid))
	le32(b[0x4:], uint32(in.size))
	t, extra := encodeTime(in.mtime, in.mtimeNsec)
	le32(b[0x8:], t)  // atime
	le32(b[0xC:], t)  // ctime
	le32(b[0x10:], t) // mtime
	le16(b[0x18:], uint16(in.gid))
	links := in.links
	if in.isDir() {
		links = 2 + in.dir.subdirs
	}
	if in.isDir() && links >= 65000 {
		links = 1 // dir_nlink: too many to count
	}
	le16(b[0x1A:], uint16(links))
	sectors := (in.dataBlocks() + uint64(len(in.treeBlocks))) * (blockSize / 512)
	if in.xattrBlock != 0 {
		sectors += blockSize / 512
	}
	if sectors >= 1<<32 {
		return fmt.Errorf("ext4: inode %d: %d blocks is too many without huge_file", ino, sectors/8)
	}
	le32(b[0x1C:], uint32(sectors))
	var flags uint32
	switch {
	case in.fastLink != nil:
		copy(b[0x28:0x28+60], in.fastLink)
	case in.mode&sIFMT == sIFCHR || in.mode&sIFMT == sIFBLK:
		if in.rdevMajor < 256 && in.rdevMinor < 256 {
			le32(b[0x28:], in.rdevMajor<<8|in.rdevMinor)
		} else {
			le32(b[0x2C:], in.rdevMinor&0xff|in.rdevMajor<<8|(in.rdevMinor&^0xff)<<12)
		}
	case in.mode&sIFMT == sIFREG || in.mode&sIFMT == sIFDIR || in.mode&sIFMT == sIFLNK:
		flags |= flagExtents
		if err := in.encodeExtentRoot(b[0x28 : 0x28+60]); err != nil {
			return fmt.Errorf("ext4: inode %d: %w", ino, err)
		}
	}
	le32(b[0x20:], flags)
	le32(b[0x64:], 0) // generation
	le32(b[0x68:], in.xattrBlock)
	le32(b[0x6C:], uint32(uint64(in.size)>>32))
	le16(b[0x78:], uint16(in.uid>>16))
	le16(b[0x7A:], uint16(in.gid>>16))
	le16(b[0x80:], 32) // i_extra_isize
	le32(b[0x84:], extra)
	le32(b[0x88:], extra)
	le32(b[0x8C:], extra)
	le32(b[0x90:], t) // crtime
	le32(b[0x94:], extra)
	if len(in.xattrs) > 0 && in.xattrBlock == 0 {
		if !encodeInodeXattrs(b[128+32:], in.xattrs) {
			return fmt.Errorf("ext4: inode %d: xattrs do not fit in the inode", ino)
		}
	}
	return nil
}

// encodeTime splits a time into the 32-bit seconds field and the extra
// field (nanoseconds << 2 | epoch bits).
func encodeTime(sec int64, nsec uint32) (uint32, uint32) {
	lo := uint32(sec)
	epoch := uint32((sec-int64(int32(lo)))>>32) & 3
	return lo, nsec<<2 | epoch
}
