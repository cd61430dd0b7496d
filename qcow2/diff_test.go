package qcow2

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/imgtool/imgtool/internal/testutil"
)

// diffConfig is one image variant of the differential test.
type diffConfig struct {
	name    string
	opts    CreateOptions
	backing string // "", "raw", "qcow2" (a qcow2 over a raw base)
	size    int64
	ops     int
}

func diffConfigs() []diffConfig {
	cs := []diffConfig{
		{name: "v2-64k", opts: CreateOptions{Compat: "0.10"}},
		{name: "v3-64k", opts: CreateOptions{}},
		{name: "v3-extl2-64k", opts: CreateOptions{ExtendedL2: true}},
		{name: "v3-512", opts: CreateOptions{ClusterSize: 512}},
		{name: "v3-4k", opts: CreateOptions{ClusterSize: 4096}},
		{name: "v3-4k-rc1", opts: CreateOptions{ClusterSize: 4096, RefcountBits: 1}},
		{name: "v3-64k-rc64", opts: CreateOptions{RefcountBits: 64}},
		{name: "v3-extl2-16k-rc1", opts: CreateOptions{ClusterSize: 16 << 10, ExtendedL2: true, RefcountBits: 1}},
		{name: "v2-4k-rawback", opts: CreateOptions{Compat: "0.10", ClusterSize: 4096}, backing: "raw"},
		{name: "v3-64k-qcow2back", opts: CreateOptions{}, backing: "qcow2"},
		{name: "v3-extl2-32k-qcow2back", opts: CreateOptions{ClusterSize: 32 << 10, ExtendedL2: true}, backing: "qcow2"},
		{name: "v2-64k-qcow2back", opts: CreateOptions{Compat: "0.10"}, backing: "qcow2"},
		{name: "v3-512-rawback-lazy", opts: CreateOptions{ClusterSize: 512, LazyRefcounts: true}, backing: "raw"},
		{name: "v3-2m", opts: CreateOptions{ClusterSize: 2 << 20}, size: 24 << 20, ops: 40},
		{name: "v3-extl2-2m-qcow2back", opts: CreateOptions{ClusterSize: 2 << 20, ExtendedL2: true}, backing: "qcow2", size: 24 << 20, ops: 40},
	}
	for i := range cs {
		if cs[i].size == 0 {
			cs[i].size = 6<<20 + 12345&^511
		}
		if cs[i].ops == 0 {
			cs[i].ops = 200
		}
	}
	return cs
}

// randBytes fills n bytes from rng; runs of equal bytes make compression
// and zero detection bugs show.
func randBytes(rng *rand.Rand, n int64) []byte {
	b := make([]byte, n)
	switch rng.IntN(4) {
	case 0:
		v := byte(rng.IntN(256))
		for i := range b {
			b[i] = v
		}
	default:
		var w [8]byte
		for i := 0; i < len(b); i += 8 {
			binary.LittleEndian.PutUint64(w[:], rng.Uint64())
			copy(b[i:], w[:])
		}
	}
	return b
}

// makeBacking builds the backing chain for a config and returns the
// backing file name and the raw reference of its content.
func makeBacking(t *testing.T, dir, kind string, size int64, rng *rand.Rand) (string, Format, []byte) {
	t.Helper()
	baseSize := size - size/3 // shorter than the overlay
	base := randBytes(rng, baseSize)
	basePath := filepath.Join(dir, "base.raw")
	if err := os.WriteFile(basePath, base, 0o644); err != nil {
		t.Fatal(err)
	}
	if kind == "raw" {
		return "base.raw", FormatRaw, base
	}
	mid := filepath.Join(dir, "mid.qcow2")
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "-o", "cluster_size=4096", mid, strconv.FormatInt(size-size/5, 10))
	var cmds []string
	for range 20 {
		off := rng.Int64N(size - size/5 - 70000)
		n := 1 + rng.Int64N(65536)
		cmds = append(cmds, "-c", fmt.Sprintf("write -P 0x%02x %d %d", rng.IntN(255)+1, off, n))
	}
	testutil.Run(t, "qemu-io", append([]string{"-f", "qcow2"}, append(cmds, mid)...)...)
	refPath := filepath.Join(dir, "mid.raw")
	testutil.Run(t, "qemu-img", "convert", "-O", "raw", mid, refPath)
	ref, err := os.ReadFile(refPath)
	if err != nil {
		t.Fatal(err)
	}
	return "mid.qcow2", FormatQcow2, ref
}

func TestDifferential(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	for i, cfg := range diffConfigs() {
		t.Run(cfg.name, func(t *testing.T) {
			if testing.Short() && cfg.opts.ClusterSize >= 2<<20 {
				t.Skip("2 MiB clusters skipped in -short")
			}
			t.Parallel()
			runDifferential(t, cfg, uint64(i))
		})
	}
}

