package dedup

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/imgtool/imgtool/internal/testutil"
	"github.com/imgtool/imgtool/qcow2"
)

// bruteForce computes the figures of ImageReport from raw contents with a
// plain map, independently of scanSegment and chunkIndex.
func bruteForce(contents [][]byte, cs int) ImageReport {
	var r ImageReport
	r.ChunkSize = int64(cs)
	seenIn := map[[32]byte]int{}
	for i, c := range contents {
		f := ImageFigures{TotalBytes: int64(len(c))}
		local := map[[32]byte]bool{}
		for off := 0; off < len(c); off += cs {
			ch := c[off:min(off+cs, len(c))]
			if bytes.Count(ch, []byte{0}) == len(ch) {
				f.ZeroBytes += int64(len(ch))
				continue
			}
			d := sha256.Sum256(ch)
			switch {
			case local[d]:
				f.InternalDuplicateBytes += int64(len(ch))
			default:
				local[d] = true
				if _, ok := seenIn[d]; ok {
					f.SharedBytes += int64(len(ch))
				} else {
					seenIn[d] = i
					f.NewBytes += int64(len(ch))
				}
			}
		}
		f.DataBytes = f.TotalBytes - f.ZeroBytes
		r.Inputs = append(r.Inputs, f)
		r.TotalBytes += f.TotalBytes
		r.ZeroBytes += f.ZeroBytes
		r.UniqueBytes += f.NewBytes
		r.InternalDuplicateBytes += f.InternalDuplicateBytes
		r.CrossDuplicateBytes += f.SharedBytes
	}
	r.DuplicateBytes = r.InternalDuplicateBytes + r.CrossDuplicateBytes
	r.SavedBytes = r.DuplicateBytes
	r.Chunks = int64(len(seenIn))
	return r
}

// patterned returns size bytes made of cs-sized chunks picked from a small
// set of patterns (so chunks repeat within and across images), zeros, and
// random chunks.
func patterned(rng *rand.Rand, size, cs int, patterns [][]byte) []byte {
	b := make([]byte, size)
	for off := 0; off < size; off += cs {
		ch := b[off:min(off+cs, size)]
		switch x := rng.IntN(10); {
		case x < 2: // zeros
		case x < 6:
			copy(ch, patterns[rng.IntN(len(patterns))])
		default:
			for i := 0; i+8 <= len(ch); i += 8 {
				binary.LittleEndian.PutUint64(ch[i:], rng.Uint64())
			}
			ch[0] |= 1
		}
	}
	return b
}

func checkFigures(t *testing.T, got *ImageReport, want ImageReport) {
	t.Helper()
	if d := cmp.Diff(want, *got, cmpopts.IgnoreFields(ImageReport{}, "ChunkSize", "SavedBytes", "IndexBytes", "Inputs")); d != "" {
		t.Errorf("totals (-want +got):\n%s", d)
	}
	if got.TotalBytes != got.ZeroBytes+got.UniqueBytes+got.DuplicateBytes {
		t.Errorf("total %d != zero %d + unique %d + duplicate %d", got.TotalBytes, got.ZeroBytes, got.UniqueBytes, got.DuplicateBytes)
	}
	if d := cmp.Diff(want.Inputs, got.Inputs, cmpopts.IgnoreFields(ImageFigures{}, "Path", "Format", "ChainDepth")); d != "" {
		t.Errorf("inputs (-want +got):\n%s", d)
	}
}

