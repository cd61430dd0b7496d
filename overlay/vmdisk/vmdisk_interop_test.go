package vmdisk

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imgtool/imgtool/internal/tartest"
	"github.com/imgtool/imgtool/internal/testutil"
	"github.com/imgtool/imgtool/internal/treecmp"
	"github.com/imgtool/imgtool/layers"
	"golang.org/x/sys/unix"
)

// tarEntry is one entry of a test layer.
type tarEntry = tartest.Entry

// writeTar writes the entries to path as tartest.Layer lays them out.
func writeTar(t testing.TB, path string, entries []tarEntry) {
	t.Helper()
	if err := os.WriteFile(path, tartest.Layer(entries...), 0o644); err != nil {
		t.Fatal(err)
	}
}

func dirE(name string) tarEntry {
	return tarEntry{Header: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755}}
}
func fileE(name string, mode int64, data []byte) tarEntry {
	return tarEntry{Header: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Uid: 1000, Gid: 1000}, Body: data}
}

// testImage writes four layer tars and builds the images k1, k2, k3 (the
// first 1, 2, 3 layers) and other (layers 1, 2 and a different third)
// into an OCI layout.
func testImage(t testing.TB) string {
	dir := t.TempDir()
	big := bytes.Repeat([]byte("0123456789abcdef"), 100000)
	sparse := make([]byte, 10<<20)
	copy(sparse[1<<20:], "in the middle")
	copy(sparse[len(sparse)-5:], "tail!")
	l1 := []tarEntry{
		dirE("etc/"), fileE("etc/passwd", 0o644, []byte("root:x:0:0\n")),
		dirE("bin/"), fileE("bin/big", 0o4755, big),
		fileE("bin/sparse", 0o600, sparse),
		{Header: tar.Header{Typeflag: tar.TypeLink, Name: "bin/biglink", Linkname: "bin/big"}},
		{Header: tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/fast", Linkname: "big", Mode: 0o777}},
		{Header: tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/slow", Linkname: strings.Repeat("x/", 60) + "big", Mode: 0o777}},
		{Header: tar.Header{Typeflag: tar.TypeChar, Name: "dev-null", Mode: 0o666, Devmajor: 1, Devminor: 3}},
		{Header: tar.Header{Typeflag: tar.TypeBlock, Name: "dev-big", Mode: 0o660, Devmajor: 259, Devminor: 70000}},
		{Header: tar.Header{Typeflag: tar.TypeFifo, Name: "fifo", Mode: 0o644}},
		{Header: tar.Header{Typeflag: tar.TypeReg, Name: "caps", Mode: 0o755, Uid: 1000, Gid: 70000, PAXRecords: map[string]string{
			"SCHILY.xattr.security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
			"SCHILY.xattr.user.small":          "v",
			"SCHILY.xattr.trusted.overlay.x":   "dropped"}}},
		{Header: tar.Header{Typeflag: tar.TypeReg, Name: "bigxattr", Mode: 0o644, PAXRecords: map[string]string{
			"SCHILY.xattr.user.big": strings.Repeat("y", 1000)}}},
		dirE("opq/"), fileE("opq/old", 0o644, []byte("old")), dirE("opq/sub/"), fileE("opq/sub/x", 0o644, []byte("x")),
		fileE("gone", 0o644, []byte("gone")),
		dirE("many/"),
	}
	// 2000 data blocks between holes: an extent tree of depth 2.
	frag := make([]byte, 4000*4096)
	for i := 0; i < len(frag); i += 2 * 4096 {
		frag[i] = byte(i >> 13)
	}
	l1 = append(l1, fileE("frag", 0o644, frag))
	for i := 0; i < 10000; i++ {
		l1 = append(l1, fileE(fmt.Sprintf("many/file-with-a-longish-name-%05d", i), 0o644, []byte(fmt.Sprint(i))))
	}
	l2 := []tarEntry{
		{Header: tar.Header{Typeflag: tar.TypeReg, Name: ".wh.gone"}},
		dirE("opq/"),
		{Header: tar.Header{Typeflag: tar.TypeReg, Name: "opq/.wh..wh..opq"}},
		fileE("opq/new", 0o644, []byte("new")),
		fileE("etc/passwd", 0o600, []byte("root:x:0:0:changed\n")),
		dirE("many/"),
		{Header: tar.Header{Typeflag: tar.TypeReg, Name: "many/.wh.file-with-a-longish-name-00007"}},
	}
	for i := 0; i < 2000; i++ {
		l2 = append(l2, fileE(fmt.Sprintf("many/added-%05d", i), 0o644, []byte("a")))
	}
	l3 := []tarEntry{
		dirE("bin/"),
		{Header: tar.Header{Typeflag: tar.TypeReg, Name: "bin/.wh.big"}},
		fileE("new-in-3", 0o644, bytes.Repeat([]byte{7}, 5000)),
	}
	l4 := []tarEntry{fileE("other", 0o644, []byte("another third layer"))}
	var paths []string
	for i, l := range [][]tarEntry{l1, l2, l3, l4} {
		p := filepath.Join(dir, fmt.Sprintf("l%d.tar", i+1))
		writeTar(t, p, l)
		paths = append(paths, p)
	}
	layout := filepath.Join(dir, "oci")
	epoch := time.Unix(1700000000, 0)
	for tag, ls := range map[string][]string{
		"k1": paths[:1], "k2": paths[:2], "k3": paths[:3], "other": {paths[0], paths[1], paths[3]},
	} {
		if _, err := layers.Build(context.Background(), layout, layers.BuildOptions{Layers: ls, Tag: tag, SourceDateEpoch: &epoch}); err != nil {
			t.Fatal(err)
		}
	}
	return layout
}

// TestDiskInterop builds the chain of a 3-layer image and checks each
// level: e2fsck -fn clean, and (as root) its loop mount equal to umoci raw
// unpack of the image cut at that layer. A second image sharing the first
// two layers gets byte-identical first two levels.
func TestDiskInterop(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "e2fsck")
	layout := testImage(t)
	work := t.TempDir()
	ctx := context.Background()
	opts := Options{Size: 256 << 20}
	res, err := Build(ctx, layers.ImageRef{Dir: layout, Tag: "k3"}, filepath.Join(work, "disk"), opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Levels) != 3 || res.Top != res.Levels[2].Path {
		t.Fatalf("result %+v", res)
	}
	root := os.Geteuid() == 0
	for k, lv := range res.Levels {
		t.Logf("level %d: %s file %d bytes, data %d bytes, %d data + %d metadata blocks",
			k, filepath.Base(lv.Path), lv.FileSize, lv.DataBytes, lv.DataBlocks, lv.MetaBlocks)
		testutil.Run(t, "qemu-img", "check", lv.Path)
		raw := filepath.Join(work, fmt.Sprintf("level%d.raw", k))
		testutil.Run(t, "qemu-img", "convert", "-O", "raw", lv.Path, raw)
		if out, err := exec.Command("e2fsck", "-fn", raw).CombinedOutput(); err != nil {
			t.Fatalf("e2fsck -fn level %d: %v\n%s", k, err, out)
		}
		if !root {
			continue
		}
		testutil.NeedTool(t, "umoci")
		want := filepath.Join(work, fmt.Sprintf("umoci%d", k))
		testutil.Run(t, "umoci", "raw", "unpack", "--image", fmt.Sprintf("%s:k%d", layout, k+1), want)
		mnt := filepath.Join(work, fmt.Sprintf("mnt%d", k))
		if err := os.Mkdir(mnt, 0o755); err != nil {
			t.Fatal(err)
		}
		testutil.Run(t, "mount", "-o", "loop,ro", raw, mnt)
		got, gerr := treecmp.Snapshot(mnt, treecmp.Options{NoDirMtime: true})
		// treecmp compares security.capability and user.*; the kernel
		// also sees no trusted.overlay.* (dropped).
		_, xerr := unix.Lgetxattr(filepath.Join(mnt, "caps"), "trusted.overlay.x", make([]byte, 64))
		exec.Command("umount", mnt).Run()
		if gerr != nil {
			t.Fatal(gerr)
		}
		if xerr != unix.ENODATA {
			t.Errorf("level %d: trusted.overlay.x on caps: %v, want ENODATA", k, xerr)
		}
		if e := got["caps"]; e.Xattrs["security.capability"] == "" || e.Xattrs["user.small"] != "v" {
			t.Errorf("level %d: caps has xattrs %q", k, e.Xattrs)
		}
		delete(got, "lost+found")
		exp, err := treecmp.Snapshot(want, treecmp.Options{NoDirMtime: true})
		if err != nil {
			t.Fatal(err)
		}
		if d := treecmp.Diff(exp, got); d != nil {
			t.Fatalf("level %d differs from umoci raw unpack:\n%s", k, strings.Join(d[:min(len(d), 20)], "\n"))
		}
	}
	res2, err := Build(ctx, layers.ImageRef{Dir: layout, Tag: "other"}, filepath.Join(work, "disk2"), opts)
	if err != nil {
		t.Fatal(err)
	}
	for k := 0; k < 3; k++ {
		a, _ := os.ReadFile(res.Levels[k].Path)
		b, _ := os.ReadFile(res2.Levels[k].Path)
		same := bytes.Equal(a, b) && filepath.Base(res.Levels[k].Path) == filepath.Base(res2.Levels[k].Path)
		if same != (k < 2) {
			t.Errorf("level %d: identical=%v, want %v", k, same, k < 2)
		}
	}
	if !root {
		testutil.NeedRoot(t) // the loop mounts above were skipped
	}
}

// TestDiskTooLarge: an image larger than --size is a clear error and
// leaves no OUTDIR.
func TestDiskTooLarge(t *testing.T) {
	src := t.TempDir()
	p := filepath.Join(src, "l.tar")
	writeTar(t, p, []tarEntry{fileE("a", 0o644, bytes.Repeat([]byte{1}, 8<<20)), fileE("b", 0o644, bytes.Repeat([]byte{2}, 8<<20))})
	layout := filepath.Join(src, "oci")
	if _, err := layers.Build(context.Background(), layout, layers.BuildOptions{Layers: []string{p}, Tag: "k1"}); err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	out := filepath.Join(work, "new", "disk") // parents made, then removed
	_, err := Build(context.Background(), layers.ImageRef{Dir: layout, Tag: "k1"}, out, Options{Size: 16 << 20})
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("err = %v, want ErrTooLarge", err)
	}
	// The error names the disk size, the layer and the file.
	for _, want := range []string{"16777216 bytes", "layer 0", "b: "} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if ents, _ := os.ReadDir(work); len(ents) != 0 {
		t.Fatalf("left behind: %v", ents)
	}
	t.Log(err)
}

