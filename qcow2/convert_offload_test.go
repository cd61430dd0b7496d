package qcow2

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgtool/imgtool/internal/testutil"
)

// mustHost returns the host offset of guest offset off, which must be
// uncompressed data.
func (img *Image) mustHost(t *testing.T, off int64) int64 {
	t.Helper()
	ext, err := img.Extents(off, 1)
	if err != nil || len(ext) != 1 || ext[0].Kind != KindData || ext[0].HostOffset < 0 {
		t.Fatalf("extent at %d: %+v, %v; want data", off, ext, err)
	}
	return ext[0].HostOffset
}

// TestConvertCopyOffload: raw output with CopyOffload (copy_file_range
// of the uncompressed runs, compressed clusters decoded as usual) has
// qemu-img's content for every fixture.
func TestConvertCopyOffload(t *testing.T) {
	for _, name := range fixtures {
		t.Run(name, func(t *testing.T) {
			img := openFixture(t, name)
			dst := filepath.Join(t.TempDir(), "out.raw")
			if err := Convert(context.Background(), img, dst, ConvertOptions{Create: CreateOptions{Format: FormatRaw}, CopyOffload: true, Workers: 2, ChunkSize: 8192}); err != nil {
				t.Fatal(err)
			}
			checkRawSum(t, name, dst)
		})
	}
	img := openFixture(t, fixtures[0])
	err := Convert(context.Background(), img, filepath.Join(t.TempDir(), "x"), ConvertOptions{CopyOffload: true, Compress: true})
	if err == nil || !strings.Contains(err.Error(), "copy offloading") {
		t.Errorf("CopyOffload with Compress: %v, want a refusal", err)
	}
}

// TestConvertHostHoles: qemu leaves the unwritten part of a 2 MiB data
// cluster as a hole in the host file. hostSpans reports that hole (so
// convert does not read it), and raw output, sparse, -S 0 or -C, has
// qemu-img convert's bytes, with the hole still a hole in sparse output
// (-C copies data runs as they are, zeros included, as qemu-img -C).
func TestConvertHostHoles(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	src := filepath.Join(dir, "src.qcow2")
	qemuImage(t, src, "cluster_size=2M", "8M", "write -P 0x55 0 4k", "write -P 0xaa 1M 4k", "write -P 0x11 5M 8k")
	// qemu leaves the rest of the cluster unwritten (a hole) or
	// zero-allocated depending on the file system: punch the hole, the
	// bytes read as zeros either way.
	img0, err := Open(src, Options{})
	if err != nil {
		t.Fatal(err)
	}
	host := img0.mustHost(t, 0)
	img0.Close()
	f, err := os.OpenFile(src, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	err = punchHole(f, host+64<<10, 768<<10)
	f.Close()
	if err != nil {
		t.Skipf("punching a hole in the test file: %v", err)
	}
	want := filepath.Join(dir, "want.raw")
	testutil.Run(t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", src, want)
	wb, err := os.ReadFile(want)
	if err != nil {
		t.Fatal(err)
	}
	img, err := Open(src, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	ext, err := img.Extents(0, 2<<20)
	if err != nil || len(ext) != 1 || ext[0].Kind != KindData || ext[0].HostOffset < 0 {
		t.Fatalf("extents of the first cluster: %+v, %v; want one data run", ext, err)
	}
	var holes int64
	err = img.hostSpans(ext[0].HostOffset, 2<<20, true, func(off, n int64, data bool) error {
		if !data {
			holes += n
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if holes == 0 {
		t.Skip("the file system of the test directory reports no holes (SEEK_HOLE)")
	}
	if holes < 768<<10 {
		t.Errorf("holes in the first data cluster: %d bytes; want at least the 768 KiB punched", holes)
	}
	// compare reads the cluster around its hole, and finds it equal to
	// qemu-img's raw output, and different where a byte of it differs.
	rawImg := cvOpen(t, want)
	if res, err := Compare(context.Background(), img, rawImg, CompareOptions{}); err != nil || !res.Identical {
		t.Errorf("Compare with qemu-img's output: %+v, %v; want identical", res, err)
	}
	wb[128<<10] = 1 // inside the punched hole
	odd := writeRawFile(t, dir, "odd.raw", wb)
	if res, err := Compare(context.Background(), img, cvOpen(t, odd), CompareOptions{}); err != nil || res.Identical || res.Offset != 128<<10 {
		t.Errorf("Compare with a changed byte: %+v, %v; want a difference at %#x", res, err, 128<<10)
	}
	wb[128<<10] = 0
	for _, o := range []ConvertOptions{{}, {NoSparse: true}, {CopyOffload: true}} {
		o.Create.Format = FormatRaw
		dst := filepath.Join(dir, "out.raw")
		if err := Convert(context.Background(), img, dst, o); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(dst)
		if err != nil || !bytes.Equal(got, wb) {
			t.Fatalf("%+v: content differs from qemu-img convert (%v)", o, err)
		}
		if a, ok := allocatedSize(mustOpen(t, dst)); ok && !o.NoSparse && !o.CopyOffload && a > 1<<20 {
			t.Errorf("%+v: output allocates %d bytes for 16 KiB of data; want the holes kept", o, a)
		}
	}
}

// TestHostSpans reports the data and holes of a sparse file in order,
// and a hole past its end.
func TestHostSpans(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	blk := bytes.Repeat([]byte{1}, 4096)
	for _, off := range []int64{0, 1 << 20} {
		if _, err := f.WriteAt(blk, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(2 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	img, err := Open(p, Options{Format: FormatRaw})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	type span struct {
		off, n int64
		data   bool
	}
	var got []span
	if err := img.hostSpans(0, 3<<20, true, func(off, n int64, data bool) error {
		got = append(got, span{off, n, data})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) == 1 && got[0].data {
		t.Skip("the file system of the test directory reports no holes (SEEK_HOLE)")
	}
	want := []span{{0, 4096, true}, {4096, 1<<20 - 4096, false}, {1 << 20, 4096, true}, {1<<20 + 4096, 2<<20 - 4096, false}}
	if len(got) != len(want) {
		t.Fatalf("spans %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("spans %v, want %v", got, want)
		}
	}
	// Without probing, everything is data and nothing is asked.
	got = nil
	img.hostSpans(0, 3<<20, false, func(off, n int64, data bool) error {
		got = append(got, span{off, n, data})
		return nil
	})
	if len(got) != 1 || got[0] != (span{0, 3 << 20, true}) {
		t.Errorf("spans without probe: %v", got)
	}
}
