package layers

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"time"

	"github.com/imgtool/imgtool/internal/ioprogress"
	"golang.org/x/sys/unix"
)

// entry plans one child of a directory (see planner.dir) and, for a
// directory, what is below it.
func (p *planner) entry(rel, name string, n *node, lower string, all bool) error {
	childRel := join(rel, name)
	if n.kind() == unix.S_IFSOCK {
		return nil // sockets cannot be stored in a tar
	}
	if p.opts.OverlayUpper {
		for _, k := range []string{"metacopy", "redirect"} {
			if _, ok := n.ovl["trusted.overlay."+k]; ok {
				return fmt.Errorf("%w: %s has overlay %s (mount the overlay with metacopy=off,redirect_dir=off)", ErrUnsupported, n.path, k)
			}
			if _, ok := n.ovl["user.overlay."+k]; ok {
				return fmt.Errorf("%w: %s has overlay %s (mount the overlay with metacopy=off,redirect_dir=off)", ErrUnsupported, n.path, k)
			}
		}
		p.items = append(p.items, item{name: childRel, n: n})
		if !n.isDir() {
			return nil
		}
		var lowerChild string
		lowerExists := false
		if lower != "" {
			lc := filepath.Join(lower, name)
			var st unix.Stat_t
			if unix.Lstat(lc, &st) == nil {
				lowerExists = true
				if st.Mode&unix.S_IFMT == unix.S_IFDIR {
					lowerChild = lc
				}
			}
		}
		opaque := n.ovl["trusted.overlay.opaque"] == "y" || n.ovl["user.overlay.opaque"] == "y"
		// The kernel marks every directory created in the upper dir
		// opaque; that hides nothing when Lower has no such entry.
		if opaque && (p.opts.Lower == "" || lowerExists) {
			p.items = append(p.items, item{name: join(childRel, opaqueName), wh: true})
		}
		return p.dir(childRel, n.path, lowerChild, false)
	}
	if all || lower == "" {
		p.items = append(p.items, item{name: childRel, n: n})
		if n.isDir() {
			return p.dir(childRel, n.path, "", true)
		}
		return nil
	}
	ln, err := statNode(filepath.Join(lower, name))
	if errors.Is(err, os.ErrNotExist) {
		return p.entry(rel, name, n, "", true)
	}
	if err != nil {
		return err
	}
	switch {
	case n.kind() != ln.kind():
		p.items = append(p.items, item{name: childRel, n: n})
		if n.isDir() {
			// A directory replacing a non-directory: mark it opaque so
			// that nothing of what was there shows through.
			p.items = append(p.items, item{name: join(childRel, opaqueName), wh: true})
			return p.dir(childRel, n.path, "", true)
		}
		return nil
	case n.isDir():
		// Unchanged directories are listed but skipped unless something
		// below them changes (see includeParents).
		p.items = append(p.items, item{name: childRel, n: n, skip: p.sameMeta(n, ln)})
		return p.dir(childRel, n.path, ln.path, false)
	}
	same := p.sameMeta(n, ln)
	if same && n.kind() == unix.S_IFREG && (n.st.Dev != ln.st.Dev || n.st.Ino != ln.st.Ino) {
		if same, err = sameContent(n.path, ln.path); err != nil {
			return err
		}
	}
	p.items = append(p.items, item{name: childRel, n: n, skip: same})
	return nil
}

// sameMeta compares what a layer entry records of two nodes of one kind,
// mtimes as clamped to SourceDateEpoch (a tree unpacked from clamped
// layers is unchanged where the clamped times agree).
func (p *planner) sameMeta(a, b *node) bool {
	return a.st.Mode == b.st.Mode && a.st.Uid == b.st.Uid && a.st.Gid == b.st.Gid &&
		p.mtime(a).Equal(p.mtime(b)) && a.link == b.link && a.st.Rdev == b.st.Rdev &&
		(a.isDir() || a.st.Size == b.st.Size) && maps.Equal(a.xattrs, b.xattrs)
}

// sameContent compares two regular files of the same size byte by byte.
func sameContent(pa, pb string) (bool, error) {
	fa, err := openNoFollow(pa)
	if err != nil {
		return false, err
	}
	defer fa.Close()
	fb, err := openNoFollow(pb)
	if err != nil {
		return false, err
	}
	defer fb.Close()
	ba, bb := make([]byte, 256<<10), make([]byte, 256<<10)
	for {
		na, ea := io.ReadFull(fa, ba)
		nb, eb := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			return false, nil
		}
		if ea == io.EOF || ea == io.ErrUnexpectedEOF {
			return eb == io.EOF || eb == io.ErrUnexpectedEOF, nil
		}
		if ea != nil {
			return false, ea
		}
		if eb != nil {
			return false, eb
		}
	}
}

func openNoFollow(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
}

