package qcow2

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/imgtool/imgtool/internal/testutil"
)

// Benchmarks run imgtool and, in a sub-benchmark of the same run, the peer
// tool (qemu-img) on the same input. Inputs are generated with qemu-img
// and qemu-io once, on first use, in a cache directory under os.TempDir()
// (imgtool-bench-qcow2); delete it to regenerate. Outputs go to /dev/shm
// when it exists so that both tools write to memory.
//
//	go test ./qcow2 -run '^$' -bench . -benchtime 3x

// benchDir returns the input cache directory.
func benchDir(b *testing.B) string {
	b.Helper()
	d := filepath.Join(os.TempDir(), "imgtool-bench-qcow2")
	if err := os.MkdirAll(d, 0o755); err != nil {
		b.Fatal(err)
	}
	return d
}

// outDir returns where benchmark outputs are written.
func outDir(b *testing.B) string {
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		d, err := os.MkdirTemp("/dev/shm", "imgtool-bench-")
		if err == nil {
			b.Cleanup(func() { os.RemoveAll(d) })
			return d
		}
	}
	return b.TempDir()
}

// cached runs gen to create name in the cache directory unless a previous
// run completed it, and returns its path.
func cached(b *testing.B, name string, gen func(path string)) string {
	b.Helper()
	p := filepath.Join(benchDir(b), name)
	if _, err := os.Stat(p + ".done"); err == nil {
		return p
	}
	b.Logf("generating %s (cached for later runs)", p)
	gen(p)
	if err := os.WriteFile(p+".done", nil, 0o644); err != nil {
		b.Fatal(err)
	}
	return p
}

// writeData fills a raw file of the given size with incompressible data
// (distinct per MiB, so no two clusters are equal).
func writeData(b *testing.B, path string, size int64) {
	b.Helper()
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	r := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(r.Uint32())
	}
	for off := int64(0); off < size; off += int64(len(buf)) {
		copy(buf, fmt.Sprintf("MiB %d", off>>20))
		if _, err := f.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
}

// writeText fills a raw file with compressible text-like data (about 3:1
// with deflate), the kind of content compressed images hold.
func writeText(b *testing.B, path string, size int64) {
	b.Helper()
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	r := rand.New(rand.NewPCG(3, 4))
	words := make([]string, 4096)
	for i := range words {
		w := make([]byte, 2+r.IntN(9))
		for j := range w {
			w[j] = 'a' + byte(r.IntN(26))
		}
		words[i] = string(w)
	}
	buf := make([]byte, 0, 1<<20+64)
	for written := int64(0); written < size; {
		buf = buf[:0]
		for len(buf) < 1<<20 {
			buf = append(buf, words[r.IntN(len(words))]...)
			buf = append(buf, ' ')
		}
		buf = buf[:min(int64(1<<20), size-written)]
		if _, err := f.Write(buf); err != nil {
			b.Fatal(err)
		}
		written += int64(len(buf))
	}
}

