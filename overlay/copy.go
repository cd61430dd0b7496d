package overlay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// Copy mode makes a container without overlayfs: the layers are merged,
// bottom first, into the target directory, applying the overlay-format
// whiteouts (0/0 character devices) and opaque directories of each layer
// as overlayfs would.
//
// Sharing data with the store. A hardlink into the store shares the inode:
// any write, chmod, chown or touch of the file in the copy would change the
// store's layer, and with it every image and container that uses it. So:
//   - a writable copy never hardlinks. It reflinks (FICLONE) when the
//     filesystem can (btrfs, XFS; the clone is copy-on-write, so writes
//     stay private), else copies the bytes (copy_file_range);
//   - a read-only copy (--readonly) hardlinks every regular file from the
//     store, since nothing is meant to write it. The files are the store's:
//     modifying them, even as root, corrupts the store.
// Hardlinks inside one layer are kept as hardlinks in the copy either way.

// copyRootfs flattens c's layers into c.Target, which must be missing or
// an empty directory.
func (s *Store) copyRootfs(ctx context.Context, c *Container) error {
	if err := os.Mkdir(c.Target, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("overlay: copy target: %w", err)
	}
	ents, err := os.ReadDir(c.Target)
	if err != nil {
		return fmt.Errorf("overlay: copy target: %w", err)
	}
	if len(ents) > 0 {
		return fmt.Errorf("overlay: copy target %s is not empty", c.Target)
	}
	ok := false
	defer func() {
		if !ok { // leave the target empty, as it was
			ents, _ := os.ReadDir(c.Target)
			for _, e := range ents {
				removeTree(filepath.Join(c.Target, e.Name()))
			}
		}
	}()
	if err := s.flatten(ctx, c.Layers, c.Target, c.ReadOnly); err != nil {
		return err
	}
	ok = true
	return nil
}

// flatten merges the layers (ChainIDs, bottom first) into dst, an empty
// directory, hardlinking regular files from the store when link is set.
func (s *Store) flatten(ctx context.Context, chain []digest.Digest, dst string, link bool) error {
	cp := &flattener{dst: dst, link: link, opaque: s.opaqueXattr(), dirTimes: map[string][2]unix.Timespec{}}
	for i, id := range chain {
		l, err := s.Layer(id)
		if err != nil {
			return err
		}
		if err := cp.layer(ctx, l.Dir); err != nil {
			return fmt.Errorf("overlay: flatten layer %d (%s): %w", i, id, err)
		}
	}
	return cp.finish()
}

// opaqueXattr is the xattr marking an opaque directory in this store.
func (s *Store) opaqueXattr() string {
	if s.userXattr {
		return "user.overlay.opaque"
	}
	return "trusted.overlay.opaque"
}

// isOverlayXattr reports whether an xattr belongs to overlayfs (and so
// must not be copied into a flattened tree).
func isOverlayXattr(name string) bool {
	return strings.HasPrefix(name, "trusted.overlay.") || strings.HasPrefix(name, "user.overlay.")
}

// flattener merges layers into dst. Not safe for concurrent use.
type flattener struct {
	dst      string
	link     bool                        // hardlink regular files from the store
	opaque   string                      // opaque xattr name
	noClone  bool                        // FICLONE failed once: copy bytes from then on
	dirTimes map[string][2]unix.Timespec // rel path -> atime, mtime of the topmost layer
}

// layer applies one overlay-format layer directory.
func (f *flattener) layer(ctx context.Context, src string) error {
	inodes := map[uint64]string{} // inode -> dst path, for hardlinks within the layer
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		out := filepath.Join(f.dst, rel)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		if rel == "." {
			return f.dir(p, out, rel, st)
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			return f.dir(p, out, rel, st)
		case unix.S_IFCHR:
			if st.Rdev == 0 { // whiteout
				return removeIfExists(out)
			}
		}
		if err := removeIfExists(out); err != nil {
			return err
		}
		if st.Mode&unix.S_IFMT == unix.S_IFREG && st.Nlink > 1 {
			if first, ok := inodes[st.Ino]; ok {
				return os.Link(first, out)
			}
			inodes[st.Ino] = out
		}
		return f.nondir(p, out, st)
	})
}

func removeIfExists(p string) error {
	if _, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return removeTree(p)
}

// dir applies a directory: replaces a non-directory, clears an opaque
// directory's lower content, and sets the attributes.
func (f *flattener) dir(src, out, rel string, st *syscall.Stat_t) error {
	if ofi, err := os.Lstat(out); err == nil && !ofi.IsDir() {
		if err := removeTree(out); err != nil {
			return err
		}
	}
	if err := os.Mkdir(out, 0o700); err != nil {
		if !errors.Is(err, fs.ErrExist) {
			return err
		}
		if v, err := lgetxattr(src, f.opaque); err == nil && string(v) == "y" {
			ents, err := os.ReadDir(out)
			if err != nil {
				return err
			}
			for _, e := range ents {
				if err := removeTree(filepath.Join(out, e.Name())); err != nil {
					return err
				}
			}
		}
	}
	if err := f.attrs(src, out, st, true); err != nil {
		return err
	}
	f.dirTimes[rel] = [2]unix.Timespec{unix.NsecToTimespec(timespecNsec(st.Atim)), unix.NsecToTimespec(timespecNsec(st.Mtim))}
	return nil
}

func timespecNsec(t syscall.Timespec) int64 { return t.Sec*1e9 + t.Nsec }

