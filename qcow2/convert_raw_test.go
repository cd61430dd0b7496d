package qcow2

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func TestConvertRawFixtures(t *testing.T) {
	for _, name := range fixtures {
		t.Run(name, func(t *testing.T) {
			img := openFixture(t, name)
			dst := filepath.Join(t.TempDir(), "out.raw")
			var mu sync.Mutex
			var calls int
			var last int64
			err := Convert(context.Background(), img, dst, ConvertOptions{Create: CreateOptions{Format: FormatRaw}, Workers: 2, ChunkSize: 8192, Progress: func(done, total int64) {
				mu.Lock()
				defer mu.Unlock()
				if done < last || total != img.Size() {
					t.Errorf("progress %d/%d after %d", done, total, last)
				}
				last = done
				calls++
			}})
			if err != nil {
				t.Fatal(err)
			}
			if last != img.Size() || calls < 2 {
				t.Errorf("progress ended at %d after %d calls, want %d", last, calls, img.Size())
			}
			checkRawSum(t, name, dst)
			if a, ok := allocatedSize(mustOpen(t, dst)); ok && a >= img.Size()/2 {
				t.Errorf("output uses %d bytes on disk for a %d-byte mostly empty image; want holes", a, img.Size())
			}
			// No temporary file is left behind.
			ents, _ := os.ReadDir(filepath.Dir(dst))
			if len(ents) != 1 {
				t.Errorf("directory holds %d entries, want only the output", len(ents))
			}
		})
	}
}

func mustOpen(t *testing.T, p string) *os.File {
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestConvertRawCancel(t *testing.T) {
	img := openFixture(t, "chain/top.qcow2")
	dir := t.TempDir()
	dst := filepath.Join(dir, "out.raw")
	os.WriteFile(dst, []byte("keep me"), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Convert(ctx, img, dst, ConvertOptions{Create: CreateOptions{Format: FormatRaw}}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled convert: %v", err)
	}
	if b, _ := os.ReadFile(dst); string(b) != "keep me" {
		t.Error("cancelled convert touched the destination")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("cancelled convert left %d entries", len(ents))
	}
}

// rangeWriter records what is written where, for convertInto.
type rangeWriter struct {
	mu      sync.Mutex
	buf     []byte
	written []bool
}

func (w *rangeWriter) WriteAt(p []byte, off int64) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	copy(w.buf[off:], p)
	for i := range p {
		w.written[off+int64(i)] = true
	}
	return len(p), nil
}

// TestConvertRawNoSparse: -S 0 output is fully allocated and equal to
// the sparse output; without fallocate every byte, zeros included, is
// written.
func TestConvertRawNoSparse(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.qcow2")
	if err := Create(src, CreateOptions{Size: 4 << 20, ClusterSize: 4096}); err != nil {
		t.Fatal(err)
	}
	img, err := Open(src, Options{Writable: true})
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 4<<20)
	for i := range 300 << 10 {
		data[1<<20+i] = byte(i*7 + 1)
	}
	clear(data[1<<20+64<<10 : 1<<20+72<<10]) // a zero block inside data
	if _, err := img.WriteAt(data[1<<20:1<<20+300<<10], 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := img.WriteZeroes(3<<20, 64<<10); err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	img, err = Open(src, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	for _, noSparse := range []bool{false, true} {
		dst := filepath.Join(dir, fmt.Sprintf("out-%v.raw", noSparse))
		if err := Convert(context.Background(), img, dst, ConvertOptions{Create: CreateOptions{Format: FormatRaw}, NoSparse: noSparse}); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(dst)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("NoSparse %v: content differs (%v)", noSparse, err)
		}
		f, err := os.Open(dst)
		if err != nil {
			t.Fatal(err)
		}
		alloc, ok := allocatedSize(f)
		f.Close()
		if ok && noSparse && alloc < int64(len(data)) {
			t.Errorf("-S 0 output occupies %d bytes, want >= %d", alloc, len(data))
		}
		if ok && !noSparse && alloc >= int64(len(data)) {
			t.Errorf("sparse output occupies %d bytes", alloc)
		}
	}
	// The fallback without fallocate: zeros are written too.
	for _, zeroFill := range []bool{false, true} {
		w := &rangeWriter{buf: make([]byte, len(data)), written: make([]bool, len(data))}
		if err := convertInto(context.Background(), img, w, ConvertOptions{Workers: 2, ChunkSize: 64 << 10}, zeroFill, nil); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(w.buf, data) {
			t.Fatalf("zeroFill %v: content differs", zeroFill)
		}
		unwritten := 0
		for _, b := range w.written {
			if !b {
				unwritten++
			}
		}
		if zeroFill && unwritten != 0 || !zeroFill && unwritten < 3<<20 {
			t.Errorf("zeroFill %v: %d bytes not written", zeroFill, unwritten)
		}
	}
}

// TestConvertRawSparseSize: -S sets how long an aligned run of zeros
// must be to stay a hole, as in qemu-img.
func TestConvertRawSparseSize(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = 1
	}
	clear(data[64<<10 : 80<<10])   // 16 KiB of zeros: a hole at 4 KiB, data at 64 KiB
	clear(data[512<<10 : 768<<10]) // 256 KiB of zeros: a hole either way
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	img, err := Open(src, Options{Format: FormatRaw})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	alloc := map[int64]int64{}
	for _, s := range []int64{0, 64 << 10} {
		dst := filepath.Join(dir, fmt.Sprintf("out-%d.raw", s))
		if err := Convert(context.Background(), img, dst, ConvertOptions{Create: CreateOptions{Format: FormatRaw}, SparseSize: s}); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(dst)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("-S %d: content differs (%v)", s, err)
		}
		f, _ := os.Open(dst)
		a, ok := allocatedSize(f)
		f.Close()
		if !ok {
			t.Skip("no allocation figures here")
		}
		alloc[s] = a
	}
	if want := int64(1<<20 - 16<<10 - 256<<10); alloc[0] > want {
		t.Errorf("-S 4k: %d bytes allocated, want <= %d", alloc[0], want)
	}
	if alloc[64<<10] < alloc[0]+16<<10 {
		t.Errorf("-S 64k allocated %d bytes, -S 4k %d: the 16 KiB run should be written", alloc[64<<10], alloc[0])
	}
	if err := Convert(context.Background(), img, filepath.Join(dir, "bad"), ConvertOptions{Create: CreateOptions{Format: FormatRaw}, SparseSize: 1000}); err == nil {
		t.Error("-S 1000 accepted")
	}
}