func runDifferential(t *testing.T, cfg diffConfig, seed uint64) {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(seed, 99))
	size := cfg.size
	ref := make([]byte, size)
	var backing []byte
	opts := cfg.opts
	opts.Size = size
	if cfg.backing != "" {
		name, f, b := makeBacking(t, dir, cfg.backing, size, rng)
		opts.BackingFile, opts.BackingFormat = name, f
		backing = b
		copy(ref, b)
	}
	path := filepath.Join(dir, "top.qcow2")
	if err := Create(path, opts); err != nil {
		t.Fatal(err)
	}
	img, err := Open(path, Options{Writable: true})
	if err != nil {
		t.Fatal(err)
	}
	cs := img.ClusterSize()
	v2 := img.Header().Version == 2
	maxLen := min(3*cs+cs/2, 300<<10)
	got := make([]byte, size)
	check := func(when string) {
		t.Helper()
		if _, err := img.ReadAt(got, 0); err != nil {
			t.Fatalf("%s: ReadAt: %v", when, err)
		}
		if !bytes.Equal(got, ref) {
			i := 0
			for got[i] == ref[i] {
				i++
			}
			t.Fatalf("%s: content differs first at %d (got %#x want %#x)", when, i, got[i], ref[i])
		}
	}
	for op := range cfg.ops {
		off := rng.Int64N(size)
		n := 1 + rng.Int64N(min(maxLen, size-off))
		if rng.IntN(8) == 0 { // cluster aligned now and then
			off &^= cs - 1
			n = min((n+cs-1)&^(cs-1), size-off)
		}
		switch k := rng.IntN(10); {
		case k < 7:
			b := randBytes(rng, n)
			if _, err := img.WriteAt(b, off); err != nil {
				t.Fatalf("op %d: WriteAt(%d, %d): %v", op, off, n, err)
			}
			copy(ref[off:], b)
		case k < 9:
			if err := img.WriteZeroes(off, n); err != nil {
				t.Fatalf("op %d: WriteZeroes(%d, %d): %v", op, off, n, err)
			}
			clear(ref[off : off+n])
		default:
			if err := img.Discard(off, n); err != nil {
				t.Fatalf("op %d: Discard(%d, %d): %v", op, off, n, err)
			}
			// Whole clusters only; the last cluster counts as whole when
			// the range reaches the end of the image.
			start := (off + cs - 1) &^ (cs - 1)
			end := (off + n) &^ (cs - 1)
			if off+n == size {
				end = size
			}
			for c := start; c < end; c += cs {
				ce := min(c+cs, size)
				clear(ref[c:ce])
				if v2 && backing != nil && c < int64(len(backing)) {
					copy(ref[c:ce], backing[c:min(ce, int64(len(backing)))])
				}
			}
		}
		if op%25 == 24 {
			if err := img.Flush(); err != nil {
				t.Fatal(err)
			}
			check(fmt.Sprintf("after op %d", op))
		}
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	rawPath := filepath.Join(dir, "ref.raw")
	if err := os.WriteFile(rawPath, ref, 0o644); err != nil {
		t.Fatal(err)
	}
	qemuCheckClean(t, path)
	qemuCompare(t, path, rawPath)
	for range 5 {
		off := rng.Int64N(size - 1)
		n := 1 + rng.Int64N(min(4096, size-off))
		b := qemuIORead(t, path, off, n)
		if !bytes.Equal(b, ref[off:off+n]) {
			t.Fatalf("qemu-io read %d+%d differs", off, n)
		}
	}
	// And our own check agrees.
	ro, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	res, err := ro.Check(RepairNone)
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode() != 0 {
		t.Fatalf("imgtool check: %+v\n%s", res, strings.Join(res.Messages, "\n"))
	}
}

// qemuIORead reads guest bytes with qemu-io and decodes its hex dump.
func qemuIORead(t *testing.T, path string, off, n int64) []byte {
	t.Helper()
	out := testutil.Run(t, "qemu-io", "-r", "-U", "-f", "qcow2", "-c", fmt.Sprintf("read -v %d %d", off, n), path)
	var b []byte
	for _, line := range strings.Split(string(out), "\n") {
		colon := strings.Index(line, ":")
		if colon != 8 {
			continue
		}
		fields := strings.Fields(line[colon+1:])
		for i, f := range fields {
			if i == 16 {
				break
			}
			if len(f) != 2 {
				break
			}
			v, err := hex.DecodeString(f)
			if err != nil {
				break
			}
			b = append(b, v...)
		}
	}
	if int64(len(b)) < n {
		t.Fatalf("qemu-io read %d+%d: parsed %d bytes from\n%s", off, n, len(b), out)
	}
	return b[:n]
}
