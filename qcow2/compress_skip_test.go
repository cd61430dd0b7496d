package qcow2

import (
	"bytes"
	"context"
	"math/rand/v2"
	"path/filepath"
	"testing"
)

func TestLooksIncompressible(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	rnd := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return b
	}
	text := bytes.Repeat([]byte("the quick brown fox jumps over the lazy dog 0123456789\n"), 2000)
	for _, c := range []struct {
		name string
		b    []byte
		want bool
	}{
		{"random-64k", rnd(64 << 10), true},
		{"random-2M", rnd(2 << 20), true},
		{"random-4k", rnd(4096), true},
		{"random-512", rnd(512), true},
		{"text-64k", text[:64<<10], false},
		{"zeros", make([]byte, 64<<10), false},
		{"random-512-repeated", bytes.Repeat(rnd(512), 128), false},
		{"half-random-half-zero", append(rnd(32<<10), make([]byte, 32<<10)...), false},
		{"tiny", rnd(100), false},
	} {
		if got := looksIncompressible(c.b); got != c.want {
			t.Errorf("%s: looksIncompressible = %v, want %v", c.name, got, c.want)
		}
	}
}

// TestConvertZstdDense: with zstd, clusters of random data are stored
// uncompressed, text clusters compressed, and a cluster of a random
// block repeated (incompressible by its byte histogram, not by zstd) is
// still compressed; the content reads back.
func TestConvertZstdDense(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	const cs = 64 << 10
	data := make([]byte, 3*cs)
	for i := range data[:cs] {
		data[i] = byte(r.Uint32())
	}
	copy(data[cs:2*cs], bytes.Repeat([]byte("some text, some more text; "), cs/20))
	for i := range 16 << 10 {
		data[2*cs+i] = byte(r.Uint32())
	}
	for k := 1; k < 4; k++ {
		copy(data[2*cs+k*16<<10:], data[2*cs:2*cs+16<<10])
	}
	dir := t.TempDir()
	raw := writeRawFile(t, dir, "src.raw", data)
	src, err := Open(raw, Options{Format: FormatRaw})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	for _, ct := range []string{"zstd", "zlib"} {
		dst := filepath.Join(dir, ct+".qcow2")
		if err := Convert(context.Background(), src, dst, ConvertOptions{Compress: true, Create: CreateOptions{CompressionType: ct}}); err != nil {
			t.Fatal(err)
		}
		img := cvOpen(t, dst)
		want := []ExtentKind{KindData, KindCompressed, KindCompressed}
		if ct == "zlib" {
			want[2] = KindData // deflate's 4 KiB window can't reach the repeats
		}
		for i, k := range want {
			ext, err := img.Extents(int64(i)*cs, cs)
			if err != nil || len(ext) != 1 || ext[0].Kind != k {
				t.Errorf("%s: cluster %d: %+v, %v; want %v", ct, i, ext, err, k)
			}
		}
		got := make([]byte, len(data))
		if _, err := img.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s: content differs (%v)", ct, err)
		}
	}
}