// TestDiskCanceled: a build cancelled in the middle of a large file stops
// there and leaves nothing beside OUTDIR.
func TestDiskCanceled(t *testing.T) {
	src := t.TempDir()
	p := filepath.Join(src, "l.tar")
	writeTar(t, p, []tarEntry{fileE("big", 0o644, bytes.Repeat([]byte{1}, 32<<20))})
	layout := filepath.Join(src, "oci")
	if _, err := layers.Build(context.Background(), layout, layers.BuildOptions{Layers: []string{p}, Tag: "k1"}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var last int64
	opts := Options{Size: 64 << 20, Progress: func(p Progress) {
		if p.Done > 4<<20 {
			cancel()
		}
		last = p.Done
	}}
	work := t.TempDir()
	_, err := Build(ctx, layers.ImageRef{Dir: layout, Tag: "k1"}, filepath.Join(work, "new", "disk"), opts)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if last > 8<<20 {
		t.Errorf("read %d bytes after the cancel at 4 MiB", last)
	}
	if ents, _ := os.ReadDir(work); len(ents) != 0 {
		t.Fatalf("left behind: %v", ents)
	}
}

// TestDiskOutdirModes: a missing OUTDIR and its missing parents are made
// with the modes the umask allows, as mkdir -p and the level files get
// them (not MkdirTemp's 0700 or a fixed 0755).
func TestDiskOutdirModes(t *testing.T) {
	src := t.TempDir()
	p := filepath.Join(src, "l.tar")
	writeTar(t, p, []tarEntry{fileE("a", 0o644, []byte("a"))})
	layout := filepath.Join(src, "oci")
	if _, err := layers.Build(context.Background(), layout, layers.BuildOptions{Layers: []string{p}, Tag: "k1"}); err != nil {
		t.Fatal(err)
	}
	for _, umask := range []int{0o077, 0o022} {
		old := unix.Umask(umask)
		work := t.TempDir()
		out := filepath.Join(work, "a", "b", "disk")
		res, err := Build(context.Background(), layers.ImageRef{Dir: layout, Tag: "k1"}, out, Options{Size: 16 << 20})
		unix.Umask(old)
		if err != nil {
			t.Fatal(err)
		}
		for path, want := range map[string]os.FileMode{
			filepath.Join(work, "a"): os.ModeDir | 0o777&^os.FileMode(umask),
			out:                      os.ModeDir | 0o777&^os.FileMode(umask),
			res.Top:                  0o666 &^ os.FileMode(umask),
		} {
			if fi, err := os.Stat(path); err != nil || fi.Mode() != want {
				t.Errorf("umask %03o: %s: %v, want %v (%v)", umask, path, fi.Mode(), want, err)
			}
		}
	}
}
