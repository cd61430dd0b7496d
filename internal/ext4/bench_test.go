package ext4

import (
	"archive/tar"
	"bufio"
	"context"
	"fmt"
	"io"
	"io/fs"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imgtool/imgtool/internal/testutil"
)

// benchTree returns a directory tree of about 256 MiB (cached under
// $TMPDIR/imgtool-bench-ext4; delete it to rebuild) and a tar of it: 20
// directories of files up to 2 MiB (most under 64 KiB), one directory of
// 5,000 files under 4 KiB, and symlinks, all of random content from a
// fixed seed. It returns the tree, the tar and the tree's bytes of data.
func benchTree(b *testing.B) (string, string, int64) {
	dir := filepath.Join(os.TempDir(), "imgtool-bench-ext4")
	tree, tarPath, done := filepath.Join(dir, "tree"), filepath.Join(dir, "tree.tar"), filepath.Join(dir, "done")
	if st, err := os.ReadFile(done); err == nil {
		var n int64
		fmt.Sscan(string(st), &n)
		return tree, tarPath, n
	}
	os.RemoveAll(dir)
	rng := rand.New(rand.NewSource(4))
	pool := make([]byte, 8<<20)
	rng.Read(pool)
	var total int64
	mtime := time.Unix(1700000000, 0)
	write := func(p string, size int) {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			b.Fatal(err)
		}
		off := rng.Intn(len(pool) - size)
		if err := os.WriteFile(p, pool[off:off+size], 0o644); err != nil {
			b.Fatal(err)
		}
		os.Chtimes(p, mtime, mtime)
		total += int64(size)
	}
	for d := 0; d < 20; d++ {
		var n int64
		for i := 0; n < 12<<20; i++ {
			size := 1 + rng.Intn(64<<10)
			if i%4 == 0 {
				size = 1 + rng.Intn(2<<20)
			}
			write(filepath.Join(tree, fmt.Sprintf("d%02d/f%05d", d, i)), size)
			n += int64(size)
		}
		if err := os.Symlink(fmt.Sprintf("d%02d/f00000", d), filepath.Join(tree, fmt.Sprintf("link%02d", d))); err != nil {
			b.Fatal(err)
		}
	}
	for i := 0; i < 5000; i++ {
		write(filepath.Join(tree, "small", fmt.Sprintf("s%05d", i)), 1+rng.Intn(4096))
	}
	f, err := os.Create(tarPath)
	if err != nil {
		b.Fatal(err)
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	tw := tar.NewWriter(bw)
	err = filepath.WalkDir(tree, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == tree {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		h, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		h.Name = strings.TrimPrefix(p, tree+"/")
		if fi.IsDir() {
			h.Name += "/"
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			src, err := os.Open(p)
			if err != nil {
				return err
			}
			defer src.Close()
			_, err = io.Copy(tw, src)
			return err
		}
		return nil
	})
	if err == nil {
		err = tw.Close()
	}
	if err == nil {
		err = bw.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(done, []byte(fmt.Sprint(total)), 0o644); err != nil {
		b.Fatal(err)
	}
	return tree, tarPath, total
}

// BenchmarkWriter writes a 4 GiB ext4 of a 256 MiB tree into a raw file:
// the writer applying the tree's tar, beside its peer mkfs.ext4 -d over
// the tree itself. Both read their input from the page cache.
func BenchmarkWriter(b *testing.B) {
	tree, tarPath, total := benchTree(b)
	const size = 4 << 30
	b.Run("imgtool", func(b *testing.B) {
		b.SetBytes(total)
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			img := filepath.Join(b.TempDir(), "fs.raw")
			out, err := os.Create(img)
			if err != nil {
				b.Fatal(err)
			}
			in, err := os.Open(tarPath)
			if err != nil {
				b.Fatal(err)
			}
			fsys, err := New(Options{Size: size})
			if err == nil {
				err = out.Truncate(fsys.Size())
			}
			if err == nil {
				_, err = fsys.ApplyLayer(context.Background(), bufio.NewReaderSize(in, 1<<20), out)
			}
			in.Close()
			if err == nil {
				err = out.Sync() // as mke2fs syncs when it closes the device
			}
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			os.Remove(img)
			b.StartTimer()
		}
	})
	b.Run("mkfs.ext4-d", func(b *testing.B) {
		testutil.NeedTool(b, "mkfs.ext4")
		b.SetBytes(total)
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			img := filepath.Join(b.TempDir(), "fs.raw")
			if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-b", "4096", "-d", tree, img, "4G").CombinedOutput(); err != nil {
				b.Fatalf("mkfs.ext4: %v\n%s", err, out)
			}
			b.StopTimer()
			os.Remove(img)
			b.StartTimer()
		}
	})
}
