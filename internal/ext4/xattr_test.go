package ext4

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgtool/imgtool/internal/tartest"
	"github.com/imgtool/imgtool/internal/testutil"
)

// TestXattrPolicy: security.capability, user.* and other trusted.* xattrs
// are kept, in the inode and in a block, and trusted.overlay.* (overlayfs'
// own) is dropped; debugfs reads them back from the written image.
func TestXattrPolicy(t *testing.T) {
	debugfs := testutil.NeedTool(t, "debugfs")
	capv := "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
	layer := tartest.Layer([]tarEntry{
		{Header: tar.Header{Typeflag: tar.TypeReg, Name: "small", Mode: 0o755, PAXRecords: map[string]string{
			"SCHILY.xattr.security.capability":    capv,
			"SCHILY.xattr.user.note":              "hello",
			"SCHILY.xattr.trusted.kept":           "yes",
			"SCHILY.xattr.trusted.overlay.opaque": "y",
			"SCHILY.xattr.trusted.overlay.origin": "dropped",
		}}},
		{Header: tar.Header{Typeflag: tar.TypeReg, Name: "big", Mode: 0o644, PAXRecords: map[string]string{
			"SCHILY.xattr.user.big":                 strings.Repeat("b", 900),
			"SCHILY.xattr.trusted.overlay.redirect": "/x",
		}}},
	}...)
	img := filepath.Join(t.TempDir(), "fs.raw")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fs, err := New(Options{Size: MinSize})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(fs.Size()); err != nil {
		t.Fatal(err)
	}
	if _, err := fs.ApplyLayer(context.Background(), bytes.NewReader(layer), f); err != nil {
		t.Fatal(err)
	}
	e2fsck(t, img)
	list := func(name string) string {
		out, err := exec.Command(debugfs, "-R", "ea_list "+name, img).Output()
		if err != nil {
			t.Fatalf("debugfs ea_list %s: %v", name, err)
		}
		return string(out)
	}
	small, big := list("small"), list("big")
	t.Logf("small:\n%sbig:\n%s", small, big)
	for _, want := range []string{"security.capability (20)", `user.note (5) = "hello"`, `trusted.kept (3) = "yes"`} {
		if !strings.Contains(small, want) {
			t.Errorf("small lacks %s", want)
		}
	}
	if !strings.Contains(big, "user.big (900)") {
		t.Errorf("big lacks user.big")
	}
	if strings.Contains(small+big, "overlay") {
		t.Errorf("trusted.overlay.* kept")
	}
}
