package qcow2

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/imgtool/imgtool/internal/testutil"
)

// benchBase returns a fully written 1 GiB qcow2 image, cached under
// os.TempDir() between runs.
func benchBase(b *testing.B) string {
	b.Helper()
	testutil.NeedTool(b, "qemu-img", "qemu-io")
	dir := filepath.Join(os.TempDir(), "imgtool-bench-write")
	p := filepath.Join(dir, "base-1g.qcow2")
	if _, err := os.Stat(p); err == nil {
		return p
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	tmp := p + ".tmp"
	testutil.Run(b, "qemu-img", "create", "-q", "-f", "qcow2", tmp, "1G")
	testutil.Run(b, "qemu-io", "-f", "qcow2", "-c", "write -P 0xab 0 1G", tmp)
	if err := os.Rename(tmp, p); err != nil {
		b.Fatal(err)
	}
	return p
}

// newOverlay creates an empty overlay over base.
func newOverlay(b *testing.B, base string, extL2 bool) string {
	b.Helper()
	p := filepath.Join(b.TempDir(), "overlay.qcow2")
	if err := Create(p, CreateOptions{BackingFile: base, BackingFormat: FormatQcow2, ExtendedL2: extL2}); err != nil {
		b.Fatal(err)
	}
	return p
}

// qemuBench runs qemu-img bench -w with n requests of size bytes, step
// bytes apart, and returns how long it took.
func qemuBench(b *testing.B, path string, n int, size, step int64, depth int) time.Duration {
	b.Helper()
	start := time.Now()
	testutil.Run(b, "qemu-img", "bench", "-q", "-w", "-f", "qcow2", "-t", "writeback",
		"-c", strconv.Itoa(n), "-d", strconv.Itoa(depth), "-s", strconv.FormatInt(size, 10), "-S", strconv.FormatInt(step, 10), path)
	return time.Since(start)
}

// BenchmarkWrite4KOverlay: 4 KiB writes into an empty overlay over a full
// 1 GiB base. Each write lands in a cluster of its own (step 64 KiB + 4
// KiB, as qemu-img bench -S does), so every write allocates and copies
// the rest of its cluster (or, with extended L2, only writes its
// subcluster). "random" writes at random 4 KiB-aligned offsets.
func BenchmarkWrite4KOverlay(b *testing.B) {
	base := benchBase(b)
	const size, step = 4096, 68 << 10
	for _, extL2 := range []bool{false, true} {
		name := "extl2=" + strconv.FormatBool(extL2)
		b.Run(name+"/imgtool", func(b *testing.B) {
			p := newOverlay(b, base, extL2)
			img, err := Open(p, Options{Writable: true})
			if err != nil {
				b.Fatal(err)
			}
			buf := make([]byte, size)
			b.SetBytes(size)
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				off := int64(i) * step % (img.Size() - size)
				if _, err := img.WriteAt(buf, off); err != nil {
					b.Fatal(err)
				}
			}
			if err := img.Close(); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "iops")
		})
		b.Run(name+"/imgtool-random-8way", func(b *testing.B) {
			p := newOverlay(b, base, extL2)
			img, err := Open(p, Options{Writable: true})
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(size)
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			per := (b.N + 7) / 8
			for w := range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(uint64(w), 7))
					buf := make([]byte, size)
					for range per {
						off := rng.Int64N(img.Size()/size) * size
						if _, err := img.WriteAt(buf, off); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			if err := img.Close(); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(per*8)/time.Since(start).Seconds(), "iops")
		})
		b.Run(name+"/qemu-img", func(b *testing.B) {
			p := newOverlay(b, base, extL2)
			b.SetBytes(size)
			b.ResetTimer()
			d := qemuBench(b, p, b.N, size, step, 1)
			b.ReportMetric(float64(b.N)/d.Seconds(), "iops")
		})
		b.Run(name+"/qemu-img-depth64", func(b *testing.B) {
			p := newOverlay(b, base, extL2)
			b.SetBytes(size)
			b.ResetTimer()
			d := qemuBench(b, p, b.N, size, step, 64)
			b.ReportMetric(float64(b.N)/d.Seconds(), "iops")
		})
	}
}

// BenchmarkWriteSequential1M: sequential 1 MiB writes into an empty
// image (no backing file).
func BenchmarkWriteSequential1M(b *testing.B) {
	testutil.NeedTool(b, "qemu-img")
	const size = 1 << 20
	create := func(b *testing.B) string {
		p := filepath.Join(b.TempDir(), "seq.qcow2")
		if err := Create(p, CreateOptions{Size: 4 << 30}); err != nil {
			b.Fatal(err)
		}
		return p
	}
	b.Run("imgtool", func(b *testing.B) {
		img, err := Open(create(b), Options{Writable: true})
		if err != nil {
			b.Fatal(err)
		}
		buf := make([]byte, size)
		for i := range buf {
			buf[i] = byte(i)
		}
		b.SetBytes(size)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			off := int64(i) * size % img.Size()
			if _, err := img.WriteAt(buf, off); err != nil {
				b.Fatal(err)
			}
		}
		if err := img.Close(); err != nil {
			b.Fatal(err)
		}
	})
	b.Run("qemu-img", func(b *testing.B) {
		p := create(b)
		b.SetBytes(size)
		b.ResetTimer()
		qemuBench(b, p, b.N, size, size, 1)
	})
}

var _ = fmt.Sprint
