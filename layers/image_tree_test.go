package layers

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// snapEntry is what the tree comparison checks of one path.
type snapEntry struct {
	Type   string // reg, dir, symlink, fifo, char, block, socket
	Mode   fs.FileMode
	UID    uint32
	GID    uint32
	Size   int64
	SHA256 string // regular files
	Link   string // symlink target
	Rdev   uint64 // devices
	Xattrs string // sorted name=value list
	Mtime  int64  // nanoseconds, non-directories only (see snapOptions)
	Group  string // hardlink group: sorted paths sharing the inode, if more than one
}

type snapOptions struct {
	mtimes bool // compare mtimes of non-directories
}

// snapTree records every path under root (root itself as ".").
func snapTree(t testing.TB, root string, o snapOptions) map[string]snapEntry {
	t.Helper()
	out := map[string]snapEntry{}
	inodes := map[uint64][]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		e := snapEntry{Mode: fi.Mode().Perm() | fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky), UID: st.Uid, GID: st.Gid}
		switch m := fi.Mode(); {
		case m.IsRegular():
			e.Type, e.Size = "reg", fi.Size()
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			h := sha256.New()
			io.Copy(h, f)
			f.Close()
			e.SHA256 = hex.EncodeToString(h.Sum(nil))
			if st.Nlink > 1 {
				inodes[st.Ino] = append(inodes[st.Ino], rel)
			}
		case m.IsDir():
			e.Type = "dir"
		case m&fs.ModeSymlink != 0:
			e.Type = "symlink"
			e.Link, _ = os.Readlink(p)
			e.Mode = 0 // symlink modes are meaningless on Linux
		case m&fs.ModeNamedPipe != 0:
			e.Type = "fifo"
		case m&fs.ModeCharDevice != 0:
			e.Type, e.Rdev = "char", uint64(st.Rdev)
		case m&fs.ModeDevice != 0:
			e.Type, e.Rdev = "block", uint64(st.Rdev)
		case m&fs.ModeSocket != 0:
			e.Type = "socket"
		}
		if o.mtimes && e.Type != "dir" {
			e.Mtime = st.Mtim.Nano()
		}
		e.Xattrs = snapXattrs(t, p)
		out[rel] = e
		return nil
	})
	if err != nil {
		t.Fatalf("snapshot of %s: %v", root, err)
	}
	for _, paths := range inodes {
		if len(paths) < 2 {
			continue
		}
		sort.Strings(paths)
		g := strings.Join(paths, "|")
		for _, p := range paths {
			e := out[p]
			e.Group = g
			out[p] = e
		}
	}
	return out
}

func snapXattrs(t testing.TB, p string) string {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil || n == 0 {
		return ""
	}
	var kv []string
	for _, name := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		if name == "security.selinux" {
			continue // set by the host's policy, not by the layers
		}
		v := make([]byte, 64<<10)
		m, err := unix.Lgetxattr(p, name, v)
		if err != nil {
			t.Fatalf("lgetxattr %s %s: %v", p, name, err)
		}
		kv = append(kv, fmt.Sprintf("%s=%x", name, v[:m]))
	}
	slices.Sort(kv)
	return strings.Join(kv, ",")
}

// snapDiff returns a readable list of differences between two snapshots.
func snapDiff(a, b map[string]snapEntry, an, bn string) []string {
	var out []string
	keys := map[string]bool{}
	for k := range a {
		keys[k] = true
	}
	for k := range b {
		keys[k] = true
	}
	var ks []string
	for k := range keys {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	for _, k := range ks {
		ea, oka := a[k]
		eb, okb := b[k]
		switch {
		case !oka:
			out = append(out, fmt.Sprintf("%s: only in %s: %+v", k, bn, eb))
		case !okb:
			out = append(out, fmt.Sprintf("%s: only in %s: %+v", k, an, ea))
		case ea != eb:
			out = append(out, fmt.Sprintf("%s:\n  %s: %+v\n  %s: %+v", k, an, ea, bn, eb))
		}
	}
	return out
}

// snapCompare fails the test when the trees under a and b differ.
func snapCompare(t testing.TB, a, b string, o snapOptions) {
	t.Helper()
	d := snapDiff(snapTree(t, a, o), snapTree(t, b, o), a, b)
	if len(d) > 0 {
		if len(d) > 30 {
			d = append(d[:30], fmt.Sprintf("... and %d more", len(d)-30))
		}
		t.Fatalf("trees differ:\n%s", strings.Join(d, "\n"))
	}
}