// nondir creates a file, symlink, device or fifo at out like src.
func (f *flattener) nondir(src, out string, st *syscall.Stat_t) error {
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		if f.link {
			return os.Link(src, out) // shares the store's inode: attributes included
		}
		if err := f.copyFile(src, out); err != nil {
			return err
		}
	case unix.S_IFLNK:
		t, err := os.Readlink(src)
		if err != nil {
			return err
		}
		if err := os.Symlink(t, out); err != nil {
			return err
		}
	case unix.S_IFCHR, unix.S_IFBLK, unix.S_IFIFO:
		if err := unix.Mknod(out, st.Mode&(unix.S_IFMT|0o7777), int(st.Rdev)); err != nil {
			return fmt.Errorf("mknod %s: %w", out, err)
		}
	case unix.S_IFSOCK:
		return nil // sockets are not layer content
	default:
		return fmt.Errorf("%s: unexpected file type %#o", src, st.Mode&unix.S_IFMT)
	}
	return f.attrs(src, out, st, false)
}

// copyFile copies a regular file's bytes, by reflink when possible.
func (f *flattener) copyFile(src, out string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	o, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if !f.noClone {
		if err := unix.IoctlFileClone(int(o.Fd()), int(in.Fd())); err == nil {
			return o.Close()
		}
		f.noClone = true // not supported here (or across filesystems): copy from now on
	}
	if _, err := io.Copy(o, in); err != nil {
		o.Close()
		return err
	}
	return o.Close()
}

// attrs copies owner, mode, xattrs (not overlay's) and, for
// non-directories, times from src to out without following symlinks.
// Directory times are set by finish, after their content is complete.
func (f *flattener) attrs(src, out string, st *syscall.Stat_t, isDir bool) error {
	if err := os.Lchown(out, int(st.Uid), int(st.Gid)); err != nil {
		return err
	}
	isLink := st.Mode&unix.S_IFMT == unix.S_IFLNK
	if !isLink {
		// After chown, which clears setuid/setgid bits.
		if err := unix.Fchmodat(unix.AT_FDCWD, out, st.Mode&0o7777, 0); err != nil {
			return fmt.Errorf("chmod %s: %w", out, err)
		}
	}
	if err := copyXattrs(src, out, isDir); err != nil {
		return err
	}
	if !isDir {
		ts := []unix.Timespec{unix.NsecToTimespec(timespecNsec(st.Atim)), unix.NsecToTimespec(timespecNsec(st.Mtim))}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, out, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("utimes %s: %w", out, err)
		}
	}
	return nil
}

// finish sets directory times, deepest first.
func (f *flattener) finish() error {
	rels := make([]string, 0, len(f.dirTimes))
	for r := range f.dirTimes {
		rels = append(rels, r)
	}
	// Longer paths first: a child's times are set before its parent's.
	sortByDepthDesc(rels)
	for _, r := range rels {
		ts := f.dirTimes[r]
		p := filepath.Join(f.dst, r)
		// Only what is still a directory: a later layer may have removed
		// it or put a file there, and a file may be a hardlink into the
		// store, whose times must not change.
		if fi, err := os.Lstat(p); err != nil || !fi.IsDir() {
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("overlay: %w", err)
			}
			continue
		}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts[:], unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("overlay: utimes %s: %w", p, err)
		}
	}
	return nil
}

func sortByDepthDesc(rels []string) {
	depth := func(s string) int { return strings.Count(s, "/") }
	// Insertion into buckets keeps this O(n) for deep trees.
	maxD := 0
	for _, r := range rels {
		maxD = max(maxD, depth(r))
	}
	buckets := make([][]string, maxD+1)
	for _, r := range rels {
		buckets[depth(r)] = append(buckets[depth(r)], r)
	}
	rels = rels[:0]
	for d := maxD; d >= 0; d-- {
		rels = append(rels, buckets[d]...)
	}
}

// copyXattrs makes out's xattrs those of src, overlay's excepted. For a
// directory met again in a higher layer, xattrs from the lower one that
// the higher lacks are removed, as the merged view would not show them.
func copyXattrs(src, out string, isDir bool) error {
	names, err := llistxattr(src)
	if err != nil {
		return err
	}
	keep := map[string]bool{}
	for _, n := range names {
		if isOverlayXattr(n) {
			continue
		}
		v, err := lgetxattr(src, n)
		if err != nil {
			return err
		}
		if err := unix.Lsetxattr(out, n, v, 0); err != nil {
			return fmt.Errorf("setxattr %s %s: %w", out, n, err)
		}
		keep[n] = true
	}
	if isDir {
		have, err := llistxattr(out)
		if err != nil {
			return err
		}
		for _, n := range have {
			if !keep[n] && !isOverlayXattr(n) && n != "security.selinux" {
				if err := unix.Lremovexattr(out, n); err != nil && !errors.Is(err, unix.ENODATA) {
					return fmt.Errorf("removexattr %s %s: %w", out, n, err)
				}
			}
		}
	}
	return nil
}

// llistxattr lists a path's xattr names (not following symlinks).
func llistxattr(p string) ([]string, error) {
	sz, err := unix.Llistxattr(p, nil)
	if err != nil {
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		return nil, fmt.Errorf("listxattr %s: %w", p, err)
	}
	if sz == 0 {
		return nil, nil
	}
	buf := make([]byte, sz)
	sz, err = unix.Llistxattr(p, buf)
	if err != nil {
		return nil, fmt.Errorf("listxattr %s: %w", p, err)
	}
	var names []string
	for _, n := range strings.Split(string(buf[:sz]), "\x00") {
		if n != "" {
			names = append(names, n)
		}
	}
	return names, nil
}

// lgetxattr reads one xattr (not following symlinks).
func lgetxattr(p, name string) ([]byte, error) {
	sz, err := unix.Lgetxattr(p, name, nil)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, sz)
	sz, err = unix.Lgetxattr(p, name, buf)
	if err != nil {
		return nil, err
	}
	return buf[:sz], nil
}
