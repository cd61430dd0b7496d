package ext4

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/imgtool/imgtool/internal/tartest"
)

// TestBadInput: hostile or unsupported layers fail with a clear error
// naming the entry, and never panic.
func TestBadInput(t *testing.T) {
	long := strings.Repeat("n", 256)
	for _, tc := range []struct {
		name    string
		entries []tarEntry
		want    error
		msg     string
	}{
		{"long name", []tarEntry{fileE(long, 0o644, nil)}, ErrNameTooLong, long},
		{"long dir name", []tarEntry{fileE(long+"/x", 0o644, nil)}, ErrNameTooLong, long},
		{"dotdot", []tarEntry{fileE("a/../../etc/passwd", 0o644, nil)}, ErrUnsafePath, "a/../../etc/passwd"},
		{"absolute", []tarEntry{fileE("/etc/passwd", 0o644, nil)}, ErrUnsafePath, "/etc/passwd"},
		{"duplicate", []tarEntry{fileE("a", 0o644, nil), fileE("a", 0o644, nil)}, ErrUnsupported, "duplicate"},
		{"hardlink to nothing", []tarEntry{{Header: tar.Header{Typeflag: tar.TypeLink, Name: "h", Linkname: "missing"}}}, ErrHardlink, "missing"},
		{"hardlink to dir", []tarEntry{dirE("d/", 0o755), {Header: tar.Header{Typeflag: tar.TypeLink, Name: "h", Linkname: "d"}}}, ErrHardlink, "directory"},
		{"symlink loop", []tarEntry{
			{Header: tar.Header{Typeflag: tar.TypeSymlink, Name: "a", Linkname: "b"}},
			{Header: tar.Header{Typeflag: tar.TypeSymlink, Name: "b", Linkname: "a"}},
			fileE("a/x", 0o644, nil)}, ErrUnsafePath, "too many symlinks"},
		{"file as parent", []tarEntry{fileE("f", 0o644, nil), fileE("f/x", 0o644, nil)}, ErrUnsafePath, "not a directory"},
		{"unsupported type", []tarEntry{{Header: tar.Header{Typeflag: tar.TypeCont, Name: "c"}}}, ErrUnsupported, "'7'"},
		{"unsupported xattr", []tarEntry{{Header: tar.Header{Typeflag: tar.TypeReg, Name: "x", PAXRecords: map[string]string{"SCHILY.xattr.weird.name": "v"}}}}, ErrUnsupportedXattr, "weird.name"},
		{"lost+found replaced", []tarEntry{fileE("lost+found", 0o644, nil)}, ErrUnsupported, "lost+found"},
		{"bare whiteout", []tarEntry{fileE(".wh.", 0o644, nil)}, ErrBadWhiteout, ".wh."},
		{"whiteout of dotdot", []tarEntry{dirE("a/", 0o755), fileE("a/.wh...", 0o644, nil)}, ErrBadWhiteout, `".."`},
		{"device number too big", []tarEntry{{Header: tar.Header{Typeflag: tar.TypeChar, Name: "c", Devmajor: 1 << 12}}}, ErrUnsupported, "4096:0"},
		{"too big", []tarEntry{fileE("big", 0o644, make([]byte, MinSize+1))}, ErrNoSpace, "big"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs, err := New(Options{Size: MinSize})
			if err != nil {
				t.Fatal(err)
			}
			_, err = fs.ApplyLayer(context.Background(), bytes.NewReader(tartest.Layer(tc.entries...)), discardAt{})
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v, want %v mentioning %q", err, tc.want, tc.msg)
			}
			// The error is sticky.
			if _, err2 := fs.ApplyLayer(context.Background(), bytes.NewReader(nil), discardAt{}); err2 == nil {
				t.Fatal("ApplyLayer after a failed layer succeeded")
			}
		})
	}
}

// TestHardlinkLimit: a file cannot get more names than i_links_count
// holds (65000, as the kernel allows); the count is set near the limit
// directly rather than by 65000 entries.
func TestHardlinkLimit(t *testing.T) {
	fs, err := New(Options{Size: MinSize})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fs.ApplyLayer(context.Background(), bytes.NewReader(tartest.Layer([]tarEntry{fileE("f", 0o644, []byte("x"))}...)), discardAt{}); err != nil {
		t.Fatal(err)
	}
	fs.inodes[fs.inodes[rootIno].dir.lookup("f")].links = maxLinkCount - 1
	links := []tarEntry{
		{Header: tar.Header{Typeflag: tar.TypeLink, Name: "l1", Linkname: "f"}},
		{Header: tar.Header{Typeflag: tar.TypeLink, Name: "l2", Linkname: "f"}},
	}
	_, err = fs.ApplyLayer(context.Background(), bytes.NewReader(tartest.Layer(links...)), discardAt{})
	if !errors.Is(err, ErrHardlink) || !strings.Contains(err.Error(), "l2") || !strings.Contains(err.Error(), "65000 names") {
		t.Fatalf("err = %v, want ErrHardlink naming l2 and the limit", err)
	}
}
