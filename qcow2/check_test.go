package qcow2

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgtool/imgtool/internal/testutil"
)

// damage pokes a fault into an image file built by qemu-img.
type damage struct {
	name string
	// poke modifies the file bytes; it returns the guest range whose
	// content a repair may lose (the damaged cluster), or -1.
	poke func(t *testing.T, bp *[]byte, h *Header) (lostStart, lostLen int64)
}

func be64(b []byte, off uint64) uint64       { return binary.BigEndian.Uint64(b[off:]) }
func putBe64(b []byte, off uint64, v uint64) { binary.BigEndian.PutUint64(b[off:], v) }

// refcountAt returns the file offset of the 16-bit refcount of cluster c.
func refcountAt(b []byte, h *Header, c uint64) uint64 {
	per := uint64(h.ClusterSize()) * 8 / 16
	blk := uint64(refTableEntry(be64(b, h.RefcountTableOffset+c/per*8)).blockOffset())
	return blk + c%per*2
}

// firstData returns the host offset of guest cluster vc's data.
func dataOf(b []byte, h *Header, vc uint64) (entryOff, host uint64) {
	l2n := uint64(h.ClusterSize() / 8)
	l2 := uint64(l1Entry(be64(b, h.L1TableOffset+vc/l2n*8)).l2Offset())
	entryOff = l2 + vc%l2n*8
	return entryOff, uint64(l2Entry(be64(b, entryOff)).host())
}

func damages() []damage {
	return []damage{
		{"leak", func(t *testing.T, bp *[]byte, h *Header) (int64, int64) {
			// Count a cluster nothing uses, appended to the file.
			b := *bp
			c := (uint64(len(b)) + uint64(h.ClusterSize()) - 1) / uint64(h.ClusterSize())
			b = append(b, make([]byte, int64(c)*h.ClusterSize()+h.ClusterSize()-int64(len(b)))...)
			binary.BigEndian.PutUint16(b[refcountAt(b, h, c):], 1)
			*bp = b
			return -1, 0
		}},
		{"refcount-too-low", func(t *testing.T, bp *[]byte, h *Header) (int64, int64) {
			b := *bp
			_, host := dataOf(b, h, 3)
			binary.BigEndian.PutUint16(b[refcountAt(b, h, host/uint64(h.ClusterSize())):], 0)
			return -1, 0
		}},
		{"refcount-too-high", func(t *testing.T, bp *[]byte, h *Header) (int64, int64) {
			b := *bp
			_, host := dataOf(b, h, 5)
			binary.BigEndian.PutUint16(b[refcountAt(b, h, host/uint64(h.ClusterSize())):], 2)
			return -1, 0
		}},
		{"overlapping-l2", func(t *testing.T, bp *[]byte, h *Header) (int64, int64) {
			b := *bp
			// L1 entry 1 points at L1 entry 0's table; the guest range of
			// entry 1 now reads entry 0's data.
			putBe64(b, h.L1TableOffset+8, be64(b, h.L1TableOffset))
			l2n := h.ClusterSize() / 8
			return l2n * h.ClusterSize(), l2n * h.ClusterSize()
		}},
		{"copied-flag", func(t *testing.T, bp *[]byte, h *Header) (int64, int64) {
			b := *bp
			entryOff, _ := dataOf(b, h, 2)
			putBe64(b, entryOff, be64(b, entryOff)&^entryCopied)
			return -1, 0
		}},
		{"misaligned-entry", func(t *testing.T, bp *[]byte, h *Header) (int64, int64) {
			b := *bp
			entryOff, host := dataOf(b, h, 7)
			putBe64(b, entryOff, (host+512)|entryCopied)
			return 7 * h.ClusterSize(), h.ClusterSize()
		}},
	}
}

type qemuCheck struct {
	Corruptions int64 `json:"corruptions"`
	Leaks       int64 `json:"leaks"`
	CheckErrors int64 `json:"check-errors"`
}

func runQemuCheck(t *testing.T, path string, args ...string) (qemuCheck, int, string) {
	t.Helper()
	out, err := testutil.Exec("qemu-img", append(append([]string{"check", "-U", "--output=json"}, args...), path)...)
	code := exitCodeOf(err)
	var r qemuCheck
	i := strings.Index(string(out), "{")
	if i >= 0 {
		dec := json.NewDecoder(strings.NewReader(string(out[i:])))
		dec.Decode(&r) //nolint:errcheck // code is what matters when it fails
	}
	return r, code, string(out)
}

