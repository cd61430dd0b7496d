package dedup

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/imgtool/imgtool/layers"
	"github.com/imgtool/imgtool/overlay"
	"golang.org/x/sys/unix"
)

// storeWithLayers unpacks an image of two layers into a new store. Layer 1
// holds the content X as same (0644), mode (0755), xattr (with a
// user.test xattr), owner (uid 1234, as root only), and other (Y); layer 2
// holds X again as same2 (0644) and Y as other2.
func storeWithLayers(t *testing.T, dir string) (*overlay.Store, map[string]string) {
	t.Helper()
	x := bytes.Repeat([]byte("identical content "), 10000)
	y := bytes.Repeat([]byte("other content "), 5000)
	l1, l2 := filepath.Join(dir, "l1"), filepath.Join(dir, "l2")
	writeFiles(t, l1, map[string][]byte{"d/same": x, "d/mode": x, "d/xattr": x, "d/other": y})
	if err := os.Chmod(filepath.Join(l1, "d/mode"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(filepath.Join(l1, "d/xattr"), "user.test", []byte("v"), 0); err != nil {
		t.Skipf("no user xattrs on %s: %v", dir, err)
	}
	root := os.Geteuid() == 0
	if root {
		writeFiles(t, l1, map[string][]byte{"d/owner": x})
		if err := os.Lchown(filepath.Join(l1, "d/owner"), 1234, 1234); err != nil {
			t.Fatal(err)
		}
	}
	writeFiles(t, l2, map[string][]byte{"e/same2": x, "e/other2": y})
	epoch := time.Unix(1700000000, 0)
	lay := filepath.Join(dir, "layout")
	ctx := context.Background()
	if _, err := layers.Build(ctx, lay, layers.BuildOptions{Layers: []string{l1, l2}, Tag: "t", SourceDateEpoch: &epoch}); err != nil {
		t.Fatal(err)
	}
	s, err := overlay.OpenStore(filepath.Join(dir, "store"), overlay.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Unpack(ctx, layers.ImageRef{Dir: lay, Tag: "t"}, overlay.ImageOptions{}); err != nil {
		t.Fatal(err)
	}
	ls, err := s.Layers()
	if err != nil || len(ls) != 2 {
		t.Fatalf("layers %v, %v", ls, err)
	}
	paths := map[string]string{}
	for _, l := range ls {
		for _, name := range []string{"d/same", "d/mode", "d/xattr", "d/owner", "d/other", "e/same2", "e/other2"} {
			p := filepath.Join(l.Dir, name)
			if _, err := os.Lstat(p); err == nil {
				paths[name] = p
			}
		}
	}
	return s, paths
}

func inode(t *testing.T, p string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func TestStoreDedupHardlink(t *testing.T) {
	s, p := storeWithLayers(t, t.TempDir())
	ctx := context.Background()
	dry, err := StoreDedup(ctx, s, StoreDedupOptions{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if inode(t, p["d/same"]) == inode(t, p["e/same2"]) {
		t.Fatal("dry run linked files")
	}
	res, err := StoreDedup(ctx, s, StoreDedupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("dry %+v, real %+v", *dry, *res)
	if inode(t, p["d/same"]) != inode(t, p["e/same2"]) || inode(t, p["d/other"]) != inode(t, p["e/other2"]) {
		t.Error("identical files with equal metadata not linked")
	}
	for _, name := range []string{"d/mode", "d/xattr", "d/owner"} {
		if p[name] == "" {
			continue
		}
		if inode(t, p[name]) == inode(t, p["d/same"]) {
			t.Errorf("%s linked although its metadata differs", name)
		}
	}
	wantApart := int64(2)
	if p["d/owner"] != "" {
		wantApart = 3
	}
	if res.Linked != 2 || res.KeptApart != wantApart || res.SavedBytes < 180000+70000 || *dry != *res {
		t.Errorf("result %+v (dry %+v), want 2 linked, %d kept apart", *res, *dry, wantApart)
	}
	b, err := os.ReadFile(p["e/same2"])
	if err != nil || !bytes.Contains(b, []byte("identical content")) {
		t.Errorf("content after linking: %v", err)
	}
	// Nothing left to do on a second run.
	res, err = StoreDedup(ctx, s, StoreDedupOptions{})
	if err != nil || res.Linked != 0 || res.SavedBytes != 0 {
		t.Errorf("second run %+v, %v", res, err)
	}
	if _, err := StoreDedup(ctx, s, StoreDedupOptions{Method: "copy"}); err == nil {
		t.Error("unknown method accepted")
	}
}

// reflinkDir returns a directory on a file system that can reflink: an XFS
// loop mount when running as root with mkfs.xfs (xfsprogs) installed, else
// a plain temporary directory (which may or may not support FICLONE).
func reflinkDir(t *testing.T) string {
	dir := t.TempDir()
	mkfs, err := exec.LookPath("mkfs.xfs")
	if err != nil || os.Geteuid() != 0 {
		t.Logf("no XFS loop mount (needs root and mkfs.xfs): testing in %s", dir)
		return dir
	}
	img := filepath.Join(dir, "xfs.img")
	mnt := filepath.Join(dir, "mnt")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 320<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mkfs, "-q", "-m", "reflink=1", img).CombinedOutput(); err != nil {
		t.Logf("mkfs.xfs: %v: %s", err, out)
		return dir
	}
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Logf("mount -o loop: %v: %s", err, out)
		return dir
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount: %v: %s", err, out)
		}
	})
	return mnt
}

// TestStoreDedupReflink clones where the file system can (XFS here when
// possible); elsewhere reflink fails with ErrUnsupported and auto falls
// back to hard links.
func TestStoreDedupReflink(t *testing.T) {
	s, p := storeWithLayers(t, reflinkDir(t))
	ctx := context.Background()
	var statfs unix.Statfs_t
	if err := unix.Statfs(s.Dir(), &statfs); err != nil {
		t.Fatal(err)
	}
	free := func() int64 {
		if err := unix.Statfs(s.Dir(), &statfs); err != nil {
			t.Fatal(err)
		}
		return int64(statfs.Bavail) * statfs.Bsize
	}
	before := free()
	res, err := StoreDedup(ctx, s, StoreDedupOptions{Method: LinkReflink})
	if errors.Is(err, ErrUnsupported) {
		if os.Getenv("IMGTOOL_REFLINK") == "require" {
			t.Fatalf("reflink required: %v", err)
		}
		t.Logf("no reflinks here: %v", err)
		res, err = StoreDedup(ctx, s, StoreDedupOptions{Method: LinkAuto})
		if err != nil {
			t.Fatal(err)
		}
		if res.Reflinked != 0 || res.Linked != 2 || inode(t, p["d/same"]) != inode(t, p["e/same2"]) {
			t.Errorf("auto without reflinks: %+v", *res)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	// XFS frees the blocks of unlinked inodes in the background.
	grown := free() - before
	for i := 0; i < 50 && grown < res.SavedBytes/2; i++ {
		unix.Sync()
		time.Sleep(40 * time.Millisecond)
		grown = free() - before
	}
	t.Logf("%+v; free space grew by %d bytes", *res, grown)
	// Reflinks keep metadata per file, so every copy of X and Y shares
	// data: X has 4 or 5 names (d/owner as root), Y two.
	want := int64(len(p) - 2)
	if res.Reflinked != want || res.Linked != want || res.KeptApart != 0 || res.SavedBytes == 0 {
		t.Errorf("result %+v, want %d reflinked", *res, want)
	}
	if grown < res.SavedBytes/2 {
		t.Errorf("free space grew by %d bytes, saved-bytes says %d", grown, res.SavedBytes)
	}
	if inode(t, p["d/mode"]) == inode(t, p["d/same"]) {
		t.Error("reflinked files share an inode")
	}
	var st unix.Stat_t
	if err := unix.Lstat(p["d/mode"], &st); err != nil || st.Mode&0o777 != 0o755 || st.Mtim.Sec != 1700000000 {
		t.Errorf("metadata lost: mode %o mtime %d %v", st.Mode, st.Mtim.Sec, err)
	}
	if v, err := unix.Lgetxattr(p["d/xattr"], "user.test", make([]byte, 8)); err != nil || v != 1 {
		t.Errorf("xattr lost: %v", err)
	}
	if p["d/owner"] != "" {
		if err := unix.Lstat(p["d/owner"], &st); err != nil || st.Uid != 1234 {
			t.Errorf("owner lost: %d %v", st.Uid, err)
		}
	}
	a, _ := os.ReadFile(p["d/same"])
	for _, name := range []string{"d/mode", "d/xattr", "e/same2"} {
		if b, err := os.ReadFile(p[name]); err != nil || !bytes.Equal(a, b) {
			t.Errorf("%s: content differs after reflink (%v)", name, err)
		}
	}
}
