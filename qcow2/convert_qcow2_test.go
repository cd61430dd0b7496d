package qcow2

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgtool/imgtool/internal/testutil"
)

// mixedData returns size bytes of realistic content: per 64 KiB block
// random, zero, text or a mix, so clusters of every size see compressible,
// incompressible and zero data.
func mixedData(seed uint64, size int64) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, size)
	text := []byte("the quick brown fox jumps over the lazy dog; qcow2 convert test ")
	for off := int64(0); off < size; off += 16 << 10 {
		blk := b[off:min(size, off+16<<10)]
		switch r.IntN(4) {
		case 0:
			for i := range blk {
				blk[i] = byte(r.Uint32())
			}
		case 1: // zeros
		case 2:
			for i := range blk {
				blk[i] = text[(i+int(off))%len(text)]
			}
		case 3:
			for i := 0; i < len(blk); i += 512 {
				blk[i] = byte(r.Uint32()) | 1
			}
		}
	}
	return b
}

// writeRawFile writes data to a new raw file in dir.
func writeRawFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// qemuSame asserts that qemu-img check passes on a and qemu-img compare
// finds a and b identical.
func qemuSame(t *testing.T, a, b string) {
	t.Helper()
	if out, err := testutil.Exec("qemu-img", "check", "-U", a); err != nil && !strings.Contains(string(out), "does not support checks") {
		t.Fatalf("qemu-img check %s: %v\n%s", a, err, out)
	}
	if out, err := testutil.Exec("qemu-img", "compare", "-U", a, b); err != nil {
		t.Fatalf("qemu-img compare %s %s: %v\n%s", a, b, err, out)
	}
}