// resolveHardlinks includes every member of a hard-link group of which
// one member is included (so the group stays one inode after applying),
// and turns all but the first member into hardlink entries.
func (p *planner) resolveHardlinks() {
	groups := make(map[devIno][]int)
	for i, it := range p.items {
		if it.n != nil && !it.n.isDir() && it.n.st.Nlink > 1 {
			k := devIno{uint64(it.n.st.Dev), it.n.st.Ino}
			groups[k] = append(groups[k], i)
		}
	}
	for _, idx := range groups {
		if len(idx) < 2 {
			continue
		}
		include := false
		for _, i := range idx {
			include = include || !p.items[i].skip
		}
		if !include {
			continue
		}
		first := p.items[idx[0]].name
		for j, i := range idx {
			p.items[i].skip = false
			if j > 0 {
				p.items[i].linkTo = first
			}
		}
	}
}

// includeParents includes the directory entries above every included
// entry, so that applying the layer leaves their mtimes (which creating
// and removing children changes) as they are in the tree.
func (p *planner) includeParents() {
	dirs := make(map[string]int)
	for i, it := range p.items {
		if it.n != nil && it.n.isDir() {
			dirs[it.name] = i
		}
	}
	for _, it := range p.items {
		if it.skip {
			continue
		}
		for d, _ := splitName(it.name); d != "."; d, _ = splitName(d) {
			i, ok := dirs[d]
			if !ok || !p.items[i].skip {
				break
			}
			p.items[i].skip = false
		}
	}
}

// write writes the planned entries.
func (p *planner) write(tw *tar.Writer) error {
	buf := make([]byte, 1<<20)
	for _, it := range p.items {
		if it.skip {
			continue
		}
		if err := p.ctx.Err(); err != nil {
			return err
		}
		if it.wh {
			hdr := &tar.Header{Typeflag: tar.TypeReg, Name: it.name, Mode: 0o644, ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
			if err := tw.WriteHeader(hdr); err != nil {
				return fmt.Errorf("%s: %w", it.name, err)
			}
			continue
		}
		hdr := p.header(it)
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("%s: %w", it.n.path, err)
		}
		if hdr.Typeflag == tar.TypeReg && hdr.Size > 0 {
			if err := copyFile(p.ctx, tw, it.n.path, hdr.Size, buf); err != nil {
				return err
			}
		}
	}
	return nil
}

// copyFile copies size bytes of the file at path to w, stopping when ctx
// is done (a large file is not finished after Ctrl-C).
func copyFile(ctx context.Context, w io.Writer, path string, size int64, buf []byte) error {
	f, err := openNoFollow(path)
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := io.CopyBuffer(w, ioprogress.WithContext(ctx, io.LimitReader(f, size)), buf)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if n != size {
		return fmt.Errorf("%s: file shrank from %d to %d bytes while reading", path, size, n)
	}
	return nil
}

// mtime is n's mtime clamped to SourceDateEpoch.
func (p *planner) mtime(n *node) time.Time {
	mtime := time.Unix(n.st.Mtim.Sec, n.st.Mtim.Nsec)
	if e := p.opts.SourceDateEpoch; e != nil && mtime.After(*e) {
		mtime = *e
	}
	return mtime
}

func (p *planner) header(it item) *tar.Header {
	st := &it.n.st
	mtime := p.mtime(it.n)
	hdr := &tar.Header{
		Name:    it.name,
		Mode:    int64(st.Mode & 0o7777),
		Uid:     int(st.Uid),
		Gid:     int(st.Gid),
		ModTime: mtime,
		Format:  tar.FormatPAX,
	}
	for k, v := range it.n.xattrs {
		if hdr.PAXRecords == nil {
			hdr.PAXRecords = make(map[string]string)
		}
		hdr.PAXRecords["SCHILY.xattr."+k] = v
	}
	if it.linkTo != "" {
		hdr.Typeflag = tar.TypeLink
		hdr.Linkname = it.linkTo
		return hdr
	}
	switch it.n.kind() {
	case unix.S_IFDIR:
		hdr.Typeflag = tar.TypeDir
		hdr.Name += "/"
	case unix.S_IFREG:
		hdr.Typeflag = tar.TypeReg
		hdr.Size = st.Size
	case unix.S_IFLNK:
		hdr.Typeflag = tar.TypeSymlink
		hdr.Linkname = it.n.link
	case unix.S_IFCHR, unix.S_IFBLK:
		hdr.Typeflag = tar.TypeChar
		if it.n.kind() == unix.S_IFBLK {
			hdr.Typeflag = tar.TypeBlock
		}
		hdr.Devmajor = int64(unix.Major(st.Rdev))
		hdr.Devminor = int64(unix.Minor(st.Rdev))
	case unix.S_IFIFO:
		hdr.Typeflag = tar.TypeFifo
	}
	return hdr
}