func benchOpen(b *testing.B, path string) *Image {
	b.Helper()
	img, err := Open(path, Options{ForceShare: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { img.Close() })
	return img
}

// benchReadAll reads the whole guest sequentially on one goroutine.
func benchReadAll(b *testing.B, img *Image, buf []byte) {
	for off := int64(0); off < img.Size(); off += int64(len(buf)) {
		n := min(int64(len(buf)), img.Size()-off)
		if _, err := img.ReadAt(buf[:n], off); err != nil {
			b.Fatal(err)
		}
	}
}

// compareConvert runs the read, Convert to raw and qemu-img convert -O raw
// sub-benchmarks on one image.
func compareConvert(b *testing.B, path string, withRead bool) {
	img := benchOpen(b, path)
	if withRead {
		b.Run("imgtool-read-1core", func(b *testing.B) {
			buf := make([]byte, 4<<20)
			b.SetBytes(img.Size())
			b.ReportAllocs()
			for b.Loop() {
				benchReadAll(b, img, buf)
			}
		})
	}
	out := outDir(b)
	b.Run("imgtool-convert", func(b *testing.B) {
		b.SetBytes(img.Size())
		b.ReportAllocs()
		dst := filepath.Join(out, "imgtool.raw")
		for b.Loop() {
			if err := Convert(context.Background(), img, dst, ConvertOptions{Create: CreateOptions{Format: FormatRaw}}); err != nil {
				b.Fatal(err)
			}
			os.Remove(dst)
		}
	})
	b.Run("qemu-img-convert", func(b *testing.B) {
		testutil.NeedTool(b, "qemu-img")
		b.SetBytes(img.Size())
		dst := filepath.Join(out, "qemu.raw")
		for b.Loop() {
			testutil.Run(b, "qemu-img", "convert", "-U", "-O", "raw", path, dst)
			os.Remove(dst)
		}
	})
}

// BenchmarkRead1GiB: a fully allocated 1 GiB image (64 KiB clusters).
func BenchmarkRead1GiB(b *testing.B) {
	testutil.NeedTool(b, "qemu-img")
	path := cached(b, "full-1g.qcow2", func(p string) {
		raw := p + ".raw"
		writeData(b, raw, 1<<30)
		testutil.Run(b, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, p)
		os.Remove(raw)
	})
	compareConvert(b, path, true)
}

// BenchmarkReadChain3: a 1 GiB chain base <- mid <- top where each image
// owns one third of the guest.
func BenchmarkReadChain3(b *testing.B) {
	testutil.NeedTool(b, "qemu-img", "qemu-io")
	path := cached(b, "chain3-top.qcow2", func(p string) {
		dir := filepath.Dir(p)
		base := filepath.Join(dir, "chain3-base.qcow2")
		mid := filepath.Join(dir, "chain3-mid.qcow2")
		third := int64(1<<30) / 3 &^ 0xffff
		raw := p + ".raw"
		writeData(b, raw, 1<<30)
		// The base holds all data, then mid and top overwrite their thirds.
		testutil.Run(b, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, base)
		os.Remove(raw)
		testutil.Run(b, "qemu-img", "create", "-q", "-f", "qcow2", "-b", filepath.Base(base), "-F", "qcow2", mid)
		testutil.Run(b, "qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P 0x5a %d %d", third, third), mid)
		testutil.Run(b, "qemu-img", "create", "-q", "-f", "qcow2", "-b", filepath.Base(mid), "-F", "qcow2", p)
		testutil.Run(b, "qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P 0xa5 %d %d", 2*third, (1<<30)-2*third), p)
	})
	compareConvert(b, path, true)
}

func compressedImage(b *testing.B, ctype string) string {
	testutil.NeedTool(b, "qemu-img")
	return cached(b, "compressed-"+ctype+"-128m.qcow2", func(p string) {
		raw := p + ".raw"
		writeText(b, raw, 128<<20)
		testutil.Run(b, "qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "compression_type="+ctype, raw, p)
		os.Remove(raw)
	})
}

// BenchmarkConvertZstd and BenchmarkConvertZlib: convert -O raw of a
// 128 MiB compressed image; imgtool decompresses on GOMAXPROCS workers.
func BenchmarkConvertZstd(b *testing.B) { compareConvert(b, compressedImage(b, "zstd"), false) }
func BenchmarkConvertZlib(b *testing.B) { compareConvert(b, compressedImage(b, "zlib"), false) }

// BenchmarkMap1TiBChain3: map of a sparse 1 TiB chain of three images,
// each with scattered writes. Both sides open the chain and list it.
func BenchmarkMap1TiBChain3(b *testing.B) {
	testutil.NeedTool(b, "qemu-img", "qemu-io")
	path := cached(b, "sparse-1t-top.qcow2", func(p string) {
		dir := filepath.Dir(p)
		prev := ""
		for i, name := range []string{"sparse-1t-base.qcow2", "sparse-1t-mid.qcow2", filepath.Base(p)} {
			f := filepath.Join(dir, name)
			args := []string{"create", "-q", "-f", "qcow2"}
			if prev != "" {
				args = append(args, "-b", prev, "-F", "qcow2")
			}
			testutil.Run(b, "qemu-img", append(args, f, "1T")...)
			var cmds []string
			for k := range 200 {
				off := (int64(k)*5003 + int64(i)*7919) % (1 << 24) << 16 // scattered 64 KiB clusters
				cmds = append(cmds, "-c", fmt.Sprintf("write -P %d %d 64k", i+1, off))
			}
			testutil.Run(b, "qemu-io", append(append([]string{"-f", "qcow2"}, cmds...), f)...)
			prev = name
		}
	})
	b.Run("imgtool", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			img, err := Open(path, Options{ForceShare: true})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := img.Map(); err != nil {
				b.Fatal(err)
			}
			img.Close()
		}
	})
	b.Run("qemu-img", func(b *testing.B) {
		for b.Loop() {
			testutil.Run(b, "qemu-img", "map", "-U", "--output=json", path)
		}
	})
}

