package overlay

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// treeEntry is what compareTrees compares of one path.
type treeEntry struct {
	Type   string
	Mode   fs.FileMode
	UID    uint32
	GID    uint32
	Rdev   uint64
	Link   string
	Sum    string
	Mtime  int64 // non-directories only
	Xattrs string
	Group  string // for hardlinked files: the first path of the inode
}

// scanTree describes every path below root.
func scanTree(t testing.TB, root string) map[string]treeEntry {
	t.Helper()
	out := map[string]treeEntry{}
	firstOf := map[uint64]string{}
	groupSize := map[uint64]int{}
	inoOf := map[string]uint64{}
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
		e := treeEntry{Mode: fi.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky), UID: st.Uid, GID: st.Gid}
		switch {
		case fi.Mode().IsRegular():
			e.Type = "file"
			e.Sum = fileSum(t, p)
			e.Mtime = st.Mtim.Sec
			if st.Nlink > 1 {
				// Grouped below, only with names of this tree: overlayfs
				// reports the lower inode's link count, names whited out
				// in higher layers included.
				if _, ok := firstOf[st.Ino]; !ok {
					firstOf[st.Ino] = rel
				}
				e.Group = firstOf[st.Ino]
				groupSize[st.Ino]++
				inoOf[rel] = st.Ino
			}
		case fi.IsDir():
			e.Type = "dir"
		case fi.Mode()&fs.ModeSymlink != 0:
			e.Type = "symlink"
			e.Link, _ = os.Readlink(p)
			e.Mode = 0
			e.Mtime = st.Mtim.Sec
		case fi.Mode()&fs.ModeCharDevice != 0:
			e.Type, e.Rdev = "char", st.Rdev
		case fi.Mode()&fs.ModeDevice != 0:
			e.Type, e.Rdev = "block", st.Rdev
		case fi.Mode()&fs.ModeNamedPipe != 0:
			e.Type = "fifo"
		default:
			e.Type = fi.Mode().Type().String()
		}
		names, err := llistxattr(p)
		if err != nil {
			return err
		}
		var xs []string
		for _, n := range names {
			if isOverlayXattr(n) || n == "security.selinux" {
				continue
			}
			v, err := lgetxattr(p, n)
			if err != nil {
				return err
			}
			xs = append(xs, n+"="+string(v))
		}
		sort.Strings(xs)
		e.Xattrs = strings.Join(xs, ",")
		out[rel] = e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for rel, ino := range inoOf {
		if groupSize[ino] == 1 {
			e := out[rel]
			e.Group = ""
			out[rel] = e
		}
	}
	return out
}

func fileSum(t testing.TB, p string) string {
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// compareTrees fails t with every difference between two trees.
func compareTrees(t testing.TB, want, got string) {
	t.Helper()
	a, b := scanTree(t, want), scanTree(t, got)
	for _, tree := range []map[string]treeEntry{a, b} {
		if e, ok := tree["."]; ok {
			e.Mode = 0 // the mount point's own mode is the target's
			tree["."] = e
		}
	}
	if d := cmp.Diff(a, b); d != "" {
		t.Errorf("trees differ (-%s +%s):\n%s", want, got, d)
	}
}
