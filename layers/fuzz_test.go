package layers

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/imgtool/imgtool/internal/tartest"
)

// FuzzApply reads and applies arbitrary blobs: it must never panic, hang,
// exceed the limits or write outside the target, and List must agree
// with Apply on whether the stream is readable.
func FuzzApply(f *testing.F) {
	seeds := [][]byte{
		tartest.Tar(tartest.Dir("a/"), tartest.File("a/f", "hello"), tartest.Symlink("a/l", "/"), tartest.Hardlink("h", "a/f"),
			tartest.Whiteout("b"), tartest.Opaque("a"), tartest.Fifo("p"), tartest.File("x", "y").Xattr("user.k", "v")),
		tartest.Tar(tartest.Symlink("x", "/."), tartest.File("x/etc/passwd", "root")),
		tartest.Tar(tartest.File("../evil", "x")),
		tartest.Tar(tartest.File(".wh.", "")),
		tartest.PAXBomb(600),
	}
	src := f.TempDir()
	os.WriteFile(filepath.Join(src, "f"), []byte("abc"), 0o644)
	os.Symlink("f", filepath.Join(src, "l"))
	os.Link(filepath.Join(src, "f"), filepath.Join(src, "h"))
	os.Mkdir(filepath.Join(src, "d"), 0o1777)
	for _, c := range []Compression{Gzip, Zstd} {
		var buf bytes.Buffer
		if _, err := Create(context.Background(), &buf, src, CreateOptions{Compression: c}); err != nil {
			f.Fatal(err)
		}
		seeds = append(seeds, buf.Bytes())
	}
	seeds = append(seeds, tartest.Gzip(seeds[0]), tartest.Zstd(seeds[1], 0))
	for _, s := range seeds {
		f.Add(s)
	}
	lim := Limits{MaxBytes: 8 << 20, MaxEntries: 500, ZstdMaxWindow: 8 << 20, ZstdMaxMemory: 16 << 20}
	f.Fuzz(func(t *testing.T, blob []byte) {
		parent := t.TempDir()
		root, outside := filepath.Join(parent, "root"), filepath.Join(parent, "outside")
		if err := os.Mkdir(outside, 0o755); err != nil {
			t.Fatal(err)
		}
		_, applyErr := Apply(context.Background(), bytes.NewReader(blob), root, ApplyOptions{Limits: lim, AllowDevices: ptr(false), SkipDevices: true})
		ents, err := os.ReadDir(parent)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			if e.Name() != "root" && e.Name() != "outside" {
				t.Fatalf("wrote %s outside the target", e.Name())
			}
		}
		if o, _ := os.ReadDir(outside); len(o) != 0 {
			t.Fatalf("wrote into a sibling of the target: %v", o)
		}
		_, listErr := List(context.Background(), bytes.NewReader(blob), nil, lim)
		if listErr != nil && applyErr == nil {
			t.Fatalf("List failed (%v) but Apply succeeded", listErr)
		}
	})
}
