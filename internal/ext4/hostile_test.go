package ext4

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/imgtool/imgtool/internal/tartest"
)

// TestHostileTars: the conformance helper's hostile archives (#5) give an
// error or a filesystem in which everything stayed inside: a symlink to
// "/" or "../.." is followed as if the image's root were "/" (the writer
// touches nothing but its own blocks), and PAX bombs are refused.
func TestHostileTars(t *testing.T) {
	apply := func(t *testing.T, layers ...[]byte) (*FS, error) {
		t.Helper()
		fs, err := New(Options{Size: MinSize})
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range layers {
			if _, err := fs.ApplyLayer(context.Background(), bytes.NewReader(l), discardAt{}); err != nil {
				return fs, err
			}
		}
		return fs, nil
	}
	for _, tc := range []struct {
		name   string
		layers [][]byte
		msg    string // in the error
	}{
		{"pax bomb (a 900 KiB xattr)", [][]byte{tartest.PAXBomb(900 << 10)}, "bomb: ext4: unsupported xattr"},
		{"pax header promising more than the stream", [][]byte{tartest.RawPAXHeader(1<<30, []byte("30 SCHILY.xattr.user.a=b\n"))}, "reading layer tar"},
		{"truncated", [][]byte{tartest.Tar(tartest.File("a", strings.Repeat("x", 100000)))[:20000]}, "a: reading content"},
		{"unclean name", [][]byte{tartest.Tar(tartest.File("a//b", "x"))}, "a//b"},
		{"dotdot inside", [][]byte{tartest.Tar(tartest.Dir("a/"), tartest.File("a/../../victim", "x"))}, "a/../../victim"},
		{"whiteout through a symlink to a file", [][]byte{tartest.Tar(tartest.File("f", "x"), tartest.Symlink("l", "f"), tartest.Whiteout("l/x"))}, "l/.wh.x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := apply(t, tc.layers...)
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.msg)
			}
			t.Log(err)
		})
	}
	// Symlinks out of the tree resolve inside the image.
	for _, target := range []string{"/", "../..", "/../../.."} {
		fs, err := apply(t,
			tartest.Tar(tartest.Symlink("x", target)),
			tartest.Tar(tartest.File("x/etc/victim", "inside")))
		if err != nil {
			t.Fatalf("symlink to %q: %v", target, err)
		}
		root := fs.inodes[rootIno].dir
		etc := fs.inodes[root.lookup("etc")]
		if etc == nil || !etc.isDir() || etc.dir.lookup("victim") == 0 {
			t.Errorf("symlink to %q: x/etc/victim did not land in the image's /etc", target)
		}
	}
}
