package vmdisk

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgtool/imgtool/internal/testutil"
	"github.com/imgtool/imgtool/internal/treecmp"
	"github.com/imgtool/imgtool/layers"
	"golang.org/x/sys/unix"
)

// TestDiskUmociImage builds a 3-layer image with umoci (new, unpack,
// change the rootfs, repack, three times) and checks every level of its
// disk chain: e2fsck -fn clean and a loop mount equal to umoci raw unpack
// of the image cut at that layer.
func TestDiskUmociImage(t *testing.T) {
	testutil.NeedTool(t, "umoci", "qemu-img", "e2fsck")
	testutil.NeedRoot(t)
	work := t.TempDir()
	layout := filepath.Join(work, "oci")
	bundle := filepath.Join(work, "bundle")
	rootfs := filepath.Join(bundle, "rootfs")
	testutil.Run(t, "umoci", "init", "--layout", layout)
	testutil.Run(t, "umoci", "new", "--image", layout+":base")
	testutil.Run(t, "umoci", "unpack", "--image", layout+":base", bundle)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	write := func(p string, b []byte, mode os.FileMode) {
		t.Helper()
		must(os.MkdirAll(filepath.Dir(filepath.Join(rootfs, p)), 0o755))
		must(os.WriteFile(filepath.Join(rootfs, p), b, mode))
		must(os.Chmod(filepath.Join(rootfs, p), mode))
	}
	repack := func(tag string) {
		t.Helper()
		testutil.Run(t, "umoci", "repack", "--refresh-bundle", "--image", layout+":"+tag, bundle)
	}
	r := func(p string) string { return filepath.Join(rootfs, p) }

	// Layer 1.
	write("etc/passwd", []byte("root:x:0:0\n"), 0o644)
	write("bin/tool", bytes.Repeat([]byte("tool"), 50000), 0o4755)
	must(os.Link(r("bin/tool"), r("bin/tool-link")))
	must(os.Symlink("tool", r("bin/fast")))
	must(os.Symlink(strings.Repeat("../bin/", 12)+"tool", r("bin/slow")))
	must(unix.Mknod(r("dev-null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(unix.Mkfifo(r("fifo"), 0o600))
	write("caps", []byte("#!/bin/sh\n"), 0o755)
	must(unix.Setxattr(r("caps"), "user.note", []byte("hello"), 0))
	must(unix.Setxattr(r("caps"), "user.big", bytes.Repeat([]byte("z"), 600), 0))
	must(os.Chown(r("caps"), 1000, 2000))
	// A file capability (cap_net_bind_service, VFS_CAP_REVISION_2), set
	// after the chown, which would clear it.
	must(unix.Setxattr(r("caps"), "security.capability", []byte("\x01\x00\x00\x02\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"), 0))
	f, err := os.Create(r("sparse"))
	must(err)
	f.WriteAt([]byte("start"), 0)
	f.WriteAt([]byte("end"), 64<<20)
	f.Close()
	write("opq/old", []byte("old"), 0o644)
	write("opq/sub/x", []byte("x"), 0o644)
	write("gone", []byte("gone"), 0o644)
	must(os.Mkdir(r("many"), 0o755))
	for i := 0; i < 10000; i++ {
		must(os.WriteFile(r(fmt.Sprintf("many/entry-%05d", i)), []byte(fmt.Sprint(i)), 0o644))
	}
	repack("k1")
	// Layer 2: deletions (whiteouts), a directory replaced (opaque or
	// whiteouts, as umoci chooses), changes.
	must(os.Remove(r("gone")))
	must(os.RemoveAll(r("opq")))
	write("opq/new", []byte("new"), 0o600)
	write("etc/passwd", []byte("root:x:0:0:changed\n"), 0o600)
	must(os.Remove(r("many/entry-00007")))
	for i := 0; i < 500; i++ {
		must(os.WriteFile(r(fmt.Sprintf("many/more-%05d", i)), []byte("m"), 0o644))
	}
	repack("k2")
	// Layer 3: a hardlinked file loses one name; a symlink is retargeted.
	must(os.Remove(r("bin/tool")))
	must(os.Remove(r("bin/fast")))
	must(os.Symlink("tool-link", r("bin/fast")))
	write("new-in-3", bytes.Repeat([]byte{9}, 9000), 0o644)
	repack("k3")

	res, err := Build(context.Background(), layers.ImageRef{Dir: layout, Tag: "k3"}, filepath.Join(work, "disk"), Options{Size: 512 << 20})
	if err != nil {
		t.Fatal(err)
	}
	// umoci new's empty base has no layers: the image has three.
	if len(res.Levels) != 3 {
		t.Fatalf("%d levels", len(res.Levels))
	}
	for k, lv := range res.Levels {
		t.Logf("level %d: file %d bytes, data %d bytes", k, lv.FileSize, lv.DataBytes)
		raw := filepath.Join(work, fmt.Sprintf("level%d.raw", k))
		testutil.Run(t, "qemu-img", "convert", "-O", "raw", lv.Path, raw)
		if out, err := exec.Command("e2fsck", "-fn", raw).CombinedOutput(); err != nil {
			t.Fatalf("e2fsck -fn level %d: %v\n%s", k, err, out)
		}
		want := filepath.Join(work, fmt.Sprintf("umoci%d", k))
		testutil.Run(t, "umoci", "raw", "unpack", "--image", fmt.Sprintf("%s:k%d", layout, k+1), want)
		mnt := filepath.Join(work, fmt.Sprintf("mnt%d", k))
		must(os.Mkdir(mnt, 0o755))
		testutil.Run(t, "mount", "-o", "loop,ro", raw, mnt)
		got, gerr := treecmp.Snapshot(mnt, treecmp.Options{NoDirMtime: true})
		exec.Command("umount", mnt).Run()
		must(gerr)
		delete(got, "lost+found")
		exp, err := treecmp.Snapshot(want, treecmp.Options{NoDirMtime: true})
		must(err)
		if got["caps"].Xattrs["security.capability"] == "" {
			t.Errorf("level %d: caps lost security.capability", k)
		}
		if d := treecmp.Diff(exp, got); d != nil {
			t.Fatalf("level %d differs from umoci raw unpack:\n%s", k, strings.Join(d[:min(len(d), 20)], "\n"))
		}
		os.Remove(raw)
	}
}
