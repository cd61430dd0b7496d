package layers

import (
	"archive/tar"
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/imgtool/imgtool/internal/testutil"
)

// imgBenchLayers and imgBenchLayerBytes size the benchmark image: 4 layers
// of 32 MiB of files each (128 MiB unpacked), gzip.
const (
	imgBenchLayers     = 4
	imgBenchLayerBytes = 32 << 20
)

// imgBenchImage builds (once, cached under os.TempDir()) a layout with a
// multi-layer image whose later layers replace and delete some of the
// earlier files. It returns the layout dir and the bytes of all layers
// uncompressed.
func imgBenchImage(b *testing.B) (string, int64) {
	b.Helper()
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("imgtool-bench-image-%dx%d", imgBenchLayers, imgBenchLayerBytes))
	stamp := filepath.Join(dir, "complete")
	if _, err := os.Stat(stamp); err != nil {
		os.RemoveAll(dir)
		work, err := os.MkdirTemp("", "imgtool-bench-src-*")
		if err != nil {
			b.Fatal(err)
		}
		defer os.RemoveAll(work)
		rng := rand.New(rand.NewSource(1))
		words := []string{"alpha ", "bravo ", "charlie ", "delta ", "echo ", "foxtrot ", "golf ", "hotel\n"}
		var layers []string
		for i := 0; i < imgBenchLayers; i++ {
			ld := filepath.Join(work, fmt.Sprint(i))
			var written int64
			for f := 0; written < imgBenchLayerBytes; f++ {
				size := 1 << (8 + rng.Intn(14)) // 256 B .. 2 MiB
				buf := make([]byte, 0, size)
				for len(buf) < size {
					if rng.Intn(4) == 0 {
						buf = append(buf, byte(rng.Intn(256)), byte(rng.Intn(256)))
					} else {
						buf = append(buf, words[rng.Intn(len(words))]...)
					}
				}
				// Later layers overwrite some names of earlier ones.
				p := filepath.Join(ld, fmt.Sprintf("d%02d/f%05d", f%50, f))
				os.MkdirAll(filepath.Dir(p), 0o755)
				if err := os.WriteFile(p, buf, 0o644); err != nil {
					b.Fatal(err)
				}
				written += int64(len(buf))
			}
			layers = append(layers, ld)
		}
		var blobs []string
		// Store each tree as its own layer (not a diff) so every layer
		// carries its full size, as in images built by Dockerfiles.
		for i, ld := range layers {
			l := filepath.Join(work, fmt.Sprintf("layer%d.tar.gz", i))
			f, err := os.Create(l)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := Create(context.Background(), f, ld, CreateOptions{}); err != nil {
				b.Fatal(err)
			}
			f.Close()
			blobs = append(blobs, l)
		}
		if _, err := Build(context.Background(), dir, BuildOptions{Layers: blobs, Tag: "bench"}); err != nil {
			b.Fatal(err)
		}
		os.WriteFile(stamp, nil, 0o644)
	}
	img, err := mustOpen(b, dir).Resolve(context.Background(), "bench", ResolveOptions{})
	if err != nil {
		b.Fatal(err)
	}
	var total int64
	for _, ld := range img.Manifest.Layers {
		rc, _ := img.Layout.OpenBlob(ld)
		d, err := List(context.Background(), rc, func(*tar.Header) error { return nil }, Limits{})
		rc.Close()
		if err != nil {
			b.Fatal(err)
		}
		total += d.UncompressedSize
	}
	return dir, total
}

// BenchmarkImageUnpack flattens a 4-layer image: imgtool's Unpack against
// umoci raw unpack on the same layout. MB/s are of uncompressed tar bytes.
func BenchmarkImageUnpack(b *testing.B) {
	dir, total := imgBenchImage(b)
	b.Run("imgtool", func(b *testing.B) {
		b.SetBytes(total)
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			out := filepath.Join(b.TempDir(), "rootfs")
			if _, err := Unpack(context.Background(), dir, "bench", out, UnpackOptions{}); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			os.RemoveAll(out)
			b.StartTimer()
		}
	})
	b.Run("umoci", func(b *testing.B) {
		testutil.NeedTool(b, "umoci")
		b.SetBytes(total)
		for i := 0; i < b.N; i++ {
			out := filepath.Join(b.TempDir(), "rootfs")
			testutil.Run(b, "umoci", "raw", "unpack", "--image", dir+":bench", out)
			b.StopTimer()
			os.RemoveAll(out)
			b.StartTimer()
		}
	})
}

// BenchmarkImageBuild builds a one-layer image (gzip) from the flattened
// benchmark tree, against umoci repack of the same tree onto an empty
// image. MB/s are of the tree's file bytes.
func BenchmarkImageBuild(b *testing.B) {
	dir, _ := imgBenchImage(b)
	src := filepath.Join(b.TempDir(), "rootfs")
	if _, err := Unpack(context.Background(), dir, "bench", src, UnpackOptions{}); err != nil {
		b.Fatal(err)
	}
	var treeBytes int64
	filepath.Walk(src, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			treeBytes += fi.Size()
		}
		return err
	})
	epoch := time.Unix(1700000000, 0)
	b.Run("imgtool", func(b *testing.B) {
		b.SetBytes(treeBytes)
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			out := filepath.Join(b.TempDir(), "layout")
			if _, err := Build(context.Background(), out, BuildOptions{Layers: []string{src}, SourceDateEpoch: &epoch}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("umoci", func(b *testing.B) {
		testutil.NeedTool(b, "umoci")
		b.SetBytes(treeBytes)
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			out := filepath.Join(b.TempDir(), "layout")
			bundle := filepath.Join(b.TempDir(), "bundle")
			testutil.Run(b, "umoci", "init", "--layout", out)
			testutil.Run(b, "umoci", "new", "--image", out+":base")
			testutil.Run(b, "umoci", "unpack", "--image", out+":base", bundle)
			os.RemoveAll(filepath.Join(bundle, "rootfs"))
			testutil.Run(b, "cp", "-a", src, filepath.Join(bundle, "rootfs"))
			b.StartTimer()
			testutil.Run(b, "umoci", "repack", "--image", out+":latest", bundle)
		}
	})
}
