package vmdisk

import (
	"archive/tar"
	"bufio"
	"context"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/imgtool/imgtool/internal/testutil"
	"github.com/imgtool/imgtool/layers"
)

const (
	benchLayers     = 10
	benchLayerBytes = 100 << 20
)

// benchImage returns an OCI layout (cached under $TMPDIR) holding a
// 10-layer image of about 1 GiB of files (sizes up to 2 MiB, random
// content), each layer replacing a few files of the one below, and the
// total uncompressed size.
func benchImage(b *testing.B) (string, int64) {
	dir := filepath.Join(os.TempDir(), "imgtool-bench-vmdisk")
	layout := filepath.Join(dir, "oci")
	done := filepath.Join(dir, "done")
	if st, err := os.ReadFile(done); err == nil {
		var n int64
		fmt.Sscan(string(st), &n)
		return layout, n
	}
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewSource(10))
	pool := make([]byte, 8<<20)
	rng.Read(pool)
	var paths []string
	var total int64
	mtime := time.Unix(1700000000, 0)
	for k := 0; k < benchLayers; k++ {
		p := filepath.Join(dir, fmt.Sprintf("%d.tar", k))
		f, err := os.Create(p)
		if err != nil {
			b.Fatal(err)
		}
		bw := bufio.NewWriterSize(f, 1<<20)
		tw := tar.NewWriter(bw)
		hdr := func(h *tar.Header) {
			h.ModTime = mtime
			if err := tw.WriteHeader(h); err != nil {
				b.Fatal(err)
			}
		}
		hdr(&tar.Header{Typeflag: tar.TypeDir, Name: fmt.Sprintf("l%d/", k), Mode: 0o755})
		var n int64
		for i := 0; n < benchLayerBytes; i++ {
			size := 1 + rng.Intn(2<<20)
			if i%4 != 0 {
				size = 1 + rng.Intn(64<<10) // mostly small files
			}
			name := fmt.Sprintf("l%d/f%05d", k, i)
			if k > 0 && i < 10 {
				name = fmt.Sprintf("l%d/f%05d", k-1, i) // replaces a lower file
			}
			hdr(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(size)})
			off := rng.Intn(len(pool) - size)
			if _, err := tw.Write(pool[off : off+size]); err != nil {
				b.Fatal(err)
			}
			n += int64(size)
		}
		if err := tw.Close(); err != nil {
			b.Fatal(err)
		}
		if err := bw.Flush(); err != nil {
			b.Fatal(err)
		}
		st, _ := f.Stat()
		total += st.Size()
		f.Close()
		paths = append(paths, p)
	}
	if _, err := layers.Build(context.Background(), layout, layers.BuildOptions{Layers: paths, Tag: "bench"}); err != nil {
		b.Fatal(err)
	}
	for _, p := range paths {
		os.Remove(p)
	}
	if err := os.WriteFile(done, []byte(fmt.Sprint(total)), 0o644); err != nil {
		b.Fatal(err)
	}
	return layout, total
}

// BenchmarkDisk builds the disk chain of a 1 GiB, 10-layer image, beside
// its peer: umoci raw unpack plus mkfs.ext4 -d of the unpacked tree (one
// flat raw ext4, no levels), on the same input.
func BenchmarkDisk(b *testing.B) {
	layout, total := benchImage(b)
	b.Run("imgtool", func(b *testing.B) {
		b.SetBytes(total)
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			out := filepath.Join(b.TempDir(), "disk")
			if _, err := Build(context.Background(), layers.ImageRef{Dir: layout, Tag: "bench"}, out, Options{}); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			os.RemoveAll(out)
			b.StartTimer()
		}
	})
	b.Run("umoci+mkfs", func(b *testing.B) {
		testutil.NeedTool(b, "umoci", "mkfs.ext4")
		testutil.NeedRoot(b)
		b.SetBytes(total)
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			tmp := b.TempDir()
			rootfs := filepath.Join(tmp, "rootfs")
			if out, err := exec.Command("umoci", "raw", "unpack", "--image", layout+":bench", rootfs).CombinedOutput(); err != nil {
				b.Fatalf("umoci: %v\n%s", err, out)
			}
			img := filepath.Join(tmp, "disk.raw")
			if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-b", "4096", "-d", rootfs, img, "16G").CombinedOutput(); err != nil {
				b.Fatalf("mkfs.ext4: %v\n%s", err, out)
			}
			b.StopTimer()
			os.RemoveAll(tmp)
			b.StartTimer()
		}
	})
}
