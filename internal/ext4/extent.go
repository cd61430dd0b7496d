package ext4

import "fmt"

const (
	extentMagic   = 0xF30A
	rootEntries   = 4
	blockEntries  = (blockSize - 12) / 12
	maxTreeDepth  = 5
	extentHdrSize = 12
)

// addExtent appends a mapping to in.extents, merging with the last one
// when both are contiguous.
func (in *inode) addExtent(logical, phys, n uint32) {
	if k := len(in.extents); k > 0 {
		e := &in.extents[k-1]
		if e.logical+e.n == logical && e.phys+e.n == phys && e.n+n <= maxExtentLen {
			e.n += n
			return
		}
	}
	for n > 0 {
		c := min(n, maxExtentLen)
		in.extents = append(in.extents, extent{logical, phys, c})
		logical, phys, n = logical+c, phys+c, n-c
	}
}

func putHeader(b []byte, entries, max, depth int) {
	le16(b[0:], extentMagic)
	le16(b[2:], uint16(entries))
	le16(b[4:], uint16(max))
	le16(b[6:], uint16(depth))
	le32(b[8:], 0)
}

func putLeaf(b []byte, e extent) {
	le32(b[0:], e.logical)
	le16(b[4:], uint16(e.n))
	le16(b[6:], 0)
	le32(b[8:], e.phys)
}

func putIndex(b []byte, logical, leaf uint32) {
	le32(b[0:], logical)
	le32(b[4:], leaf)
	le16(b[8:], 0)
	le16(b[10:], 0)
}

// treeNode is an entry one level up: the first logical block it covers
// and the block holding it.
type treeNode struct{ logical, block uint32 }

// buildTree gives in a new extent tree when its extents do not fit in the
// inode: the old tree blocks are freed, new ones allocated and written.
// in.root then holds the 60-byte root.
func (f *FS) buildTree(in *inode) error {
	for _, b := range in.treeBlocks {
		f.freeBlocks(b, 1)
	}
	in.treeBlocks = nil
	in.root = nil
	if len(in.extents) <= rootEntries {
		return nil
	}
	// Leaves.
	var level []treeNode
	nblocks := (len(in.extents) + blockEntries - 1) / blockEntries
	blks, err := f.allocTree(in, nblocks)
	if err != nil {
		return err
	}
	for i := 0; i < nblocks; i++ {
		ext := in.extents[i*blockEntries : min(len(in.extents), (i+1)*blockEntries)]
		buf := make([]byte, blockSize)
		putHeader(buf, len(ext), blockEntries, 0)
		for j, e := range ext {
			putLeaf(buf[extentHdrSize+12*j:], e)
		}
		if err := f.writeBlock(blks[i], buf); err != nil {
			return err
		}
		level = append(level, treeNode{ext[0].logical, blks[i]})
	}
	depth := 1
	for len(level) > rootEntries {
		if depth >= maxTreeDepth {
			return fmt.Errorf("ext4: extent tree deeper than %d", maxTreeDepth)
		}
		nblocks := (len(level) + blockEntries - 1) / blockEntries
		blks, err := f.allocTree(in, nblocks)
		if err != nil {
			return err
		}
		var up []treeNode
		for i := 0; i < nblocks; i++ {
			nodes := level[i*blockEntries : min(len(level), (i+1)*blockEntries)]
			buf := make([]byte, blockSize)
			putHeader(buf, len(nodes), blockEntries, depth)
			for j, n := range nodes {
				putIndex(buf[extentHdrSize+12*j:], n.logical, n.block)
			}
			if err := f.writeBlock(blks[i], buf); err != nil {
				return err
			}
			up = append(up, treeNode{nodes[0].logical, blks[i]})
		}
		level = up
		depth++
	}
	root := make([]byte, 60)
	putHeader(root, len(level), rootEntries, depth)
	for j, n := range level {
		putIndex(root[extentHdrSize+12*j:], n.logical, n.block)
	}
	in.root = root
	return nil
}

// allocTree allocates n tree blocks for in.
func (f *FS) allocTree(in *inode, n int) ([]uint32, error) {
	var out []uint32
	for len(out) < n {
		s, c, err := f.allocRun(uint32(n - len(out)))
		if err != nil {
			return nil, err
		}
		for i := uint32(0); i < c; i++ {
			out = append(out, s+i)
		}
	}
	in.treeBlocks = append(in.treeBlocks, out...)
	return out, nil
}

// encodeExtentRoot writes the root of in's extent tree into the 60 bytes
// of i_block.
func (in *inode) encodeExtentRoot(b []byte) error {
	if in.root != nil {
		copy(b, in.root)
		return nil
	}
	if len(in.extents) > rootEntries {
		return fmt.Errorf("internal: %d extents and no tree", len(in.extents))
	}
	putHeader(b, len(in.extents), rootEntries, 0)
	for j, e := range in.extents {
		putLeaf(b[extentHdrSize+12*j:], e)
	}
	return nil
}
