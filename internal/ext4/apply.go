package ext4

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/imgtool/imgtool/internal/tarname"
	"github.com/imgtool/imgtool/internal/zero"
)

// Errors for bad layer content.
var (
	ErrUnsafePath  = errors.New("ext4: unsafe path in layer")
	ErrUnsupported = errors.New("ext4: unsupported tar entry")
	ErrNameTooLong = errors.New("ext4: name longer than 255 bytes")
	ErrHardlink    = errors.New("ext4: bad hardlink")
	ErrBadWhiteout = errors.New("ext4: invalid whiteout")
)

// LayerStats describe what one ApplyLayer call wrote.
type LayerStats struct {
	Entries     int   // tar entries applied
	DataBytes   int64 // file data bytes written (holes excluded)
	DataBlocks  int64 // blocks of file data written
	MetaBlocks  int64 // metadata blocks written at the end of the layer
	FreedBlocks int64 // blocks freed (never reused by later layers)
}

const (
	whPrefix   = tarname.WhiteoutPrefix
	opaqueName = tarname.OpaqueMarker
	maxLinks   = 40
	// maxLinkCount is the most names a file may have (the kernel's
	// EXT4_LINK_MAX; i_links_count is 16 bits).
	maxLinkCount = 65000
)

// layerState is the state of one ApplyLayer call.
type layerState struct {
	ctx     context.Context
	touched map[*dentry]bool // entries this layer wrote
	seen    map[string]bool
	buf     []byte
}

// ApplyLayer applies the uncompressed layer tar read from r and writes
// every block it changes to w (file data as it is read, metadata at the
// end). The first call also writes the superblock, descriptors and
// bitmaps. w is typically a fresh qcow2 overlay of the previous level.
func (f *FS) ApplyLayer(ctx context.Context, r io.Reader, w io.WriterAt) (LayerStats, error) {
	if f.err != nil {
		return LayerStats{}, f.err
	}
	f.w = w
	f.stats = LayerStats{}
	err := f.applyLayer(ctx, r)
	if err == nil {
		err = f.commit()
	}
	f.w = nil
	if err != nil {
		f.err = fmt.Errorf("ext4: an earlier layer failed: %w", err)
		return f.stats, err
	}
	return f.stats, nil
}

func (f *FS) applyLayer(ctx context.Context, r io.Reader) error {
	tr := tar.NewReader(r)
	st := &layerState{ctx: ctx, touched: map[*dentry]bool{}, seen: map[string]bool{}, buf: make([]byte, 1<<20)}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("ext4: reading layer tar: %w", err)
		}
		if err := f.entry(st, hdr, tr); err != nil {
			return fmt.Errorf("%s: %w", hdr.Name, err)
		}
		f.stats.Entries++
	}
}

// cleanName is layers' rule (tarname.Clean), plus ext4's limit on the
// length of each component.
func cleanName(name string) (string, error) {
	n, err := tarname.Clean(name)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrUnsafePath, err)
	}
	for c := range strings.SplitSeq(n, "/") {
		if len(c) > maxNameLen {
			return "", fmt.Errorf("%w: %q", ErrNameTooLong, c)
		}
	}
	return n, nil
}

func splitName(n string) (string, string) { return tarname.Split(n) }

