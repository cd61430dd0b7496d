package ext4

import "fmt"

// dir is a linear directory: its entries in blocks, in the order they
// are stored. New entries go into the last block, or a new one. Block 0
// starts with "." and "..".
type dir struct {
	blocks  []*dirBlock
	index   map[string]*dentry
	subdirs uint32
	parent  uint32
	dirty   bool // a block was added: extents to rebuild at commit
}

type dirBlock struct {
	entries []*dentry
	used    int    // bytes the entries need
	phys    uint32 // 0: not yet allocated
	dirty   bool
}

type dentry struct {
	name  string
	ino   uint32
	ftype uint8
	blk   *dirBlock
}

// maxNameLen is the longest name a directory entry can hold.
const maxNameLen = 255

func recLen(nameLen int) int { return (8 + nameLen + 3) &^ 3 }

func newDir(self, parent uint32) *dir {
	d := &dir{index: map[string]*dentry{}, parent: parent, dirty: true}
	blk := &dirBlock{used: recLen(1) + recLen(2), dirty: true}
	d.blocks = []*dirBlock{blk}
	return d
}

// lookup returns the inode number of name in d, or 0.
func (d *dir) lookup(name string) uint32 {
	if e := d.index[name]; e != nil {
		return e.ino
	}
	return 0
}

// link adds the entry name -> ino to the directory inode p and counts the
// link on child.
func (f *FS) link(p *inode, name string, ino uint32, child *inode) {
	d := p.dir
	e := &dentry{name: name, ino: ino, ftype: child.fileType()}
	rl := recLen(len(name))
	last := d.blocks[len(d.blocks)-1]
	if last.used+rl > blockSize {
		last = &dirBlock{}
		d.blocks = append(d.blocks, last)
		d.dirty = true
	}
	last.entries = append(last.entries, e)
	last.used += rl
	last.dirty = true
	e.blk = last
	d.index[name] = e
	if child.isDir() {
		d.subdirs++
		child.dir.parent = f.inoOf(p)
	} else {
		child.links++
	}
	f.touchInode(child)
	f.touchInode(p)
}

// unlink removes name from directory p (which must hold it) and returns
// the inode it named, dropping that inode (recursively for directories)
// when its last link goes.
func (f *FS) unlink(p *inode, name string) {
	d := p.dir
	e := d.index[name]
	delete(d.index, name)
	blk := e.blk
	for i, x := range blk.entries {
		if x == e {
			blk.entries = append(blk.entries[:i], blk.entries[i+1:]...)
			break
		}
	}
	blk.used -= recLen(len(name))
	blk.dirty = true
	child := f.inodes[e.ino]
	if child.isDir() {
		d.subdirs--
		f.touchInode(p)
		f.removeTree(e.ino)
		return
	}
	child.links--
	if child.links == 0 {
		f.freeInode(e.ino)
	} else {
		f.touchInode(child)
	}
}

// removeTree frees directory ino and everything below it.
func (f *FS) removeTree(ino uint32) {
	in := f.inodes[ino]
	for _, blk := range in.dir.blocks {
		for _, e := range blk.entries {
			c := f.inodes[e.ino]
			if c.isDir() {
				f.removeTree(e.ino)
				continue
			}
			c.links--
			if c.links == 0 {
				f.freeInode(e.ino)
			} else {
				f.touchInode(c)
			}
		}
	}
	f.freeInode(ino)
}

// encodeBlock serializes directory block i of d (owned by inode self).
func (d *dir) encodeBlock(i int, self uint32, buf []byte) {
	clear(buf)
	blk := d.blocks[i]
	off := 0
	put := func(ino uint32, name string, ftype uint8, last bool) {
		rl := recLen(len(name))
		if last {
			rl = blockSize - off
		}
		le32(buf[off:], ino)
		le16(buf[off+4:], uint16(rl))
		buf[off+6] = byte(len(name))
		buf[off+7] = ftype
		copy(buf[off+8:], name)
		off += rl
	}
	if i == 0 {
		put(self, ".", 2, false)
		put(d.parent, "..", 2, len(blk.entries) == 0)
	} else if len(blk.entries) == 0 {
		// An empty block: one unused entry spanning it.
		le16(buf[4:], blockSize)
		return
	}
	for j, e := range blk.entries {
		put(e.ino, e.name, e.ftype, j == len(blk.entries)-1)
	}
}

// inoOf finds the inode number of in; directories know it through their
// "." entry being the inode itself, so keep a reverse pointer instead.
func (f *FS) inoOf(in *inode) uint32 {
	if in.ino == 0 {
		panic(fmt.Sprintf("ext4: internal: inode without number: %+v", in))
	}
	return in.ino
}

// touchInode marks in's table block dirty.
func (f *FS) touchInode(in *inode) { f.touch(in.ino) }
