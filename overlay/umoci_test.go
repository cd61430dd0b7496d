package overlay

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/imgtool/imgtool/internal/testutil"
	"github.com/imgtool/imgtool/layers"
	"golang.org/x/sys/unix"
)

func writeMode(t testing.TB, root, rel, content string, mode os.FileMode, uid, gid int) {
	t.Helper()
	p := filepath.Join(root, rel)
	write(t, p, content)
	if err := os.Chown(p, uid, gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	// A fixed mtime: times of the test's own clock would make trees
	// compared across a second boundary differ.
	mt := time.Unix(1620000000, 0)
	must(t, os.Chtimes(p, mt, mt))
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// umociImage builds, with umoci, a layout holding tags v1..v4 of one
// image growing by one layer per tag: umoci repack of edited rootfs trees
// (files with owners and modes, xattrs, symlinks, hardlinks, a fifo, a
// device, deletions, a replaced directory) and a hand-written layer with
// an opaque directory added by umoci raw add-layer.
func umociImage(t testing.TB) string {
	t.Helper()
	dir, step := testutil.UmociLayout(t)
	step("base", "v1", func(r string) {
		writeMode(t, r, "etc/passwd", "root:x:0:0::/root:/bin/sh\n", 0o644, 0, 0)
		writeMode(t, r, "etc/shadow", "root:*::::::\n", 0o600, 0, 42)
		writeMode(t, r, "usr/bin/tool", "#!/bin/sh\necho tool\n", 0o4755, 0, 0)
		writeMode(t, r, "home/user/notes", "notes\n", 0o640, 1000, 1000)
		writeMode(t, r, "srv/data/a", "a\n", 0o644, 0, 0)
		writeMode(t, r, "srv/data/sub/b", "b\n", 0o644, 0, 0)
		writeMode(t, r, "srv/hard1", "shared inode\n", 0o644, 0, 0)
		must(t, os.Link(filepath.Join(r, "srv/hard1"), filepath.Join(r, "srv/hard2")))
		must(t, os.Symlink("../usr/bin/tool", filepath.Join(r, "etc/tool-link")))
		must(t, os.Symlink("/etc/passwd", filepath.Join(r, "abs-link")))
		must(t, unix.Mkfifo(filepath.Join(r, "srv/fifo"), 0o600))
		must(t, unix.Mknod(filepath.Join(r, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
		must(t, unix.Lsetxattr(filepath.Join(r, "home/user/notes"), "user.comment", []byte("kept"), 0))
		must(t, os.MkdirAll(filepath.Join(r, "empty"), 0o700))
		// Distinct mtimes for what v2 replaces, so that taking one for
		// the other shows.
		must(t, os.Chtimes(filepath.Join(r, "empty"), time.Unix(1600000000, 0), time.Unix(1600000000, 0)))
		must(t, os.Chmod(filepath.Join(r, "home/user"), 0o750))
	})
	step("v1", "v2", func(r string) {
		must(t, os.Remove(filepath.Join(r, "etc/shadow")))         // whiteout
		must(t, os.RemoveAll(filepath.Join(r, "srv/data")))        // replace a directory
		writeMode(t, r, "srv/data/new", "replaced\n", 0o644, 0, 0) // ... with new content
		must(t, os.Remove(filepath.Join(r, "srv/hard2")))          // drop one name of a hardlink pair
		must(t, os.Remove(filepath.Join(r, "etc/tool-link")))      // retarget a symlink
		must(t, os.Symlink("passwd", filepath.Join(r, "etc/tool-link")))
		must(t, os.Chmod(filepath.Join(r, "usr/bin/tool"), 0o755)) // metadata-only change
		must(t, os.Remove(filepath.Join(r, "empty")))              // a dir becomes a file
		writeMode(t, r, "empty", "now a file\n", 0o644, 0, 0)
		must(t, os.Chtimes(filepath.Join(r, "empty"), time.Unix(1650000000, 0), time.Unix(1650000000, 0)))
	})
	step("v2", "v3", func(r string) {
		writeMode(t, r, "var/log/app.log", "log\n", 0o644, 0, 0)
		must(t, os.Link(filepath.Join(r, "var/log/app.log"), filepath.Join(r, "var/log/app.log.1")))
		must(t, os.RemoveAll(filepath.Join(r, "home")))
	})
	// A layer umoci's repack does not write: an opaque directory, a
	// whiteout, a hardlink pair and a file over a directory.
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mt := time.Unix(1700000000, 0)
	hdr := func(h *tar.Header) {
		h.ModTime, h.Format = mt, tar.FormatPAX
		must(t, tw.WriteHeader(h))
	}
	hdr(&tar.Header{Name: "srv/", Typeflag: tar.TypeDir, Mode: 0o755})
	hdr(&tar.Header{Name: "srv/data/", Typeflag: tar.TypeDir, Mode: 0o700})
	hdr(&tar.Header{Name: "srv/data/.wh..wh..opq", Typeflag: tar.TypeReg, Mode: 0o644})
	hdr(&tar.Header{Name: "srv/data/only", Typeflag: tar.TypeReg, Mode: 0o644, Size: 5})
	tw.Write([]byte("only\n"))
	hdr(&tar.Header{Name: "srv/.wh.fifo", Typeflag: tar.TypeReg, Mode: 0o644})
	hdr(&tar.Header{Name: "srv/l1", Typeflag: tar.TypeReg, Mode: 0o644, Size: 3, PAXRecords: map[string]string{"SCHILY.xattr.user.x": "1"}})
	tw.Write([]byte("l1\n"))
	hdr(&tar.Header{Name: "srv/l2", Typeflag: tar.TypeLink, Linkname: "srv/l1"})
	must(t, tw.Close())
	layer := filepath.Join(t.TempDir(), "layer.tar")
	must(t, os.WriteFile(layer, buf.Bytes(), 0o644))
	testutil.Run(t, "umoci", "raw", "add-layer", "--image", dir+":v3", "--tag", "v4", layer)
	return dir
}

// TestMountUmociImage mounts every tag of an umoci-built image and compares
// the mounted tree with umoci raw unpack; the later tags share layers with
// the first mounted one, so they unpack nothing. Then it writes in a
// mount, commits, and compares umoci's unpack of the commit with the mount.
func TestMountUmociImage(t *testing.T) {
	testutil.NeedRoot(t)
	dir := umociImage(t)
	ctx := context.Background()
	s := testStore(t)
	mounts := map[string]string{}
	for i, tag := range []string{"v4", "v3", "v2", "v1"} {
		ref := layers.ImageRef{Dir: dir, Tag: tag}
		target := t.TempDir()
		c, st, err := s.Mount(ctx, ref, target, MountOptions{Name: tag}, ImageOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Unmount(target, unix.MNT_DETACH) })
		mounts[tag] = target
		if i == 0 && (st.Unpacked != 4 || st.Present != 0) {
			t.Errorf("%s: %+v, want 4 layers unpacked", tag, st)
		}
		if i > 0 && (st.Unpacked != 0 || st.Present != len(c.Layers)) {
			t.Errorf("%s shares every layer with v4 but: %+v", tag, st)
		}
		want := filepath.Join(t.TempDir(), "umoci")
		testutil.Run(t, "umoci", "raw", "unpack", "--image", dir+":"+tag, want)
		t.Run(tag, func(t *testing.T) { compareTrees(t, want, target) })
	}
	if ls, _ := s.Layers(); len(ls) != 4 {
		t.Errorf("store holds %d layers, want 4", len(ls))
	}
	// Copy mode (both the writable copy and the read-only hardlinked one)
	// gives the same tree as umoci.
	want := filepath.Join(t.TempDir(), "umoci")
	testutil.Run(t, "umoci", "raw", "unpack", "--image", dir+":v4", want)
	storeLayers, _ := s.Layers()
	before := map[string]map[string]treeEntry{}
	for _, l := range storeLayers {
		before[l.Dir] = scanTree(t, l.Dir)
	}
	for _, ro := range []bool{false, true} {
		cp := filepath.Join(t.TempDir(), "copy")
		if _, _, err := s.Mount(ctx, layers.ImageRef{Dir: dir, Tag: "v4"}, cp, MountOptions{Copy: true, ReadOnly: ro}, ImageOptions{}); err != nil {
			t.Fatal(err)
		}
		compareTrees(t, want, cp)
		if _, err := s.Unmount(ctx, cp, UnmountOptions{Remove: true}); err != nil {
			t.Fatal(err)
		}
	}
	// Making (and removing) the copies, hardlinked ones included, left
	// the store's layers as they were.
	for d, old := range before {
		now := scanTree(t, d)
		for p, e := range old {
			if now[p] != e {
				t.Errorf("copy mode changed the store: %s/%s: %+v, was %+v", d, p, now[p], e)
			}
		}
	}

	// Write in v4's mount: new, changed, deleted, a replaced directory
	// (the kernel marks it opaque in the upper dir), a new directory (also
	// marked opaque: must not become an opaque marker) and a chmod.
	edit := func(r string) {
		t.Helper()
		writeMode(t, r, "new/dir/file", "new\n", 0o644, 7, 8)
		writeMode(t, r, "etc/passwd", "root:x:0:0::/root:/bin/bash\n", 0o644, 0, 0)
		must(t, os.Remove(filepath.Join(r, "abs-link")))
		must(t, os.RemoveAll(filepath.Join(r, "srv/data")))
		writeMode(t, r, "srv/data/fresh", "fresh\n", 0o600, 0, 0)
		must(t, os.Chmod(filepath.Join(r, "usr/bin/tool"), 0o700))
		must(t, os.Remove(filepath.Join(r, "srv/l2")))
		// Fixed mtimes, so that two edited trees can be compared.
		for _, p := range []string{"new/dir/file", "etc/passwd", "srv/data/fresh"} {
			mt := time.Unix(1710000000, 0)
			must(t, os.Chtimes(filepath.Join(r, p), mt, mt))
		}
	}
	m := mounts["v4"]
	edit(m)
	res, err := s.Commit(ctx, m, layers.ImageRef{Dir: dir, Tag: "committed"}, CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(res.Image.Layers); n != 1 {
		t.Fatalf("commit wrote %d layers", n)
	}
	got := filepath.Join(t.TempDir(), "umoci")
	testutil.Run(t, "umoci", "raw", "unpack", "--image", dir+":committed", got)
	compareTrees(t, m, got)

	// A writable copy-mode container commits too: the same changes made
	// in a copy of v4 give the same tree.
	cp := filepath.Join(t.TempDir(), "copy")
	if _, _, err := s.Mount(ctx, layers.ImageRef{Dir: dir, Tag: "v4"}, cp, MountOptions{Copy: true}, ImageOptions{}); err != nil {
		t.Fatal(err)
	}
	edit(cp)
	if _, err := s.Commit(ctx, cp, layers.ImageRef{Dir: dir, Tag: "committed-copy"}, CommitOptions{}); err != nil {
		t.Fatal(err)
	}
	gotCopy := filepath.Join(t.TempDir(), "umoci")
	testutil.Run(t, "umoci", "raw", "unpack", "--image", dir+":committed-copy", gotCopy)
	compareTrees(t, cp, gotCopy)
	compareTrees(t, got, gotCopy)

	// The committed image mounts too, sharing the four layers below.
	target := t.TempDir()
	_, st, err := s.Mount(ctx, layers.ImageRef{Dir: dir, Tag: "committed"}, target, MountOptions{ReadOnly: true}, ImageOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(target, unix.MNT_DETACH) })
	if st.Unpacked != 1 || st.Present != 4 {
		t.Errorf("committed image: %+v, want 1 unpacked, 4 present", st)
	}
	compareTrees(t, m, target)
}
