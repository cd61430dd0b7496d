package qcow2

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/imgtool/imgtool/internal/testutil"
)

// qimg runs qemu-img and returns its output.
func qimg(t *testing.T, args ...string) []byte {
	t.Helper()
	return testutil.Run(t, "qemu-img", args...)
}

// qemuImage creates the qcow2 image path with qemu-img (create options
// opts, "" for none) and writes cmds into it with qemu-io.
func qemuImage(t *testing.T, path, opts, size string, cmds ...string) {
	t.Helper()
	qemuCreate(t, path, opts, size)
	qio(t, path, "qcow2", cmds...)
}

// qemuCreate creates the qcow2 image path with qemu-img: create options
// opts ("" for none), then extra arguments (a backing file) and size.
func qemuCreate(t *testing.T, path, opts, size string, extra ...string) {
	t.Helper()
	args := []string{"create", "-q", "-f", "qcow2"}
	if opts != "" {
		args = append(args, "-o", opts)
	}
	args = append(args, extra...)
	qimg(t, append(args, path, size)...)
}

// qio runs qemu-io commands on an image of the given format.
func qio(t *testing.T, path, format string, cmds ...string) {
	t.Helper()
	args := []string{"-f", format}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	testutil.Run(t, "qemu-io", append(args, path)...)
}

// interopCase builds an image with qemu tools in dir and returns the path
// of the image to open.
type interopCase struct {
	name  string
	build func(t *testing.T, dir string) string
}