// resolveDir walks dir (a clean name) from the root, following symlinks
// as if the root were "/", and returns the directory inode. Missing
// directories are created (mode 0755) when create is set, else nil.
func (f *FS) resolveDir(st *layerState, dir string, create bool, hops *int) (*inode, error) {
	cur := f.inodes[rootIno]
	if dir == "." || dir == "" {
		return cur, nil
	}
	parts := strings.Split(dir, "/")
	for i := 0; i < len(parts); i++ {
		c := parts[i]
		switch c {
		case "", ".":
			continue
		case "..":
			if p := f.inodes[cur.dir.parent]; p != nil {
				cur = p
			}
			continue
		}
		ino := cur.dir.lookup(c)
		if ino == 0 {
			if !create {
				return nil, nil
			}
			nd := &inode{mode: sIFDIR | 0o755}
			nino, err := f.allocInode(nd)
			if err != nil {
				return nil, err
			}
			nd.dir = newDir(nino, cur.ino)
			f.link(cur, c, nino, nd)
			st.touched[cur.dir.index[c]] = true
			cur = nd
			continue
		}
		next := f.inodes[ino]
		switch next.mode & sIFMT {
		case sIFDIR:
			cur = next
		case sIFLNK:
			*hops++
			if *hops > maxLinks {
				return nil, fmt.Errorf("%w: too many symlinks in %q", ErrUnsafePath, dir)
			}
			target := string(f.linkTarget(next))
			rest := strings.Join(parts[i+1:], "/")
			var base *inode
			if strings.HasPrefix(target, "/") {
				base = f.inodes[rootIno]
			} else {
				base = cur
			}
			// Resolve the target from base, then the rest.
			full := target
			if rest != "" {
				full = target + "/" + rest
			}
			return f.resolveFrom(st, base, full, create, hops)
		default:
			return nil, fmt.Errorf("%w: %q is not a directory", ErrUnsafePath, strings.Join(parts[:i+1], "/"))
		}
	}
	return cur, nil
}

// resolveFrom resolves p relative to directory base (absolute p from the
// root).
func (f *FS) resolveFrom(st *layerState, base *inode, p string, create bool, hops *int) (*inode, error) {
	// Build the path of base by walking its parents.
	var names []string
	for cur := base; cur.ino != rootIno; {
		parent := f.inodes[cur.dir.parent]
		name := ""
		for n, e := range parent.dir.index {
			if e.ino == cur.ino {
				name = n
				break
			}
		}
		names = append([]string{name}, names...)
		cur = parent
	}
	if strings.HasPrefix(p, "/") {
		names = nil
	}
	full := strings.Join(append(names, strings.Split(strings.Trim(p, "/"), "/")...), "/")
	return f.resolveDir(st, full, create, hops)
}

func (f *FS) linkTarget(in *inode) []byte {
	if in.fastLink != nil {
		return in.fastLink
	}
	return in.slowLink
}

