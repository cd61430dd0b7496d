package qcow2

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imgtool/imgtool/internal/testutil"
)

// Benchmarks of convert, commit and rebase beside qemu-img on 1 GiB of
// realistic data: per 256 KiB, 128 KiB of random bytes, 64 KiB of zeros
// (a hole in the raw file) and 64 KiB of repeated text. Inputs are
// cached under os.TempDir()/imgtool-bench-qcow2 (see bench_test.go).
//
//	go test ./qcow2 -run '^$' -bench 'Realistic' -benchtime 3x

const realisticSize = 1 << 30

// realisticRaw returns the cached raw input.
func realisticRaw(b *testing.B) string {
	return cached(b, "realistic-1g.raw", func(p string) {
		f, err := os.Create(p)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		r := rand.New(rand.NewPCG(11, 12))
		var text []byte
		for i := 0; len(text) < 64<<10; i++ {
			text = fmt.Appendf(text, "%06d: the quick brown fox jumps over the lazy dog, again and again.\n", i%97)
		}
		text = text[:64<<10]
		rnd := make([]byte, 128<<10)
		for off := int64(0); off < realisticSize; off += 256 << 10 {
			for i := 0; i < len(rnd); i += 8 {
				v := r.Uint64()
				for k := range 8 {
					rnd[i+k] = byte(v >> (8 * k))
				}
			}
			if _, err := f.WriteAt(rnd, off); err != nil {
				b.Fatal(err)
			}
			if _, err := f.WriteAt(text, off+192<<10); err != nil {
				b.Fatal(err)
			}
		}
		if err := f.Truncate(realisticSize); err != nil {
			b.Fatal(err)
		}
	})
}

// realisticQcow2 returns the input as a qcow2 image (qemu-img convert).
func realisticQcow2(b *testing.B) string {
	raw := realisticRaw(b)
	return cached(b, "realistic-1g.qcow2", func(p string) {
		testutil.NeedTool(b, "qemu-img")
		testutil.Run(b, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, p)
	})
}

// realisticOverlay returns an overlay of realisticQcow2 (absolute
// backing name) with every 4th cluster rewritten with random data: 25 %
// of the guest dirty.
func realisticOverlay(b *testing.B) string {
	base := realisticQcow2(b)
	return cached(b, "realistic-1g-dirty25.qcow2", func(p string) {
		os.Remove(p)
		if err := Create(p, CreateOptions{BackingFile: base, BackingFormat: FormatQcow2}); err != nil {
			b.Fatal(err)
		}
		img, err := Open(p, Options{Writable: true})
		if err != nil {
			b.Fatal(err)
		}
		r := rand.New(rand.NewPCG(13, 14))
		buf := make([]byte, 64<<10)
		for off := int64(64 << 10); off < realisticSize; off += 256 << 10 {
			for i := range buf {
				buf[i] = byte(r.Uint32())
			}
			if _, err := img.WriteAt(buf, off); err != nil {
				b.Fatal(err)
			}
		}
		if err := img.Close(); err != nil {
			b.Fatal(err)
		}
	})
}

// realisticTop returns a small image over realisticOverlay: 1 % of the
// guest written.
func realisticTop(b *testing.B) string {
	mid := realisticOverlay(b)
	return cached(b, "realistic-1g-top.qcow2", func(p string) {
		os.Remove(p)
		if err := Create(p, CreateOptions{BackingFile: mid, BackingFormat: FormatQcow2}); err != nil {
			b.Fatal(err)
		}
		img, err := Open(p, Options{Writable: true})
		if err != nil {
			b.Fatal(err)
		}
		buf := make([]byte, 64<<10)
		for i := range buf {
			buf[i] = byte(i * 7)
		}
		for off := int64(0); off < realisticSize; off += 100 * 64 << 10 {
			if _, err := img.WriteAt(buf, off); err != nil {
				b.Fatal(err)
			}
		}
		if err := img.Close(); err != nil {
			b.Fatal(err)
		}
	})
}

func copyFileBench(b *testing.B, src, dst string) {
	b.Helper()
	in, err := os.Open(src)
	if err != nil {
		b.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		b.Fatal(err)
	}
	if err := out.Close(); err != nil {
		b.Fatal(err)
	}
}

func fileSize(b *testing.B, p string) float64 {
	fi, err := os.Stat(p)
	if err != nil {
		b.Fatal(err)
	}
	return float64(fi.Size())
}