func interopCases() []interopCase {
	// made creates the qcow2 image path (create options opts, size and
	// extra create arguments such as a backing file), writes cmds into it
	// with qemu-io and returns path.
	made := func(t *testing.T, path, opts, size string, extra []string, cmds ...string) string {
		t.Helper()
		qemuCreate(t, path, opts, size, extra...)
		qio(t, path, "qcow2", cmds...)
		return path
	}
	pattern := func(t *testing.T, path string, cs int) {
		t.Helper()
		// A mix of full clusters, partial writes, zero writes and
		// discards.
		qio(t, path, "qcow2",
			"write -P 0x11 0 "+itoa(3*cs),
			"write -P 0x22 "+itoa(5*cs+100*512)+" 4k",
			"write -z "+itoa(cs)+" "+itoa(cs),
			"write -P 0x33 "+itoa(9*cs)+" "+itoa(2*cs),
			"discard "+itoa(10*cs)+" "+itoa(cs),
			"write -P 0x44 1M 64k",
		)
	}
	var cases []interopCase
	for _, cs := range []int{512, 4096, 65536, 2 << 20} {
		cases = append(cases, interopCase{"cluster" + itoa(cs), func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "img.qcow2")
			qemuCreate(t, p, "cluster_size="+itoa(cs), itoa(max(8<<20, 12*cs)))
			pattern(t, p, cs)
			return p
		}})
	}
	// 2 MiB clusters in each layout: qemu writes a small part of a
	// cluster and leaves the rest a hole (or an unwritten extent) in the
	// file, which map reports as zeros where QEMU's metadata-preallocation
	// heuristic asks the file (and convert and compare need not read).
	for _, v := range []struct{ name, opts string }{
		{"v2", "compat=0.10"}, {"v3", "compat=1.1"}, {"extl2", "extended_l2=on"},
	} {
		cases = append(cases, interopCase{"2M-holes-" + v.name, func(t *testing.T, dir string) string {
			return made(t, filepath.Join(dir, "img.qcow2"), "cluster_size=2M,"+v.opts, "64M", nil,
				"write -P 1 0 4k", "write -P 2 5M 64k", "write -P 3 9M 1M", "write -P 4 33M 8k",
				"write -P 5 40M 2M", "write -z 41M 64k")
		}})
	}
	for _, rb := range []int{1, 2, 4, 8, 32, 64} {
		cases = append(cases, interopCase{"refcount" + itoa(rb), func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "img.qcow2")
			qemuCreate(t, p, "refcount_bits="+itoa(rb)+",cluster_size=4096", "4M")
			pattern(t, p, 4096)
			return p
		}})
	}
	cases = append(cases,
		interopCase{"v2", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "img.qcow2")
			qemuCreate(t, p, "compat=0.10", "4M")
			pattern(t, p, 65536)
			return p
		}},
		interopCase{"chain-relative-dirs", func(t *testing.T, dir string) string {
			os.MkdirAll(filepath.Join(dir, "a", "b"), 0o755)
			os.MkdirAll(filepath.Join(dir, "c"), 0o755)
			made(t, filepath.Join(dir, "a", "b", "base.qcow2"), "", "4M", nil, "write -P 1 0 4M")
			made(t, filepath.Join(dir, "c", "mid.qcow2"), "", "6M", []string{"-b", "../a/b/base.qcow2", "-F", "qcow2"},
				"write -P 2 1M 1M", "write -z 3M 512k")
			return made(t, filepath.Join(dir, "a", "top.qcow2"), "", "8M", []string{"-b", "../c/mid.qcow2", "-F", "qcow2"},
				"write -P 3 1536k 1M", "write -P 4 7M 4k")
		}},
		interopCase{"chain-raw-base", func(t *testing.T, dir string) string {
			base := filepath.Join(dir, "base.raw")
			qimg(t, "create", "-q", "-f", "raw", base, "2M")
			qio(t, base, "raw", "write -P 7 64k 128k", "write -P 8 1M 4k")
			return made(t, filepath.Join(dir, "top.qcow2"), "", "3M", []string{"-b", "base.raw", "-F", "raw"},
				"write -P 9 96k 64k")
		}},
		interopCase{"chain-v2-probe", func(t *testing.T, dir string) string {
			made(t, filepath.Join(dir, "base.qcow2"), "compat=0.10", "2M", nil, "write -P 5 0 1M")
			top := made(t, filepath.Join(dir, "top.qcow2"), "compat=0.10", "2M", []string{"-b", "base.qcow2", "-F", "qcow2"},
				"write -P 6 512k 64k")
			// Drop the backing format extension so the backing file is
			// probed, as for old images (qemu-img no longer writes such
			// images).
			dropBackingFormat(t, top)
			return top
		}},
		interopCase{"extended-l2", func(t *testing.T, dir string) string {
			made(t, filepath.Join(dir, "base.qcow2"), "", "4M", nil, "write -P 1 0 4M")
			return made(t, filepath.Join(dir, "top.qcow2"), "extended_l2=on,cluster_size=64k", "4M", []string{"-b", "base.qcow2", "-F", "qcow2"},
				"write -P 2 2k 2k", "write -P 3 8k 6k", "write -z 32k 4k",
				"write -P 4 128k 64k", "write -z 300k 10k", "discard 1M 64k", "write -P 5 2M 2k")
		}},
		interopCase{"extended-l2-nobacking", func(t *testing.T, dir string) string {
			return made(t, filepath.Join(dir, "img.qcow2"), "extended_l2=on,cluster_size=32k", "2M", nil,
				"write -P 2 1k 1k", "write -z 4k 2k", "write -P 3 40k 3k")
		}},
		interopCase{"extended-l2-compressed", func(t *testing.T, dir string) string {
			return made(t, filepath.Join(dir, "img.qcow2"), "extended_l2=on,cluster_size=16k,compression_type=zstd", "1M", nil,
				"write -c -P 7 0 64k", "write -P 8 20k 1k", "write -z 40k 2k", "write -c -P 9 256k 16k")
		}},
		interopCase{"snapshots", func(t *testing.T, dir string) string {
			p := made(t, filepath.Join(dir, "img.qcow2"), "", "4M", nil, "write -P 1 0 1M")
			qimg(t, "snapshot", "-c", "first", p)
			qio(t, p, "qcow2", "write -P 2 512k 1M")
			qimg(t, "snapshot", "-c", "second", p)
			qio(t, p, "qcow2", "write -z 0 64k")
			return p
		}},
		interopCase{"prealloc-metadata", func(t *testing.T, dir string) string {
			return made(t, filepath.Join(dir, "img.qcow2"), "preallocation=metadata", "4M", nil, "write -P 1 128k 4k")
		}},
		interopCase{"prealloc-full", func(t *testing.T, dir string) string {
			return made(t, filepath.Join(dir, "img.qcow2"), "preallocation=full", "2M", nil, "write -P 1 128k 4k")
		}},
		interopCase{"lazy-refcounts-dirty", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "img.qcow2")
			qemuCreate(t, p, "lazy_refcounts=on", "4M")
			// abort leaves the dirty bit set; qemu-io exits by signal.
			testutil.Exec("qemu-io", "-f", "qcow2", "-c", "write -P 1 0 128k", "-c", "abort", p)
			img, err := Open(p, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			if info, _ := img.Info(); !info.DirtyFlag {
				t.Fatal("qemu-io abort did not leave the image dirty")
			}
			return p
		}},
	)
	cases = append(cases, interopCase{"raw-sparse", func(t *testing.T, dir string) string {
		p := filepath.Join(dir, "disk.raw")
		qimg(t, "create", "-q", "-f", "raw", p, "3M")
		qio(t, p, "raw", "write -P 1 64k 8k", "write -P 2 1M 1M", "write -P 3 2M 4k")
		// An unaligned tail, as QEMU rounds raw images up to sectors.
		if err := os.Truncate(p, 3<<20+1000); err != nil {
			t.Fatal(err)
		}
		return p
	}})
	cases = append(cases, interopCase{"bitmaps", func(t *testing.T, dir string) string {
		p := made(t, filepath.Join(dir, "img.qcow2"), "", "4M", nil, "write -P 1 0 64k")
		qimg(t, "bitmap", "--add", p, "b0")
		qimg(t, "bitmap", "--add", "-g", "128k", "--disable", p, "b1")
		return p
	}})
	for _, ct := range []string{"zlib", "zstd"} {
		cases = append(cases, interopCase{"compressed-" + ct, func(t *testing.T, dir string) string {
			src := made(t, filepath.Join(dir, "src.qcow2"), "", "4M", nil,
				"write -P 1 0 1M", "write -P 2 2M 64k", "write -z 3M 64k")
			// Incompressible-ish data too: random bytes from a pattern
			// mix.
			rnd := filepath.Join(dir, "rnd.raw")
			buf := make([]byte, 256<<10)
			seed := uint32(1)
			for i := range buf {
				seed = seed*1664525 + 1013904223
				buf[i] = byte(seed >> 24)
			}
			os.WriteFile(rnd, buf, 0o644)
			qio(t, src, "qcow2", "write -P 3 1536k 4k")
			dst := filepath.Join(dir, "img.qcow2")
			qimg(t, "convert", "-q", "-c", "-O", "qcow2", "-o", "compression_type="+ct, src, dst)
			return dst
		}})
	}
	cases = append(cases, interopCase{"compressed-mixed", func(t *testing.T, dir string) string {
		return made(t, filepath.Join(dir, "img.qcow2"), "compression_type=zstd,cluster_size=4k", "1M", nil,
			"write -c -P 1 0 64k", "write -P 2 16k 4k", "write -c -P 3 128k 8k")
	}})
	return cases
}

