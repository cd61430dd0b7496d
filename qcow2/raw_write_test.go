package qcow2

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgtool/imgtool/internal/imagelock"
	"github.com/imgtool/imgtool/internal/testutil"
)

// rawFile writes a raw image of n pseudo-random bytes (so that zeroing
// and discarding show) and returns its path and content.
func rawFile(t *testing.T, dir, name string, n int) (string, []byte) {
	t.Helper()
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(uint64(n), 7))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p, b
}

// rawSame asserts that img reads as want, through ReadAt.
func rawSame(t *testing.T, img *Image, want []byte, step string) {
	t.Helper()
	if img.Size() != int64(len(want)) {
		t.Fatalf("%s: Size %d, want %d", step, img.Size(), len(want))
	}
	got := make([]byte, len(want))
	if _, err := img.ReadAt(got, 0); err != nil {
		t.Fatalf("%s: ReadAt: %v", step, err)
	}
	if i := firstDiff(got, want); i >= 0 {
		t.Fatalf("%s: byte %d reads %#x, want %#x", step, i, got[i], want[i])
	}
}

// TestRawWrite writes, zeroes and discards odd ranges of a raw image and
// checks every step through ReadAt against a model, then the file itself.
func TestRawWrite(t *testing.T) {
	const size = 1 << 20
	p, model := rawFile(t, t.TempDir(), "a.raw", size)
	img, err := Open(p, Options{Writable: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if img.Format() != FormatRaw {
		t.Fatalf("format %s", img.Format())
	}
	r := rand.New(rand.NewPCG(1, 2))
	for i, w := range []struct{ off, n int64 }{
		{1, 3}, {511, 2}, {4095, 8193}, {size - 7, 7}, {0, 1}, {65535, 131073}, {size - 1, 1},
	} {
		buf := make([]byte, w.n)
		for j := range buf {
			buf[j] = byte(r.Uint32())
		}
		n, err := img.WriteAt(buf, w.off)
		if err != nil || n != len(buf) {
			t.Fatalf("WriteAt(%d bytes at %d) = %d, %v", w.n, w.off, n, err)
		}
		copy(model[w.off:], buf)
		rawSame(t, img, model, fmt.Sprintf("write %d", i))
	}
	for _, z := range []struct{ off, n int64 }{{1000, 5000}, {64 << 10, 128 << 10}, {size - 3, 3}, {7, 0}} {
		if err := img.WriteZeroes(z.off, z.n); err != nil {
			t.Fatalf("WriteZeroes(%d, %d): %v", z.off, z.n, err)
		}
		clear(model[z.off : z.off+z.n])
		rawSame(t, img, model, fmt.Sprintf("zero %d+%d", z.off, z.n))
	}
	if err := img.Discard(300<<10, 64<<10+17); err != nil {
		t.Fatal(err)
	}
	if img.rw.noPunch.Load() {
		t.Log("file system cannot punch holes: Discard left the data")
	} else {
		clear(model[300<<10 : 300<<10+64<<10+17])
	}
	rawSame(t, img, model, "discard")
	if err := img.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if i := firstDiff(got, model); i >= 0 {
		t.Fatalf("file differs from the model at byte %d (len %d)", i, len(got))
	}
	// Close is idempotent; the closed image refuses writes.
	if err := img.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := img.WriteAt([]byte{1}, 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("WriteAt after Close: %v", err)
	}
	if err := img.Flush(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Flush after Close: %v", err)
	}
	if err := img.WriteZeroes(0, 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("WriteZeroes after Close: %v", err)
	}
}

// TestRawWriteBounds: the image does not grow on write; writes, zeroes
// and discards reaching past Size fail and change nothing.
func TestRawWriteBounds(t *testing.T) {
	const size = 64 << 10
	p, model := rawFile(t, t.TempDir(), "b.raw", size)
	img, err := Open(p, Options{Writable: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	for _, w := range []struct{ off, n int64 }{{size - 1, 2}, {size, 1}, {-1, 1}, {size + 4096, 1}} {
		n, err := img.WriteAt(make([]byte, w.n), w.off)
		if err == nil || n != 0 || !strings.Contains(err.Error(), "outside the image") {
			t.Fatalf("WriteAt(%d bytes at %d) = %d, %v; want an outside-the-image error", w.n, w.off, n, err)
		}
	}
	if n, err := img.WriteAt(nil, size); err != nil || n != 0 {
		t.Fatalf("empty write at the end: %d, %v", n, err)
	}
	for _, z := range []struct{ off, n int64 }{{size - 1, 2}, {-1, 1}, {0, -1}, {size + 1, 0}} {
		if err := img.WriteZeroes(z.off, z.n); err == nil {
			t.Fatalf("WriteZeroes(%d, %d) succeeded", z.off, z.n)
		}
		if err := img.Discard(z.off, z.n); err == nil {
			t.Fatalf("Discard(%d, %d) succeeded", z.off, z.n)
		}
	}
	// A read-only raw image refuses writes.
	ro, err := Open(p, Options{ForceShare: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ro.WriteAt([]byte{1}, 0); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("WriteAt on a read-only raw image: %v", err)
	}
	ro.Close()
	// Raw images have no internal snapshots.
	if err := img.CreateSnapshot("s"); !errors.Is(err, ErrUnsupportedFeature) {
		t.Fatalf("CreateSnapshot on raw: %v", err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(p)
	if !bytes.Equal(got, model) {
		t.Fatal("refused writes changed the file")
	}
}

// TestRawWriteTailSector: a file that ends inside a sector has its size
// rounded up, as QEMU does; a write into that tail extends the file and
// reads back, and the image still does not grow past the sector.
func TestRawWriteTailSector(t *testing.T) {
	p, model := rawFile(t, t.TempDir(), "t.raw", 1000)
	img, err := Open(p, Options{Writable: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	model = append(model, make([]byte, 24)...)
	rawSame(t, img, model, "open")
	if _, err := img.WriteAt([]byte("tail"), 1020); err != nil {
		t.Fatal(err)
	}
	copy(model[1020:], "tail")
	rawSame(t, img, model, "tail write")
	if err := img.WriteZeroes(990, 34); err != nil {
		t.Fatal(err)
	}
	clear(model[990:])
	rawSame(t, img, model, "tail zero")
	if _, err := img.WriteAt([]byte{1}, 1024); err == nil {
		t.Fatal("write past the rounded size succeeded")
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(p); fi.Size() != 1024 {
		t.Fatalf("file size %d, want 1024", fi.Size())
	}
}

// TestRawResize grows and shrinks a writable raw image: Size follows,
// the new range reads as zeros and is writable, and shrinking needs the
// shrink flag.
func TestRawResize(t *testing.T) {
	p, model := rawFile(t, t.TempDir(), "r.raw", 64<<10)
	img, err := Open(p, Options{Writable: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if err := img.Resize(-1, true); err == nil {
		t.Fatal("negative size accepted")
	}
	if err := img.Resize(128<<10, false); err != nil {
		t.Fatal(err)
	}
	model = append(model, make([]byte, 64<<10)...)
	rawSame(t, img, model, "grow")
	if _, err := img.WriteAt([]byte("grown"), 100<<10); err != nil {
		t.Fatal(err)
	}
	copy(model[100<<10:], "grown")
	rawSame(t, img, model, "write after grow")
	if err := img.Resize(32<<10, false); err == nil || !strings.Contains(err.Error(), "shrink") {
		t.Fatalf("shrink without the flag: %v", err)
	}
	if err := img.Resize(32<<10+100, true); err != nil {
		t.Fatal(err)
	}
	// Size is the new file size rounded up to a sector, as on reopening.
	model = append(model[:32<<10+100], make([]byte, 412)...)
	rawSame(t, img, model, "shrink")
	if _, err := img.WriteAt([]byte{1}, 33<<10); err == nil {
		t.Fatal("write past the shrunk size succeeded")
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(p); fi.Size() != 32<<10+100 {
		t.Fatalf("file size %d", fi.Size())
	}
	ro, err := Open(p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	rawSame(t, ro, model, "reopened")
}

// TestRawResizeFileLocked: ResizeFile of a raw image takes the writer
// lock, so it refuses an image qemu-io writes.
func TestRawResizeFileLocked(t *testing.T) {
	testutil.NeedTool(t, "qemu-io")
	p, _ := rawFile(t, t.TempDir(), "l.raw", 64<<10)
	done := testutil.HoldWithQemuIOFormat(t, p, "raw")
	if err := ResizeFile(p, 128<<10, false, Options{}); !errors.Is(err, imagelock.ErrLocked) {
		t.Fatalf("ResizeFile while qemu-io holds the image: %v", err)
	}
	done()
	if err := ResizeFile(p, 128<<10, false, Options{}); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(p); fi.Size() != 128<<10 {
		t.Fatalf("file size %d", fi.Size())
	}
}

// TestRawWriteLock: a writable raw open takes QEMU's writer lock: it
// fails while qemu-io has the file open, and while it is open qemu-io
// cannot write (qemu-img info -U still works). ForceShare skips the lock.
func TestRawWriteLock(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	p, _ := rawFile(t, t.TempDir(), "l.raw", 64<<10)
	done := testutil.HoldWithQemuIOFormat(t, p, "raw")
	_, err := Open(p, Options{Writable: true})
	if !errors.Is(err, imagelock.ErrLocked) || !strings.Contains(err.Error(), "qemu-io") {
		t.Fatalf("writable open while qemu-io holds the image: %v", err)
	}
	shared, err := Open(p, Options{Writable: true, ForceShare: true})
	if err != nil {
		t.Fatalf("writable ForceShare open: %v", err)
	}
	if err := shared.Close(); err != nil {
		t.Fatal(err)
	}
	done()

	img, err := Open(p, Options{Writable: true})
	if err != nil {
		t.Fatal(err)
	}
	if out, err := testutil.Exec("qemu-io", "-f", "raw", "-c", "write 0 512", p); err == nil {
		t.Fatalf("qemu-io wrote while imgtool writes:\n%s", out)
	} else if !strings.Contains(string(out), "lock") {
		t.Fatalf("qemu-io failed for another reason: %s", out)
	}
	testutil.Run(t, "qemu-img", "info", "-U", p)
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	testutil.Run(t, "qemu-io", "-f", "raw", "-c", "write 0 512", p)
}

// TestRawBackingReadOnly: in a chain over a raw base, only the top is
// writable; the base keeps a reader lock and is not changed by writes.
func TestRawBackingReadOnly(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	base, model := rawFile(t, dir, "base.raw", 1<<20)
	top := filepath.Join(dir, "top.qcow2")
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", top)
	img, err := Open(top, Options{Writable: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	b := img.Backing()
	if b == nil || b.Format() != FormatRaw || b.rw != nil {
		t.Fatalf("backing %v is not a read-only raw image", b)
	}
	if _, err := b.WriteAt([]byte{1}, 0); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("WriteAt on the backing: %v", err)
	}
	if _, err := img.WriteAt(bytes.Repeat([]byte{0xee}, 5000), 3); err != nil {
		t.Fatal(err)
	}
	if out, err := testutil.Exec("qemu-io", "-f", "raw", "-c", "write 0 512", base); err == nil {
		t.Fatalf("qemu-io wrote the base of an open chain:\n%s", out)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(base)
	if !bytes.Equal(got, model) {
		t.Fatal("writing the top changed the raw base")
	}
}

// TestRawWriteQemuInterop applies the same writes, zeroes and discards to
// two copies of a raw image, one with imgtool and one with qemu-io:
// qemu-img compare finds them identical, and qemu-io read -P sees what
// imgtool wrote.
func TestRawWriteQemuInterop(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	ours, content := rawFile(t, dir, "ours.raw", 2<<20+1000)
	theirs := filepath.Join(dir, "theirs.raw")
	if err := os.WriteFile(theirs, content, 0o644); err != nil {
		t.Fatal(err)
	}
	type op struct {
		kind    string // write, zero, discard
		pattern byte
		off, n  int64
	}
	ops := []op{
		{"write", 0x5a, 1, 3},
		{"zero", 0, 1000, 5000},
		{"write", 0x11, 4097, 70001}, // over the end of the zeroed range
		{"zero", 0, 1 << 20, 256 << 10},
		{"discard", 0, 1536 << 10, 64 << 10},
		{"write", 0x22, 1<<20 + 100, 300},
		{"write", 0x33, 2<<20 + 1000, 24}, // the tail of the last, partial sector
	}
	img, err := Open(ours, Options{Writable: true})
	if err != nil {
		t.Fatal(err)
	}
	var cmds []string
	for _, o := range ops {
		switch o.kind {
		case "write":
			_, err = img.WriteAt(bytes.Repeat([]byte{o.pattern}, int(o.n)), o.off)
			cmds = append(cmds, fmt.Sprintf("write -P %#x %d %d", o.pattern, o.off, o.n))
		case "zero":
			err = img.WriteZeroes(o.off, o.n)
			cmds = append(cmds, fmt.Sprintf("write -z %d %d", o.off, o.n))
		case "discard":
			err = img.Discard(o.off, o.n)
			cmds = append(cmds, fmt.Sprintf("discard %d %d", o.off, o.n))
		}
		if err != nil {
			t.Fatalf("%s %d+%d: %v", o.kind, o.off, o.n, err)
		}
	}
	punched := !img.rw.noPunch.Load()
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	qio(t, theirs, "raw", cmds...)
	if out, err := testutil.Exec("qemu-img", "compare", "-f", "raw", "-F", "raw", ours, theirs); err != nil {
		t.Fatalf("qemu-img compare: %v\n%s", err, out)
	}
	// qemu-io reads imgtool's writes back (it fails on a mismatch); no
	// later op overwrites them.
	var reads []string
	for _, o := range ops {
		if o.kind == "write" {
			reads = append(reads, fmt.Sprintf("read -P %#x %d %d", o.pattern, o.off, o.n))
		}
	}
	out := testutil.Run(t, "qemu-io", append([]string{"-f", "raw"}, append(qioArgs(reads), ours)...)...)
	if bytes.Contains(out, []byte("Pattern verification failed")) {
		t.Fatalf("qemu-io read -P:\n%s", out)
	}
	// Zeroed ranges are holes where the file system punches them.
	var m []struct {
		Start, Length int64
		Data          bool
	}
	if err := json.Unmarshal(testutil.Run(t, "qemu-img", "map", "--output=json", "-f", "raw", ours), &m); err != nil {
		t.Fatal(err)
	}
	const at = 1<<20 + 128<<10 // inside the zeroed range, away from the later write
	for _, e := range m {
		if e.Start <= at && at < e.Start+e.Length && e.Data && punched {
			t.Fatalf("qemu-img map shows the zeroed range as data: %+v", e)
		}
	}
}

func qioArgs(cmds []string) []string {
	var args []string
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	return args
}

// TestRawConcurrentWrites: writers to disjoint ranges and readers run
// together (meant for -race); the result matches the model.
func TestRawConcurrentWrites(t *testing.T) {
	const size = 1 << 20
	p, model := rawFile(t, t.TempDir(), "c.raw", size)
	img, err := Open(p, Options{Writable: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	const workers = 4
	errs := make(chan error, workers*2)
	part := int64(size / workers)
	for w := range workers {
		go func() {
			buf := bytes.Repeat([]byte{byte(w + 1)}, 777)
			var err error
			for off := int64(w) * part; off < int64(w+1)*part && err == nil; off += int64(len(buf)) {
				n := min(int64(len(buf)), int64(w+1)*part-off)
				if off%3 == 0 {
					err = img.WriteZeroes(off, n)
				} else {
					_, err = img.WriteAt(buf[:n], off)
				}
			}
			errs <- err
		}()
		go func() {
			buf := make([]byte, 4096)
			var err error
			for off := int64(0); off < size && err == nil; off += 4096 {
				_, err = img.ReadAt(buf, off)
			}
			if err == io.EOF {
				err = nil
			}
			errs <- err
		}()
	}
	for range workers * 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for w := range workers {
		for off := int64(w) * part; off < int64(w+1)*part; off += 777 {
			n := min(777, int64(w+1)*part-off)
			v := byte(w + 1)
			if off%3 == 0 {
				v = 0
			}
			for i := range n {
				model[off+i] = v
			}
		}
	}
	rawSame(t, img, model, "concurrent")
}