func TestScanRawImages(t *testing.T) {
	const cs = 64 << 10
	rng := rand.New(rand.NewPCG(1, 2))
	patterns := make([][]byte, 5)
	for i := range patterns {
		patterns[i] = bytes.Repeat([]byte{byte(i + 1), byte(i * 7)}, cs/2)
	}
	dir := t.TempDir()
	// Sizes: several segments, and one not a multiple of the chunk size.
	sizes := []int{9 << 20, 3<<20 + 12800, 1 << 20} // raw sizes are whole sectors (as in QEMU)
	var contents [][]byte
	var paths []string
	for i, n := range sizes {
		c := patterned(rng, n, cs, patterns)
		p := filepath.Join(dir, "img"+string(rune('a'+i))+".raw")
		if err := os.WriteFile(p, c, 0o644); err != nil {
			t.Fatal(err)
		}
		contents = append(contents, c)
		paths = append(paths, p)
	}
	// The same image twice: everything of the second copy is shared.
	paths = append(paths, paths[0])
	contents = append(contents, contents[0])
	for _, tc := range []struct {
		workers  int
		noFilter bool
	}{{1, false}, {3, false}, {1, true}, {3, true}} {
		workers := tc.workers
		var last, calls int64
		rep, err := Scan(context.Background(), paths, ScanOptions{Workers: workers, NoPrefilter: tc.noFilter, Progress: func(done, total int64) {
			if total != int64(2*sizes[0]+sizes[1]+sizes[2]) {
				t.Errorf("progress total %d", total)
			}
			last = max(last, done)
			calls++
		}, Image: qcow2.Options{ForceShare: true}})
		if err != nil {
			t.Fatal(err)
		}
		checkFigures(t, rep.Images, bruteForce(contents, cs))
		if last != rep.Images.TotalBytes || calls == 0 {
			t.Errorf("progress ended at %d of %d", last, rep.Images.TotalBytes)
		}
		if rep.Images.Inputs[3].SharedBytes != rep.Images.Inputs[0].DataBytes-rep.Images.Inputs[0].InternalDuplicateBytes {
			t.Errorf("second copy shares %d bytes", rep.Images.Inputs[3].SharedBytes)
		}
	}
}