// BenchmarkRandomRead4K: random 4 KiB reads over a fully allocated 8 GiB
// image (preallocation=full), reported as IOPS, on one goroutine and on
// GOMAXPROCS goroutines. Page cache permitting, this measures the read
// path, not the disk.
func BenchmarkRandomRead4K(b *testing.B) {
	testutil.NeedTool(b, "qemu-img")
	path := cached(b, "full-8g.qcow2", func(p string) {
		testutil.Run(b, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "preallocation=full", p, "8G")
	})
	img := benchOpen(b, path)
	blocks := img.Size() / 4096
	b.Run("1-goroutine", func(b *testing.B) {
		buf := make([]byte, 4096)
		r := rand.New(rand.NewPCG(5, 6))
		b.SetBytes(4096)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := img.ReadAt(buf, r.Int64N(blocks)*4096); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "IOPS")
	})
	b.Run(fmt.Sprintf("%d-goroutines", runtime.GOMAXPROCS(0)), func(b *testing.B) {
		b.SetBytes(4096)
		b.ReportAllocs()
		var seed sync.Mutex
		n := uint64(0)
		b.RunParallel(func(pb *testing.PB) {
			seed.Lock()
			n++
			r := rand.New(rand.NewPCG(n, 7))
			seed.Unlock()
			buf := make([]byte, 4096)
			for pb.Next() {
				if _, err := img.ReadAt(buf, r.Int64N(blocks)*4096); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "IOPS")
	})
}

// BenchmarkLookup: guest cluster -> L2 entry for clusters whose tables are
// cached (random clusters of a 1 TiB guest range, 32 MiB of tables).
func BenchmarkLookup(b *testing.B) {
	img := benchOpen(b, fixture("chain/base.qcow2"))
	// Pretend a big image: every L1 slot holds the same decoded table,
	// which is what a warm cache looks like to the lookup.
	t := img.l2.get(0)
	if t == nil {
		var err error
		if t, err = img.loadL2(0); err != nil || t == nil {
			b.Fatal("no L2 table", err)
		}
	}
	const slots = 64
	l2 := newL2Cache(slots, img.clusterSize, int64(slots)*img.clusterSize)
	for i := range slots {
		l2.put(i, &l2Table{entries: t.entries})
	}
	img.l2 = l2
	r := rand.New(rand.NewPCG(8, 9))
	vcs := make([]int64, 1<<16)
	for i := range vcs {
		vcs[i] = r.Int64N(slots << img.l2Bits)
	}
	b.ReportAllocs()
	// cachedEntry is what the extent walk calls per cluster.
	b.Run("cached", func(b *testing.B) {
		var sink uint64
		i := 0
		for b.Loop() {
			e, ok := img.cachedEntry(vcs[i&(len(vcs)-1)])
			if !ok {
				b.Fatal("not cached")
			}
			sink += uint64(e)
			i++
		}
		_ = sink
	})
	// lookup adds the miss handling (a non-inlined call).
	b.Run("lookup", func(b *testing.B) {
		var sink uint64
		i := 0
		for b.Loop() {
			e, _, err := img.lookup(vcs[i&(len(vcs)-1)])
			if err != nil {
				b.Fatal(err)
			}
			sink += uint64(e)
			i++
		}
		_ = sink
	})
}

// BenchmarkLookupBaseline is the floor BenchmarkLookup runs on: the same
// random index stream into a plain slice. Compare the two on a noisy
// machine rather than absolute numbers.
func BenchmarkLookupBaseline(b *testing.B) {
	r := rand.New(rand.NewPCG(8, 9))
	vcs := make([]int64, 1<<16)
	for i := range vcs {
		vcs[i] = r.Int64N(1 << 9)
	}
	arr := make([]uint64, 1<<9)
	var sink uint64
	i := 0
	for b.Loop() {
		sink += arr[vcs[i&(len(vcs)-1)]]
		i++
	}
	_ = sink
}
