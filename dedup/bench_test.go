package dedup

import (
	"context"
	"crypto/sha256"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/imgtool/imgtool/internal/testutil"
	"github.com/imgtool/imgtool/qcow2"
)

// benchInput returns a raw and a qcow2 image of size random bytes (every
// chunk is data, so every chunk is hashed), cached under os.TempDir().
func benchInput(b *testing.B, size int64) (raw, qcow string) {
	dir := filepath.Join(os.TempDir(), "imgtool-dedup-bench")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	raw = filepath.Join(dir, "random.raw")
	qcow = filepath.Join(dir, "random.qcow2")
	if st, err := os.Stat(qcow); err == nil && st.Size() > size {
		return raw, qcow
	}
	f, err := os.Create(raw)
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(9, 9))
	buf := make([]byte, 4<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		fillRandom(rng, buf)
		if _, err := f.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	f.Close()
	testutil.Run(b, "qemu-img", "convert", "-O", "qcow2", raw, qcow)
	return raw, qcow
}

// BenchmarkScan measures Scan of 1 GiB of random data (raw and qcow2, with
// and without the prefilter) beside sha256sum reading the same raw file, in
// one run:
//
//	go test -run XXX -bench Scan -benchtime 3x ./dedup
func BenchmarkScan(b *testing.B) {
	testutil.NeedTool(b, "qemu-img", "sha256sum")
	const size = 1 << 30
	raw, qcow := benchInput(b, size)
	// "twice" scans the raw image twice: half of the data is duplicate,
	// which the prefilter must confirm with SHA-256 (and a re-read).
	for _, in := range []struct {
		name  string
		paths []string
	}{{"raw", []string{raw}}, {"qcow2", []string{qcow}}, {"raw-twice", []string{raw, raw}}} {
		for _, noFilter := range []bool{false, true} {
			name := "imgtool/" + in.name
			if noFilter {
				name += "/sha256-only"
			} else {
				name += "/prefilter"
			}
			b.Run(name, func(b *testing.B) {
				b.SetBytes(size * int64(len(in.paths)))
				b.ReportAllocs()
				for b.Loop() {
					rep, err := Scan(context.Background(), in.paths, ScanOptions{NoPrefilter: noFilter, Image: qcow2.Options{ForceShare: true}})
					if err != nil {
						b.Fatal(err)
					}
					if rep.Images.UniqueBytes != size {
						b.Fatalf("unique %d", rep.Images.UniqueBytes)
					}
				}
			})
		}
	}
	b.Run("sha256sum/raw", func(b *testing.B) {
		b.SetBytes(size)
		b.ReportAllocs()
		for b.Loop() {
			if out, err := exec.Command("sha256sum", raw).CombinedOutput(); err != nil {
				b.Fatalf("%v: %s", err, out)
			}
		}
	})
}

// BenchmarkFastCDC measures the chunker alone (no hashing).
func BenchmarkFastCDC(b *testing.B) {
	data := make([]byte, 64<<20)
	fillRandom(rand.New(rand.NewPCG(1, 1)), data)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		c := NewChunker(func([]byte) error { return nil })
		if _, err := c.Write(data); err != nil {
			b.Fatal(err)
		}
		if err := c.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSHA256Chunks is the ceiling of a scan: hashing 64 KiB chunks
// already in memory on every core.
func BenchmarkSHA256Chunks(b *testing.B) {
	data := make([]byte, 64<<10)
	fillRandom(rand.New(rand.NewPCG(1, 1)), data)
	b.SetBytes(int64(len(data)))
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			_ = sha256.Sum256(data)
		}
	})
}