func (f *FS) entry(st *layerState, hdr *tar.Header, tr io.Reader) error {
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil
	}
	name, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	if st.seen[name] {
		return fmt.Errorf("%w: duplicate entry", ErrUnsupported)
	}
	st.seen[name] = true
	dirName, base := splitName(name)
	hops := 0
	if wh, ok := strings.CutPrefix(base, whPrefix); ok {
		if wh == "" || wh == "." || wh == ".." {
			return fmt.Errorf("%w: whiteout of %q", ErrBadWhiteout, wh)
		}
		p, err := f.resolveDir(st, dirName, false, &hops)
		if err != nil || p == nil {
			return err
		}
		if wh == opaqueName[len(whPrefix):] {
			f.opaque(st, p)
			return nil
		}
		if p.ino == rootIno && wh == "lost+found" {
			return nil // e2fsck needs it; the image cannot see it anyway
		}
		if e := p.dir.index[wh]; e != nil && !st.touched[e] {
			f.unlink(p, wh)
		}
		return nil
	}
	if name == "." {
		if hdr.Typeflag != tar.TypeDir {
			return fmt.Errorf("%w: the root must be a directory", ErrUnsafePath)
		}
		return f.setAttrs(f.inodes[rootIno], hdr)
	}
	p, err := f.resolveDir(st, dirName, true, &hops)
	if err != nil {
		return err
	}
	old := p.dir.index[base]
	if p.ino == rootIno && base == "lost+found" && hdr.Typeflag != tar.TypeDir {
		return fmt.Errorf("%w: /lost+found must stay a directory in ext4", ErrUnsupported)
	}
	var in *inode
	switch hdr.Typeflag {
	case tar.TypeDir:
		if old != nil && f.inodes[old.ino].isDir() {
			st.touched[old] = true
			return f.setAttrs(f.inodes[old.ino], hdr)
		}
		in = &inode{mode: sIFDIR}
	case tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse:
		in = &inode{mode: sIFREG}
	case tar.TypeSymlink:
		if hdr.Linkname == "" {
			return fmt.Errorf("%w: symlink with an empty target", ErrUnsupported)
		}
		if len(hdr.Linkname) >= blockSize {
			return fmt.Errorf("%w: symlink target of %d bytes", ErrUnsupported, len(hdr.Linkname))
		}
		in = &inode{mode: sIFLNK}
	case tar.TypeChar, tar.TypeBlock:
		// Linux device numbers: a 12-bit major and a 20-bit minor.
		if hdr.Devmajor < 0 || hdr.Devmajor >= 1<<12 || hdr.Devminor < 0 || hdr.Devminor >= 1<<20 {
			return fmt.Errorf("%w: device number %d:%d", ErrUnsupported, hdr.Devmajor, hdr.Devminor)
		}
		in = &inode{mode: sIFCHR, rdevMajor: uint32(hdr.Devmajor), rdevMinor: uint32(hdr.Devminor)}
		if hdr.Typeflag == tar.TypeBlock {
			in.mode = sIFBLK
		}
	case tar.TypeFifo:
		in = &inode{mode: sIFIFO}
	case tar.TypeLink:
		return f.hardlink(st, p, base, name, hdr)
	default:
		return fmt.Errorf("%w: type %q (ext4 cannot hold it)", ErrUnsupported, hdr.Typeflag)
	}
	if old != nil {
		f.unlink(p, base)
	}
	ino, err := f.allocInode(in)
	if err != nil {
		return err
	}
	if in.isDir() {
		in.dir = newDir(ino, p.ino)
	}
	if err := f.setAttrs(in, hdr); err != nil {
		return err
	}
	switch in.mode & sIFMT {
	case sIFREG:
		if err := f.writeFile(st, in, tr, hdr.Size); err != nil {
			return err
		}
	case sIFLNK:
		t := []byte(hdr.Linkname)
		in.size = int64(len(t))
		if len(t) < 60 {
			in.fastLink = t
		} else {
			in.slowLink = t
			blk := make([]byte, blockSize)
			copy(blk, t)
			b, _, err := f.allocRun(1)
			if err != nil {
				return err
			}
			if err := f.writeBlock(b, blk); err != nil {
				return err
			}
			in.addExtent(0, b, 1)
		}
	}
	f.link(p, base, ino, in)
	st.touched[p.dir.index[base]] = true
	return nil
}

func (f *FS) hardlink(st *layerState, p *inode, base, name string, hdr *tar.Header) error {
	target, err := cleanName(hdr.Linkname)
	if err != nil {
		return fmt.Errorf("%w: target: %v", ErrHardlink, err)
	}
	if target == "." || target == name {
		return fmt.Errorf("%w: link to %q", ErrHardlink, hdr.Linkname)
	}
	tdir, tbase := splitName(target)
	hops := 0
	tp, err := f.resolveDir(st, tdir, false, &hops)
	if err != nil {
		return err
	}
	if tp == nil || tp.dir.lookup(tbase) == 0 {
		return fmt.Errorf("%w: target %q does not exist", ErrHardlink, hdr.Linkname)
	}
	tino := tp.dir.lookup(tbase)
	tin := f.inodes[tino]
	if tin.isDir() {
		return fmt.Errorf("%w: target %q is a directory", ErrHardlink, hdr.Linkname)
	}
	if old := p.dir.index[base]; old != nil {
		if old.ino == tino {
			st.touched[old] = true
			return nil
		}
		f.unlink(p, base)
	}
	if tin.links >= maxLinkCount {
		return fmt.Errorf("%w: %q has %d names, the most ext4 allows", ErrHardlink, hdr.Linkname, tin.links)
	}
	f.link(p, base, tino, tin)
	st.touched[p.dir.index[base]] = true
	return nil
}

// opaque removes from directory d every entry this layer did not write,
// and below the directories it did, their lower content.
func (f *FS) opaque(st *layerState, d *inode) {
	var names []string
	for _, blk := range d.dir.blocks {
		for _, e := range blk.entries {
			names = append(names, e.name)
		}
	}
	for _, n := range names {
		e := d.dir.index[n]
		if e == nil {
			continue
		}
		if d.ino == rootIno && n == "lost+found" {
			continue
		}
		if !st.touched[e] {
			f.unlink(d, n)
		} else if c := f.inodes[e.ino]; c.isDir() {
			f.opaque(st, c)
		}
	}
}