func TestCheckAgreesWithQemu(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	for _, d := range damages() {
		t.Run(d.name, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "d.qcow2")
			qemuImage(t, p, "cluster_size=4096", "16M", "write -P 0x61 0 64k", "write -P 0x62 2M 64k")
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			h, err := parseHeader(p, b, int64(len(b)))
			if err != nil {
				t.Fatal(err)
			}
			before := filepath.Join(dir, "before.raw")
			testutil.Run(t, "qemu-img", "convert", "-O", "raw", p, before)
			lostStart, lostLen := d.poke(t, &b, h)
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}

			q, qcode, qout := runQemuCheck(t, p)
			res, err := CheckFile(p, RepairNone, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if res.ExitCode() != qcode || (res.Corruptions > 0) != (q.Corruptions > 0) || (res.Leaks > 0) != (q.Leaks > 0) {
				t.Fatalf("imgtool check: exit %d, %d corruptions, %d leaks; qemu-img: exit %d\n%s\nimgtool:\n%s",
					res.ExitCode(), res.Corruptions, res.Leaks, qcode, qout, strings.Join(res.Messages, "\n"))
			}
			if qcode == 0 {
				t.Fatalf("damage %s not detected by qemu-img", d.name)
			}
			fixed, err := CheckFile(p, RepairAll, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if fixed.ExitCode() != 0 {
				t.Fatalf("after -r all: %+v\n%s", fixed, strings.Join(fixed.Messages, "\n"))
			}
			if _, code, out := runQemuCheck(t, p); code != 0 {
				t.Fatalf("qemu-img check after imgtool repair: exit %d\n%s", code, out)
			}
			after := filepath.Join(dir, "after.raw")
			testutil.Run(t, "qemu-img", "convert", "-O", "raw", p, after)
			bb, _ := os.ReadFile(before)
			ab, _ := os.ReadFile(after)
			if lostStart >= 0 {
				clear(bb[lostStart : lostStart+lostLen])
				clear(ab[lostStart : lostStart+lostLen])
			}
			if !bytes.Equal(bb, ab) {
				t.Fatal("repair changed guest content outside the damaged cluster")
			}
		})
	}
}

func TestRepairLeaksOnly(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	p := filepath.Join(dir, "l.qcow2")
	qemuImage(t, p, "cluster_size=4096", "16M", "write -P 0x61 0 64k")
	b, _ := os.ReadFile(p)
	h, _ := parseHeader(p, b, int64(len(b)))
	damages()[0].poke(t, &b, h)
	os.WriteFile(p, b, 0o644)
	res, err := CheckFile(p, RepairLeaks, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode() != 0 || res.LeaksFixed != 1 {
		t.Fatalf("after -r leaks: %+v", res)
	}
	if _, code, out := runQemuCheck(t, p); code != 0 {
		t.Fatalf("qemu-img check after imgtool -r leaks: exit %d\n%s", code, out)
	}
}

// TestBitmapsAfterWrite: a writable open clears the bitmaps autoclear
// bit (bitmaps are not maintained), after which QEMU ignores the bitmaps
// and sees their clusters as leaks; imgtool check agrees, and -r leaks
// leaves the image clean for qemu-img.
func TestBitmapsAfterWrite(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	p := filepath.Join(t.TempDir(), "bm.qcow2")
	qemuImage(t, p, "", "64M", "write 0 1M")
	testutil.Run(t, "qemu-img", "bitmap", "--add", p, "b0")
	res, err := CheckFile(p, RepairNone, Options{})
	if err != nil || res.ExitCode() != 0 {
		t.Fatalf("check with a consistent bitmap: %v %+v", err, res)
	}
	img, err := Open(p, Options{Writable: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := img.WriteAt([]byte("x"), 5<<20); err != nil {
		t.Fatal(err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	_, qcode, qout := runQemuCheck(t, p)
	res, err = CheckFile(p, RepairNone, Options{})
	if err != nil || res.ExitCode() != qcode {
		t.Fatalf("imgtool check %v %+v, qemu-img exit %d\n%s", err, res, qcode, qout)
	}
	if _, err := CheckFile(p, RepairLeaks, Options{}); err != nil {
		t.Fatal(err)
	}
	if _, code, out := runQemuCheck(t, p); code != 0 {
		t.Fatalf("after -r leaks: qemu-img check exit %d\n%s", code, out)
	}
}