func itoa(v int) string { return strconv.Itoa(v) }

func TestInterop(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	for _, c := range interopCases() {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			path := c.build(t, dir)
			checkAgainstQemu(t, path)
		})
	}
}

// checkAgainstQemu requires byte equality with qemu-img convert -O raw and
// equal map and info JSON.
func checkAgainstQemu(t *testing.T, path string) {
	t.Helper()
	img, err := Open(path, Options{})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer img.Close()

	// Content.
	want := filepath.Join(t.TempDir(), "want.raw")
	qimg(t, "convert", "-U", "-O", "raw", path, want)
	wantData, err := os.ReadFile(want)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(wantData)) != img.Size() {
		t.Fatalf("size %d, qemu-img %d", img.Size(), len(wantData))
	}
	got := make([]byte, img.Size())
	// Odd-sized reads exercise run boundaries.
	for off := 0; off < len(got); {
		n := min(len(got)-off, 123457)
		if _, err := img.ReadAt(got[off:off+n], int64(off)); err != nil {
			t.Fatalf("ReadAt(%d, %d): %v", off, n, err)
		}
		off += n
	}
	if i := firstDiff(got, wantData); i >= 0 {
		t.Fatalf("content differs from qemu-img convert at byte %#x: got %#x want %#x", i, got[i], wantData[i])
	}

	// Convert to raw gives the same bytes.
	conv := filepath.Join(t.TempDir(), "conv.raw")
	if err := Convert(context.Background(), img, conv, ConvertOptions{Create: CreateOptions{Format: FormatRaw}, Workers: 3, ChunkSize: 192 << 10}); err != nil {
		t.Fatalf("Convert to raw: %v", err)
	}
	convData, err := os.ReadFile(conv)
	if err != nil {
		t.Fatal(err)
	}
	if i := firstDiff(convData, wantData); i >= 0 {
		t.Fatalf("Convert output differs from qemu-img convert at byte %#x", i)
	}

	// Map. Reading an unwritten extent brings its pages into the page
	// cache, after which SEEK_DATA reports it as data: evict the file's
	// cached pages so that both tools see the holes QEMU left.
	evictPageCache(t, path)
	var wantMap []MapEntry
	if err := json.Unmarshal(qimg(t, "map", "-U", "--output=json", path), &wantMap); err != nil {
		t.Fatal(err)
	}
	gotMap, err := img.Map()
	if err != nil {
		t.Fatalf("Map: %v", err)
	}
	gj, _ := json.Marshal(gotMap)
	wj, _ := json.Marshal(wantMap)
	if !bytes.Equal(gj, wj) {
		t.Errorf("map differs from qemu-img map:\n got %s\nwant %s", gj, wj)
	}

	// Info, for each image of the chain.
	var wantInfo []map[string]any
	if err := json.Unmarshal(qimg(t, "info", "-U", "--output=json", "--backing-chain", path), &wantInfo); err != nil {
		t.Fatal(err)
	}
	chain, err := ChainInfo(path, Options{})
	if err != nil {
		t.Fatalf("ChainInfo: %v", err)
	}
	var gotInfo []map[string]any
	b, _ := json.Marshal(chain)
	json.Unmarshal(b, &gotInfo)
	if d := cmp.Diff(wantInfo, gotInfo); d != "" {
		t.Errorf("info differs from qemu-img info (-qemu-img +ours):\n%s", d)
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

// dropBackingFormat rewrites the header of an image without its backing
// format extension, using Header.MarshalBinary.
func dropBackingFormat(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	buf := make([]byte, 65536)
	f.ReadAt(buf, 0)
	h, err := parseHeader(path, buf, fi.Size())
	if err != nil {
		t.Fatal(err)
	}
	h.RemoveExtension(ExtBackingFormat)
	h.BackingFormat = ""
	out, err := h.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	end := int(h.BackingFileOffset) + int(h.BackingFileSize)
	padded := make([]byte, max(len(out), end))
	copy(padded, out)
	if _, err := f.WriteAt(padded, 0); err != nil {
		t.Fatal(err)
	}
}

func TestInteropUnreadable(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	dir := t.TempDir()

	// External data file: info matches qemu-img, reads are refused.
	df := filepath.Join(dir, "df.qcow2")
	qimg(t, "create", "-q", "-f", "qcow2", "-o", "data_file="+filepath.Join(dir, "df.data"), df, "1M")
	qio(t, df, "qcow2", "write -P 1 0 64k")
	img, err := Open(df, Options{})
	if err != nil {
		t.Fatalf("Open data-file image: %v", err)
	}
	buf := make([]byte, 512)
	if _, err := img.ReadAt(buf, 0); !errors.Is(err, ErrCannotRead) || !strings.HasPrefix(err.Error(), "qcow2: cannot read content: ") {
		t.Errorf("ReadAt of data-file image: %v", err)
	}
	if err := Convert(context.Background(), img, filepath.Join(dir, "out.raw"), ConvertOptions{Create: CreateOptions{Format: FormatRaw}}); !errors.Is(err, ErrCannotRead) {
		t.Errorf("Convert of data-file image: %v", err)
	}
	img.Close()
	var want map[string]any
	json.Unmarshal(qimg(t, "info", "-U", "--output=json", df), &want)
	infos, err := ChainInfo(df, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	b, _ := json.Marshal(infos[0])
	json.Unmarshal(b, &got)
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("data-file info differs from qemu-img (-qemu-img +ours):\n%s", d)
	}

	// Legacy AES encryption: qemu-img still writes it, and it needs no
	// key-derivation benchmark.
	aes := filepath.Join(dir, "aes.qcow2")
	qimg(t, "create", "-q", "--object", "secret,id=sec0,data=123456", "-f", "qcow2",
		"-o", "encrypt.format=aes,encrypt.key-secret=sec0", aes, "1M")
	checkEncrypted(t, aes, "aes", "AES")

	// LUKS encryption: opens for info, reads are refused. qemu-img times
	// its PBKDF2 by the thread's CPU clock and gives up with "Unable to
	// get accurate CPU usage" when that clock does not advance during its
	// first round (seen on a CI machine); try again a few times, and say
	// so if qemu-img cannot write a LUKS image here at all.
	enc := filepath.Join(dir, "enc.qcow2")
	var out []byte
	for attempt := 0; attempt < 5; attempt++ {
		cmd := exec.Command("qemu-img", "create", "-q", "--object", "secret,id=sec0,data=123456", "-f", "qcow2",
			"-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10", enc, "1M")
		if out, err = cmd.CombinedOutput(); err == nil {
			break
		}
		if !strings.Contains(string(out), "accurate CPU usage") {
			t.Fatalf("qemu-img create LUKS: %v\n%s", err, out)
		}
	}
	if err != nil {
		t.Logf("qemu-img could not time its PBKDF2 on this machine (%s); LUKS case covered by the AES one only", bytes.TrimSpace(out))
		return
	}
	checkEncrypted(t, enc, "luks", "LUKS")
}

// checkEncrypted opens an encrypted image written by qemu-img: Info
// names the format, reads are refused naming the encryption.
func checkEncrypted(t *testing.T, path, format, word string) {
	t.Helper()
	img, err := Open(path, Options{})
	if err != nil {
		t.Fatalf("Open %s image: %v", word, err)
	}
	defer img.Close()
	if err := img.Readable(); !errors.Is(err, ErrCannotRead) || !strings.Contains(err.Error(), word) {
		t.Errorf("Readable of %s image: %v", word, err)
	}
	buf := make([]byte, 512)
	if _, err := img.ReadAt(buf, 0); !errors.Is(err, ErrCannotRead) {
		t.Errorf("ReadAt of %s image: %v", word, err)
	}
	info, err := img.Info()
	if err != nil {
		t.Fatal(err)
	}
	if !info.Encrypted || info.FormatSpecific.Data.Encrypt == nil || info.FormatSpecific.Data.Encrypt.Format != format {
		t.Errorf("%s info = %+v", word, info)
	}
}

// TestInteropDamagedExtL2 breaks subcluster bitmaps of an extended-L2
// image written by qemu-io and expects a CorruptError naming the L2 entry.
func TestInteropDamagedExtL2(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	src := filepath.Join(dir, "src.qcow2")
	qimg(t, "create", "-q", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=64k", src, "1M")
	qio(t, src, "qcow2", "write -P 1 0 4k", "write -c -P 2 64k 64k")
	orig, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	l2 := l2Entry0(orig)
	cases := []struct {
		name   string
		patch  func(b []byte)
		reason string
	}{
		{"allocated and zero", func(b []byte) { b[l2+8+3] |= 1 /* zero bit of subcluster 0 */ }, "both allocated and zero"},
		{"allocation bits without offset", func(b []byte) {
			clear(b[l2 : l2+8])
		}, "unallocated cluster with subcluster allocation bits"},
		{"bitmap on compressed cluster", func(b []byte) { b[l2+16+8+7] = 1 }, "compressed cluster with a subcluster bitmap"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := append([]byte(nil), orig...)
			c.patch(b)
			p := filepath.Join(t.TempDir(), "bad.qcow2")
			os.WriteFile(p, b, 0o644)
			img, err := Open(p, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			_, err = img.ReadAt(make([]byte, 128<<10), 0)
			var ce *CorruptError
			if !errors.As(err, &ce) || ce.Field != "L2 entry" || !strings.Contains(ce.Reason, c.reason) {
				t.Fatalf("ReadAt: %v, want CorruptError on the L2 entry: %s", err, c.reason)
			}
			if want := int64(l2); c.name != "bitmap on compressed cluster" && ce.Offset != want {
				t.Errorf("offset %#x, want %#x", ce.Offset, want)
			}
		})
	}
}