// setAttrs sets mode bits, owner, mtime and xattrs from hdr.
func (f *FS) setAttrs(in *inode, hdr *tar.Header) error {
	if hdr.Uid < 0 || hdr.Gid < 0 || int64(hdr.Uid) > 1<<32-1 || int64(hdr.Gid) > 1<<32-1 {
		return fmt.Errorf("%w: uid/gid %d/%d", ErrUnsupported, hdr.Uid, hdr.Gid)
	}
	in.mode = in.mode&sIFMT | uint16(hdr.Mode&0o7777)
	if in.mode&sIFMT == sIFLNK {
		in.mode = sIFLNK | 0o777 // as Linux makes every symlink
	}
	in.uid, in.gid = uint32(hdr.Uid), uint32(hdr.Gid)
	in.mtime = hdr.ModTime.Unix()
	in.mtimeNsec = uint32(hdr.ModTime.Nanosecond())
	m := map[string]string{}
	for k, v := range hdr.PAXRecords {
		if name, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
			m[name] = v
		}
	}
	xs, err := makeXattrs(m)
	if err != nil {
		return err
	}
	if !fitsInInode(xs) && xattrBlockHdr+xattrsSize(xs) > blockSize {
		// Refused here, where the error names the entry, not at commit.
		return fmt.Errorf("%w: %d bytes of xattrs do not fit in a block", ErrUnsupportedXattr, xattrsSize(xs))
	}
	if !xattrsEqual(xs, in.xattrs) {
		in.xattrs = xs
		f.dirtyInode[in.ino] = true
	}
	if in.ino != 0 {
		f.touch(in.ino)
	}
	return nil
}

// writeFile streams size bytes of file content into newly allocated
// blocks, leaving all-zero blocks as holes.
func (f *FS) writeFile(st *layerState, in *inode, r io.Reader, size int64) error {
	if size < 0 {
		return fmt.Errorf("%w: negative size", ErrUnsupported)
	}
	if size > f.Size() {
		// ext4 could hold a sparse file this large, but reading its
		// zeros would take time out of proportion to the disk.
		return fmt.Errorf("%w: file of %d bytes on a disk of %d", ErrNoSpace, size, f.Size())
	}
	in.size = size
	var logical uint32
	buf := st.buf
	for left := size; left > 0; {
		if err := st.ctx.Err(); err != nil {
			return err // a large file is read in many chunks: stop between them
		}
		n := int(min(int64(len(buf)), left))
		if _, err := io.ReadFull(r, buf[:n]); err != nil {
			return fmt.Errorf("reading content: %w", err)
		}
		left -= int64(n)
		if rem := n % blockSize; rem != 0 {
			clear(buf[n : n+blockSize-rem])
			n += blockSize - rem
		}
		// Write runs of non-zero blocks.
		for i := 0; i < n; {
			if zero.Is(buf[i : i+blockSize]) {
				i += blockSize
				logical++
				continue
			}
			j := i + blockSize
			for j < n && !zero.Is(buf[j:j+blockSize]) {
				j += blockSize
			}
			for i < j {
				want := uint32((j - i) / blockSize)
				b, got, err := f.allocRun(want)
				if err != nil {
					return err
				}
				chunk := buf[i : i+int(got)*blockSize]
				if _, err := f.w.WriteAt(chunk, int64(b)*blockSize); err != nil {
					return err
				}
				in.addExtent(logical, b, got)
				logical += got
				i += int(got) * blockSize
				f.stats.DataBlocks += int64(got)
			}
		}
	}
	f.stats.DataBytes += size
	if len(in.extents) > rootEntries {
		f.dirtyTree[in.ino] = true
	}
	return nil
}

// writeBlock writes one block to the current level.
func (f *FS) writeBlock(b uint32, data []byte) error {
	_, err := f.w.WriteAt(data, int64(b)*blockSize)
	return err
}