// benchConvertPair runs Convert and qemu-img convert on src. Besides
// MB/s it reports the output size (out-bytes), the CPU time per
// convert (cpu-ms/op, user plus system) and the peak RSS (peak-MiB):
// for imgtool the process's high-water mark, reset before the run
// (/proc/self/clear_refs), for qemu-img its own, from /usr/bin/time.
func benchConvertPair(b *testing.B, src string, opts ConvertOptions, qemuArgs ...string) {
	testutil.NeedTool(b, "qemu-img")
	out := outDir(b)
	b.Run("imgtool", func(b *testing.B) {
		img := benchOpen(b, src)
		dst := filepath.Join(out, "imgtool.img")
		b.SetBytes(realisticSize)
		b.ReportAllocs()
		resetPeakRSS()
		cpu0 := selfCPU()
		for b.Loop() {
			if err := Convert(context.Background(), img, dst, opts); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64((selfCPU()-cpu0).Milliseconds())/float64(b.N), "cpu-ms/op")
		if p := peakRSS(); p > 0 {
			b.ReportMetric(float64(p)/(1<<20), "peak-MiB")
		}
		b.ReportMetric(fileSize(b, dst), "out-bytes")
		os.Remove(dst)
	})
	b.Run("qemu-img", func(b *testing.B) {
		dst := filepath.Join(out, "qemu.img")
		b.SetBytes(realisticSize)
		var cpu time.Duration
		var peak int64
		// A child's rusage starts from the high-water mark of the Go
		// process it was cloned from, so qemu-img's own peak comes from
		// GNU time (-f %M, KiB), which forks it from a small process.
		timeTool, _ := exec.LookPath("/usr/bin/time")
		for b.Loop() {
			os.Remove(dst)
			args := append(append([]string{"convert", "-U"}, qemuArgs...), src, dst)
			cmd := exec.Command("qemu-img", args...)
			if timeTool != "" {
				cmd = exec.Command(timeTool, append([]string{"-f", "%M", "qemu-img"}, args...)...)
			}
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Run(); err != nil {
				b.Fatalf("qemu-img: %v\n%s", err, stderr.Bytes())
			}
			cpu += cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
			if timeTool != "" {
				lines := strings.Fields(stderr.String())
				var kb int64
				if len(lines) > 0 {
					fmt.Sscanf(lines[len(lines)-1], "%d", &kb)
				}
				peak = max(peak, kb<<10)
			}
		}
		b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N), "cpu-ms/op")
		if peak > 0 {
			b.ReportMetric(float64(peak)/(1<<20), "peak-MiB")
		}
		b.ReportMetric(fileSize(b, dst), "out-bytes")
		os.Remove(dst)
	})
}

// resetPeakRSS resets the process's peak RSS (VmHWM) to its current RSS,
// where Linux allows it.
func resetPeakRSS() { os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) }

// peakRSS returns VmHWM of this process in bytes, 0 where unknown.
func peakRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(v), "%d", &kb)
			return kb << 10
		}
	}
	return 0
}

// selfCPU returns the user plus system CPU time of this process.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func BenchmarkRealisticConvertToRaw(b *testing.B) {
	benchConvertPair(b, realisticQcow2(b), ConvertOptions{Create: CreateOptions{Format: FormatRaw}}, "-O", "raw")
}

func BenchmarkRealisticConvertToQcow2(b *testing.B) {
	benchConvertPair(b, realisticRaw(b), ConvertOptions{}, "-f", "raw", "-O", "qcow2")
}

func BenchmarkRealisticConvertZstd(b *testing.B) {
	benchConvertPair(b, realisticRaw(b), ConvertOptions{Compress: true, Create: CreateOptions{CompressionType: "zstd"}},
		"-f", "raw", "-O", "qcow2", "-c", "-o", "compression_type=zstd")
}

func BenchmarkRealisticConvertZlib(b *testing.B) {
	benchConvertPair(b, realisticRaw(b), ConvertOptions{Compress: true}, "-f", "raw", "-O", "qcow2", "-c")
}

// BenchmarkRealisticCommit commits the 25 %-dirty overlay into a fresh
// copy of its 1 GiB base (copies are made outside the timer).
func BenchmarkRealisticCommit(b *testing.B) {
	testutil.NeedTool(b, "qemu-img")
	base, top := realisticQcow2(b), realisticOverlay(b)
	out := outDir(b)
	fresh := func(b *testing.B) string {
		b.StopTimer()
		defer b.StartTimer()
		cb, ct := filepath.Join(out, "base.qcow2"), filepath.Join(out, "top.qcow2")
		copyFileBench(b, base, cb)
		copyFileBench(b, top, ct)
		// Point the copy at the copied base.
		if err := Rebase(context.Background(), ct, RebaseOptions{Backing: "base.qcow2", BackingFormat: FormatQcow2, Unsafe: true}); err != nil {
			b.Fatal(err)
		}
		return ct
	}
	b.Run("imgtool", func(b *testing.B) {
		b.SetBytes(realisticSize / 4)
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			ct := fresh(b)
			if err := Commit(context.Background(), ct, CommitOptions{}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("qemu-img", func(b *testing.B) {
		b.SetBytes(realisticSize / 4)
		for i := 0; i < b.N; i++ {
			ct := fresh(b)
			testutil.Run(b, "qemu-img", "commit", "-q", ct)
		}
	})
}

// BenchmarkRealisticRebase rebases a small top image from the 25 %-dirty
// overlay onto the 1 GiB base in safe mode: the dirty quarter is compared
// and copied into the top.
func BenchmarkRealisticRebase(b *testing.B) {
	testutil.NeedTool(b, "qemu-img")
	base, top := realisticQcow2(b), realisticTop(b)
	out := outDir(b)
	fresh := func(b *testing.B) string {
		b.StopTimer()
		defer b.StartTimer()
		ct := filepath.Join(out, "top.qcow2")
		copyFileBench(b, top, ct)
		return ct
	}
	b.Run("imgtool", func(b *testing.B) {
		b.SetBytes(realisticSize)
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			ct := fresh(b)
			if err := Rebase(context.Background(), ct, RebaseOptions{Backing: base, BackingFormat: FormatQcow2}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("qemu-img", func(b *testing.B) {
		b.SetBytes(realisticSize)
		for i := 0; i < b.N; i++ {
			ct := fresh(b)
			testutil.Run(b, "qemu-img", "rebase", "-q", "-b", base, "-F", "qcow2", ct)
		}
	})
}
