// Package treecmp snapshots directory trees and compares them: the type,
// mode (with setuid, setgid, sticky), owner, xattrs, link target, device
// number, content, mtime and hard-link groups of every path. Tests use it
// to check that a layer round trip, a diff or an unpack reproduces a tree.
package treecmp

import (
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// Entry is what Snapshot records of one path.
type Entry struct {
	Type   string // "dir", "file", "symlink", "char", "block", "fifo", "socket"
	Mode   uint32 // permission bits with setuid, setgid and sticky
	UID    uint32
	GID    uint32
	Size   int64             // files only
	Hash   [32]byte          // sha256 of a file's content
	Link   string            // symlink target
	Rdev   uint64            // devices only
	MtimeN int64             // mtime in ns
	Xattrs map[string]string // filtered by Options.Xattr
	Group  string            // smallest path of the file's hard-link group ("" if alone)
}

// Options select what Snapshot records.
type Options struct {
	// Xattr says which xattrs to record; nil records security.capability
	// and user.* except user.overlay.* (what a layer carries).
	Xattr func(name string) bool
	// NoMtime skips mtimes; NoDirMtime skips them for directories only.
	NoMtime, NoDirMtime bool
	// NoOwner skips uid and gid.
	NoOwner bool
}

// DefaultXattr is the xattr filter used when Options.Xattr is nil.
func DefaultXattr(name string) bool {
	return name == "security.capability" || (strings.HasPrefix(name, "user.") && !strings.HasPrefix(name, "user.overlay."))
}

// Snapshot records the tree below root (root itself is not recorded).
func Snapshot(root string, opts Options) (map[string]Entry, error) {
	if opts.Xattr == nil {
		opts.Xattr = DefaultXattr
	}
	tree := make(map[string]Entry)
	inodes := make(map[[2]uint64][]string)
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if rel == "." {
			return nil
		}
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			return &os.PathError{Op: "lstat", Path: path, Err: err}
		}
		e := Entry{Mode: st.Mode & 0o7777, UID: st.Uid, GID: st.Gid, MtimeN: st.Mtim.Nano()}
		if opts.NoOwner {
			e.UID, e.GID = 0, 0
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			e.Type = "dir"
			if opts.NoDirMtime {
				e.MtimeN = 0
			}
		case unix.S_IFREG:
			e.Type = "file"
			e.Size = st.Size
			h, err := hashFile(path)
			if err != nil {
				return err
			}
			e.Hash = h
			if st.Nlink > 1 {
				k := [2]uint64{st.Dev, st.Ino}
				inodes[k] = append(inodes[k], rel)
			}
		case unix.S_IFLNK:
			e.Type = "symlink"
			e.Mode = 0
			l, err := os.Readlink(path)
			if err != nil {
				return err
			}
			e.Link = l
		case unix.S_IFCHR:
			e.Type, e.Rdev = "char", st.Rdev
		case unix.S_IFBLK:
			e.Type, e.Rdev = "block", st.Rdev
		case unix.S_IFIFO:
			e.Type = "fifo"
		case unix.S_IFSOCK:
			e.Type = "socket"
		}
		if opts.NoMtime {
			e.MtimeN = 0
		}
		xs, err := xattrs(path, opts.Xattr)
		if err != nil {
			return err
		}
		e.Xattrs = xs
		tree[rel] = e
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, paths := range inodes {
		if len(paths) < 2 {
			continue
		}
		first := slices.Min(paths)
		for _, p := range paths {
			e := tree[p]
			e.Group = first
			tree[p] = e
		}
	}
	return tree, nil
}

func hashFile(path string) ([32]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return [32]byte{}, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return [32]byte{}, err
	}
	return [32]byte(h.Sum(nil)), nil
}

func xattrs(path string, keep func(string) bool) (map[string]string, error) {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(path, buf)
	if err == unix.ENOTSUP || err == unix.EPERM {
		return nil, nil
	}
	if err != nil {
		return nil, &os.PathError{Op: "llistxattr", Path: path, Err: err}
	}
	var m map[string]string
	for name := range strings.SplitSeq(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		if name == "" || !keep(name) {
			continue
		}
		val := make([]byte, 64<<10)
		vn, err := unix.Lgetxattr(path, name, val)
		if err != nil {
			return nil, &os.PathError{Op: "lgetxattr " + name, Path: path, Err: err}
		}
		if m == nil {
			m = make(map[string]string)
		}
		m[name] = string(val[:vn])
	}
	return m, nil
}

// Diff lists the differences between two snapshots, one line per path,
// sorted; nil when they are equal.
func Diff(want, got map[string]Entry) []string {
	var out []string
	for p, w := range want {
		g, ok := got[p]
		if !ok {
			out = append(out, fmt.Sprintf("%s: missing (want %s)", p, w.Type))
			continue
		}
		if d := diffEntry(w, g); d != "" {
			out = append(out, p+": "+d)
		}
	}
	for p, g := range got {
		if _, ok := want[p]; !ok {
			out = append(out, fmt.Sprintf("%s: unexpected %s", p, g.Type))
		}
	}
	slices.Sort(out)
	return out
}

func diffEntry(w, g Entry) string {
	var d []string
	add := func(what string, wv, gv any) { d = append(d, fmt.Sprintf("%s %v, want %v", what, gv, wv)) }
	if w.Type != g.Type {
		add("type", w.Type, g.Type)
		return strings.Join(d, "; ")
	}
	if w.Mode != g.Mode {
		add("mode", fmt.Sprintf("%#o", w.Mode), fmt.Sprintf("%#o", g.Mode))
	}
	if w.UID != g.UID || w.GID != g.GID {
		add("owner", fmt.Sprintf("%d:%d", w.UID, w.GID), fmt.Sprintf("%d:%d", g.UID, g.GID))
	}
	if w.Size != g.Size || w.Hash != g.Hash {
		add("content (size)", w.Size, g.Size)
	}
	if w.Link != g.Link {
		add("link", w.Link, g.Link)
	}
	if w.Rdev != g.Rdev {
		add("rdev", w.Rdev, g.Rdev)
	}
	if w.MtimeN != g.MtimeN {
		add("mtime", w.MtimeN, g.MtimeN)
	}
	if !maps.Equal(w.Xattrs, g.Xattrs) {
		add("xattrs", w.Xattrs, g.Xattrs)
	}
	if w.Group != g.Group {
		add("hardlink group", w.Group, g.Group)
	}
	return strings.Join(d, "; ")
}
