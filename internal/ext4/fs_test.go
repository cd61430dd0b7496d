package ext4

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgtool/imgtool/internal/tartest"
	"github.com/imgtool/imgtool/internal/testutil"
)

// tarEntry is one entry of a test layer; tartest.Layer writes them.
type tarEntry = tartest.Entry

func dirE(name string, mode int64) tarEntry {
	return tarEntry{Header: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode}}
}
func fileE(name string, mode int64, data []byte) tarEntry {
	return tarEntry{Header: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode}, Body: data}
}

// testLayers is a 3-layer image exercising every feature.
func testLayers(t testing.TB) [][]byte {
	big := bytes.Repeat([]byte("0123456789abcdef"), 100000)
	sparse := make([]byte, 10<<20)
	copy(sparse[1<<20:], "in the middle")
	copy(sparse[len(sparse)-5:], "tail!")
	l1 := []tarEntry{
		dirE("etc/", 0o755), fileE("etc/passwd", 0o644, []byte("root:x:0:0\n")),
		dirE("bin/", 0o755), fileE("bin/big", 0o755, big),
		fileE("bin/sparse", 0o600, sparse),
		{Header: tar.Header{Typeflag: tar.TypeLink, Name: "bin/biglink", Linkname: "bin/big"}},
		{Header: tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/fast", Linkname: "big"}},
		{Header: tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/slow", Linkname: strings.Repeat("x/", 60) + "big"}},
		{Header: tar.Header{Typeflag: tar.TypeChar, Name: "dev-null", Mode: 0o666, Devmajor: 1, Devminor: 3}},
		{Header: tar.Header{Typeflag: tar.TypeBlock, Name: "dev-big", Mode: 0o660, Devmajor: 259, Devminor: 70000}},
		{Header: tar.Header{Typeflag: tar.TypeFifo, Name: "fifo", Mode: 0o644}},
		{Header: tar.Header{Typeflag: tar.TypeReg, Name: "caps", Mode: 0o755, Uid: 1000, Gid: 70000, PAXRecords: map[string]string{
			"SCHILY.xattr.security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
			"SCHILY.xattr.user.small":          "v",
			"SCHILY.xattr.trusted.overlay.x":   "dropped"}}},
		{Header: tar.Header{Typeflag: tar.TypeReg, Name: "bigxattr", Mode: 0o644, PAXRecords: map[string]string{
			"SCHILY.xattr.user.big": strings.Repeat("y", 1000)}}},
		dirE("opq/", 0o755), fileE("opq/old", 0o644, []byte("old")), dirE("opq/sub/", 0o755), fileE("opq/sub/x", 0o644, []byte("x")),
		fileE("gone", 0o644, []byte("gone")),
	}
	// 2000 data blocks between holes: 2000 extents, a tree of depth 2.
	frag := make([]byte, 4000*4096)
	for i := 0; i < len(frag); i += 2 * 4096 {
		frag[i] = 1
	}
	l1 = append(l1, fileE("frag2000", 0o644, frag), fileE("frag10", 0o644, frag[:20*4096]))
	l1 = append(l1, dirE("many/", 0o755))
	for i := 0; i < 10000; i++ {
		l1 = append(l1, fileE(fmt.Sprintf("many/file-with-a-longish-name-%05d", i), 0o644, []byte(fmt.Sprint(i))))
	}
	l2 := []tarEntry{
		{Header: tar.Header{Typeflag: tar.TypeReg, Name: ".wh.gone"}},
		{Header: tar.Header{Typeflag: tar.TypeReg, Name: "opq/.wh..wh..opq"}},
		fileE("opq/new", 0o644, []byte("new")),
		fileE("etc/passwd", 0o600, []byte("root:x:0:0:changed\n")),
		{Header: tar.Header{Typeflag: tar.TypeReg, Name: "many/.wh.file-with-a-longish-name-00007"}},
	}
	for i := 0; i < 2000; i++ {
		l2 = append(l2, fileE(fmt.Sprintf("many/added-%05d", i), 0o644, []byte("a")))
	}
	l3 := []tarEntry{
		{Header: tar.Header{Typeflag: tar.TypeReg, Name: "bin/.wh.big"}},
		fileE("new-in-3", 0o644, bytes.Repeat([]byte{7}, 5000)),
	}
	return [][]byte{tartest.Layer(l1...), tartest.Layer(l2...), tartest.Layer(l3...)}
}

func e2fsck(t *testing.T, img string) {
	t.Helper()
	out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput()
	if err != nil {
		t.Fatalf("e2fsck -fn %s: %v\n%s", img, err, out)
	}
}

// TestE2fsckRaw applies the test layers to a raw file and checks the
// filesystem after each.
func TestE2fsckRaw(t *testing.T) {
	testutil.NeedTool(t, "e2fsck")
	dir := t.TempDir()
	img := filepath.Join(dir, "fs.raw")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fs, err := New(Options{Size: 256 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(fs.Size()); err != nil {
		t.Fatal(err)
	}
	for i, l := range testLayers(t) {
		st, err := fs.ApplyLayer(context.Background(), bytes.NewReader(l), f)
		if err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
		t.Logf("layer %d: %+v", i, st)
		e2fsck(t, img)
	}
}
