package ext4

import (
	"archive/tar"
	"bytes"
	"context"
	"testing"

	"github.com/imgtool/imgtool/internal/tartest"
)

type discardAt struct{}

func (discardAt) WriteAt(p []byte, off int64) (int, error) { return len(p), nil }

// FuzzApplyLayer feeds arbitrary bytes as a layer tar to a small
// filesystem: errors are fine, panics and hangs are not.
func FuzzApplyLayer(f *testing.F) {
	f.Add(tartest.Layer([]tarEntry{
		dirE("a/", 0o755), fileE("a/b", 0o644, []byte("hello")),
		{Header: tar.Header{Typeflag: tar.TypeSymlink, Name: "l", Linkname: "a"}},
		fileE("l/c", 0o644, []byte("via link")),
		{Header: tar.Header{Typeflag: tar.TypeLink, Name: "h", Linkname: "a/b"}},
		{Header: tar.Header{Typeflag: tar.TypeReg, Name: "a/.wh.b"}},
		{Header: tar.Header{Typeflag: tar.TypeReg, Name: ".wh..wh..opq"}},
	}...))
	f.Fuzz(func(t *testing.T, data []byte) {
		fs, err := New(Options{Size: MinSize})
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 2; i++ {
			if _, err := fs.ApplyLayer(context.Background(), bytes.NewReader(data), discardAt{}); err != nil {
				return
			}
		}
	})
}