func TestConvertImageInterop(t *testing.T) {
	testutil.NeedTool(t, "qemu-img")
	dir := t.TempDir()
	size := int64(3<<20 + 5*512) // not a multiple of any cluster size
	data := mixedData(1, size)
	raw := writeRawFile(t, dir, "src.raw", data)
	srcQ := filepath.Join(dir, "src.qcow2")
	testutil.Run(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=16k", raw, srcQ)
	sparse := filepath.Join(dir, "sparse.raw") // 4 KiB holes wherever mixedData has zeros
	testutil.Run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", "-S", "4k", raw, sparse)
	srcC := filepath.Join(dir, "srcc.qcow2")
	testutil.Run(t, "qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", raw, srcC)

	cases := []struct {
		name     string
		src      string
		opts     ConvertOptions
		qemuArgs []string // qemu-img convert args to compare the output size with
	}{
		{name: "raw-default", src: raw},
		{name: "sparse-raw", src: sparse},
		{name: "sparse-raw-4k", src: sparse, opts: ConvertOptions{Create: CreateOptions{ClusterSize: 4096}}},
		{name: "sparse-raw-2M-extl2", src: sparse, opts: ConvertOptions{Create: CreateOptions{ClusterSize: 2 << 20, ExtendedL2: true}}},
		{name: "qcow2-default", src: srcQ},
		{name: "from-compressed", src: srcC},
		{name: "zlib", src: raw, opts: ConvertOptions{Compress: true}, qemuArgs: []string{"-c"}},
		{name: "zstd", src: raw, opts: ConvertOptions{Compress: true, Create: CreateOptions{CompressionType: "zstd"}}, qemuArgs: []string{"-c", "-o", "compression_type=zstd"}},
		{name: "zlib-512", src: srcQ, opts: ConvertOptions{Compress: true, Create: CreateOptions{ClusterSize: 512}}},
		{name: "zlib-2M", src: raw, opts: ConvertOptions{Compress: true, Create: CreateOptions{ClusterSize: 2 << 20}}},
		{name: "zstd-4k-refbits1", src: raw, opts: ConvertOptions{Compress: true, Create: CreateOptions{ClusterSize: 4096, RefcountBits: 1, CompressionType: "zstd"}}},
		{name: "zlib-refbits2", src: raw, opts: ConvertOptions{Compress: true, Create: CreateOptions{RefcountBits: 2}}},
		{name: "compat-0.10", src: srcC, opts: ConvertOptions{Compress: true, Create: CreateOptions{Compat: "0.10"}}},
		{name: "extl2", src: raw, opts: ConvertOptions{Create: CreateOptions{ExtendedL2: true, ClusterSize: 128 << 10}}},
		{name: "extl2-zstd", src: raw, opts: ConvertOptions{Compress: true, Create: CreateOptions{ExtendedL2: true, CompressionType: "zstd"}}},
		{name: "refbits64-lazy", src: srcQ, opts: ConvertOptions{Create: CreateOptions{RefcountBits: 64, LazyRefcounts: true}}},
		{name: "nosparse", src: raw, opts: ConvertOptions{NoSparse: true, Create: CreateOptions{ClusterSize: 4096}}},
		{name: "prealloc-metadata", src: raw, opts: ConvertOptions{Create: CreateOptions{Preallocation: PreallocMetadata}}},
		{name: "prealloc-full", src: srcQ, opts: ConvertOptions{Create: CreateOptions{Preallocation: PreallocFull}}},
		{name: "one-worker", src: raw, opts: ConvertOptions{Workers: 1, Compress: true}},
		{name: "to-raw", src: srcC, opts: ConvertOptions{Create: CreateOptions{Format: FormatRaw}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src, err := Open(c.src, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			dst := filepath.Join(t.TempDir(), "out.img")
			var last int64
			c.opts.Progress = func(done, total int64) {
				if done < last || total != size {
					t.Errorf("progress %d/%d after %d", done, total, last)
				}
				last = done
			}
			if err := Convert(context.Background(), src, dst, c.opts); err != nil {
				t.Fatal(err)
			}
			if last != size {
				t.Errorf("progress ended at %d, want %d", last, size)
			}
			qemuSame(t, dst, c.src)
			if ents, _ := os.ReadDir(filepath.Dir(dst)); len(ents) != 1 {
				t.Errorf("%d files in the output directory, want 1", len(ents))
			}
			if c.qemuArgs != nil {
				q := filepath.Join(t.TempDir(), "q.qcow2")
				testutil.Run(t, "qemu-img", append(append([]string{"convert", "-O", "qcow2"}, c.qemuArgs...), c.src, q)...)
				a, _ := os.Stat(dst)
				b, _ := os.Stat(q)
				if float64(a.Size()) > 1.05*float64(b.Size()) {
					t.Errorf("output is %d bytes, qemu-img's %d", a.Size(), b.Size())
				}
			}
		})
	}
}

// TestConvertImageBacking converts with -B: only clusters that differ
// from the backing file are stored, zeros over data become zero
// clusters, and the result reads like the source.
func TestConvertImageBacking(t *testing.T) {
	testutil.NeedTool(t, "qemu-img")
	for _, compat := range []string{"1.1", "0.10"} {
		t.Run(compat, func(t *testing.T) {
			dir := t.TempDir()
			const cs = 64 << 10
			size := int64(32 * cs)
			base := mixedData(2, size)
			// The source changes clusters 3, 10 (zeroed) and 20.
			top := append([]byte(nil), base...)
			copy(top[3*cs+100:], "changed")
			clear(top[10*cs : 11*cs])
			copy(top[20*cs:], mixedData(3, cs))
			basePath := filepath.Join(dir, "base.qcow2")
			testutil.Run(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "compat="+compat, writeRawFile(t, dir, "base.raw", base), basePath)
			srcPath := writeRawFile(t, dir, "top.raw", top)
			src, err := Open(srcPath, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			dst := filepath.Join(dir, "out.qcow2")
			err = Convert(context.Background(), src, dst, ConvertOptions{Create: CreateOptions{BackingFile: "base.qcow2", Compat: compat}})
			if err != nil {
				t.Fatal(err)
			}
			qemuSame(t, dst, srcPath)
			out, err := Open(dst, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer out.Close()
			if out.BackingFormat() != "qcow2" {
				t.Errorf("backing format %q, want qcow2", out.BackingFormat())
			}
			var top0 []int64
			out.WalkExtents(0, size, func(e Extent) error {
				if e.Depth == 0 {
					for c := e.Start / cs; c < (e.Start+e.Length)/cs; c++ {
						top0 = append(top0, c)
					}
				}
				return nil
			})
			want := []int64{3, 10, 20}
			if len(top0) != len(want) || top0[0] != 3 || top0[1] != 10 || top0[2] != 20 {
				t.Errorf("overlay allocates clusters %v, want %v", top0, want)
			}
		})
	}
}

// TestConvertImageEmpty converts images of size 0 and of one sector.
func TestConvertImageEmpty(t *testing.T) {
	testutil.NeedTool(t, "qemu-img")
	for _, size := range []string{"0", "512"} {
		dir := t.TempDir()
		src := filepath.Join(dir, "src.qcow2")
		testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", src, size)
		for _, c := range []bool{false, true} {
			dst := filepath.Join(dir, "out.qcow2")
			if err := Convert(context.Background(), cvOpen(t, src), dst, ConvertOptions{Compress: c}); err != nil {
				t.Fatal(err)
			}
			qemuSame(t, dst, src)
		}
	}
}

func TestConvertImageCancel(t *testing.T) {
	dir := t.TempDir()
	raw := writeRawFile(t, dir, "src.raw", mixedData(4, 4<<20))
	src, err := Open(raw, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	ctx, cancel := context.WithCancel(context.Background())
	dst := filepath.Join(dir, "out.qcow2")
	err = Convert(ctx, src, dst, ConvertOptions{Compress: true, Progress: func(done, total int64) {
		if done > 0 {
			cancel()
		}
	}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if e.Name() != "src.raw" {
			t.Errorf("left behind %s", e.Name())
		}
	}
}

func TestConvertImageBadOptions(t *testing.T) {
	dir := t.TempDir()
	raw := writeRawFile(t, dir, "src.raw", make([]byte, 1<<20))
	src, err := Open(raw, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	for _, c := range []struct {
		opts ConvertOptions
		want string
	}{
		{ConvertOptions{Create: CreateOptions{ClusterSize: 3000}}, "cluster size"},
		{ConvertOptions{Create: CreateOptions{Size: 5}}, "differs from the source size"},
		{ConvertOptions{Compress: true, Create: CreateOptions{Format: FormatRaw}}, "compressed raw"},
		{ConvertOptions{Create: CreateOptions{BackingFile: "missing.qcow2"}}, "opening backing file"},
		{ConvertOptions{Create: CreateOptions{BackingFile: "nbd://x"}}, "backing file"},
		{ConvertOptions{Compress: true, Create: CreateOptions{Compat: "0.10", CompressionType: "zstd"}}, "compat"},
	} {
		dst := filepath.Join(dir, "out.qcow2")
		err := Convert(context.Background(), src, dst, c.opts)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: err = %v, want %q", c.opts, err, c.want)
		}
		if _, err := os.Stat(dst); err == nil {
			t.Errorf("%+v: output exists after failure", c.opts)
		}
	}
}

// TestGuardFault maps a file, shrinks it, and reads the lost pages
// through guardFault: an error, not a crash.