// TestScanQcow2Chain scans a qcow2 overlay made by qemu-img and qemu-io and
// compares with the brute force figures of qemu-img convert's raw output.
func TestScanQcow2Chain(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	top := filepath.Join(dir, "top.qcow2")
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=65536", base, "8M")
	testutil.Run(t, "qemu-io", "-c", "write -P 0xaa 0 2M", "-c", "write -P 0xbb 2M 1M", "-c", "write -z 3M 64k", "-c", "write -P 0 4M 128k", "-c", "write -c -P 0xaa 5M 64k", base)
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", "-o", "cluster_size=32768", top)
	testutil.Run(t, "qemu-io", "-c", "write -P 0xcc 100k 300k", "-c", "write -z 2M 64k", "-c", "write -P 0xaa 6M 1M", top)
	raw := filepath.Join(dir, "top.raw")
	testutil.Run(t, "qemu-img", "convert", "-O", "raw", top, raw)
	content, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	baseRaw := filepath.Join(dir, "base.raw")
	testutil.Run(t, "qemu-img", "convert", "-O", "raw", base, baseRaw)
	baseContent, err := os.ReadFile(baseRaw)
	if err != nil {
		t.Fatal(err)
	}
	for _, noFilter := range []bool{false, true} {
		rep, err := Scan(context.Background(), []string{top, base, raw}, ScanOptions{NoPrefilter: noFilter})
		if err != nil {
			t.Fatal(err)
		}
		// Chunk size: the larger cluster size of the two qcow2 images.
		checkFigures(t, rep.Images, bruteForce([][]byte{content, baseContent, content}, 64<<10))
	}
	rep, err := Scan(context.Background(), []string{top, base, raw}, ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Images.Inputs[0].ChainDepth != 1 || rep.Images.Inputs[0].Format != "qcow2" || rep.Images.Inputs[2].Format != "raw" {
		t.Errorf("inputs: %+v", rep.Images.Inputs)
	}
	// A chunk size given explicitly.
	rep, err = Scan(context.Background(), []string{top, base}, ScanOptions{ChunkSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	checkFigures(t, rep.Images, bruteForce([][]byte{content, baseContent}, 4096))
}

func TestScanErrors(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "a.raw")
	if err := os.WriteFile(img, bytes.Repeat([]byte{1}, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	rnd := filepath.Join(dir, "r.raw")
	rb := make([]byte, 1<<20)
	for i := range rb {
		rb[i] = byte(i * 7 / 4096)
	}
	if err := os.WriteFile(rnd, rb, 0o644); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.qcow2")
	if err := os.WriteFile(bad, append([]byte(qcow2.Magic), make([]byte, 200)...), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		paths []string
		opts  ScanOptions
		is    error
	}{
		{"none", nil, ScanOptions{}, nil},
		{"missing", []string{filepath.Join(dir, "nope")}, ScanOptions{}, os.ErrNotExist},
		{"plain dir", []string{dir}, ScanOptions{}, nil},
		{"corrupt qcow2", []string{bad}, ScanOptions{}, qcow2.ErrUnsupportedFeature},
		{"chunk size", []string{img}, ScanOptions{ChunkSize: 1000}, nil},
		{"index full", []string{img, rnd}, ScanOptions{MaxChunks: 2, ChunkSize: 4096}, ErrIndexFull},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Scan(ctx, tc.paths, tc.opts)
			if err == nil {
				t.Fatal("no error")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v is not %v", err, tc.is)
			}
			t.Log(err)
		})
	}
	// One distinct chunk fits MaxChunks 1: all chunks of img are equal.
	if _, err := Scan(ctx, []string{img, img}, ScanOptions{MaxChunks: 1, ChunkSize: 4096}); err != nil {
		t.Errorf("one distinct chunk: %v", err)
	}
	ctx2, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := Scan(ctx2, []string{img}, ScanOptions{}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled scan: %v", err)
	}
}

// TestIndexMemory measures the memory per distinct chunk and checks that
// BytesPerIndexEntry is a fair statement of it.
//
// Heap figures are only meaningful with nothing else running: goroutines
// of earlier tests that free memory during the measurement made it read
// 36 bytes an entry, less than a key. So the measurement runs in a child
// process of this test binary that runs only this test.
func TestIndexMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates ~40 MB")
	}
	if os.Getenv("IMGTOOL_INDEX_MEMORY_CHILD") == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestIndexMemory$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), "IMGTOOL_INDEX_MEMORY_CHILD=1")
		out, err := cmd.CombinedOutput()
		t.Logf("child:\n%s", out)
		if err != nil {
			t.Fatalf("child test: %v", err)
		}
		return
	}
	const n = 500_000
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	ix := newChunkIndex(0)
	var d Digest
	for i := range n {
		d = sha256.Sum256([]byte{byte(i), byte(i >> 8), byte(i >> 16)})
		if _, err := ix.add(&d, 0); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&m1)
	per := float64(m1.HeapAlloc-m0.HeapAlloc) / n
	t.Logf("%.1f bytes per indexed chunk (stated: %d)", per, BytesPerIndexEntry)
	if per > 2*BytesPerIndexEntry || per < BytesPerIndexEntry/2 {
		t.Errorf("%.1f bytes per entry, BytesPerIndexEntry says %d", per, BytesPerIndexEntry)
	}
	runtime.KeepAlive(ix)

	runtime.GC()
	runtime.ReadMemStats(&m0)
	pf := newPrefilter(nil, newChunkIndex(0), 0)
	var buf [8]byte
	for i := range n {
		binary.LittleEndian.PutUint64(buf[:], uint64(i))
		if _, err := pf.add(buf[:], 0, int64(i)); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&m1)
	per = float64(m1.HeapAlloc-m0.HeapAlloc) / n
	t.Logf("%.1f bytes per prefilter entry (stated: %d)", per, BytesPerWeakEntry)
	if per > 1.5*BytesPerWeakEntry || per < BytesPerWeakEntry/3 {
		t.Errorf("%.1f bytes per prefilter entry, BytesPerWeakEntry says %d", per, BytesPerWeakEntry)
	}
	runtime.KeepAlive(pf)
}
