package qcow2

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgtool/imgtool/internal/imagelock"
	"github.com/imgtool/imgtool/internal/testutil"
)

// TestLockQemuHolds: while qemu-io has the image open for writing, a
// writable Open fails and names qemu-io; -U style reads still work.
func TestLockQemuHolds(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	p := filepath.Join(t.TempDir(), "l.qcow2")
	if err := Create(p, CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	done := testutil.HoldWithQemuIO(t, p)
	defer done()
	_, err := Open(p, Options{Writable: true})
	if !errors.Is(err, imagelock.ErrLocked) || !strings.Contains(err.Error(), "qemu-io") {
		t.Fatalf("writable open while qemu-io holds the image: %v", err)
	}
	if _, err := Open(p, Options{}); !errors.Is(err, imagelock.ErrLocked) {
		t.Fatalf("read-only open without ForceShare: %v", err)
	}
	img, err := Open(p, Options{ForceShare: true})
	if err != nil {
		t.Fatalf("ForceShare open: %v", err)
	}
	img.Close()
}

// TestLockWeHold: while imgtool has the image open for writing, qemu-img
// info without -U fails and with -U works.
func TestLockWeHold(t *testing.T) {
	testutil.NeedTool(t, "qemu-img")
	p := filepath.Join(t.TempDir(), "l.qcow2")
	if err := Create(p, CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	img, err := Open(p, Options{Writable: true})
	if err != nil {
		t.Fatal(err)
	}
	if out, err := testutil.Exec("qemu-img", "info", p); err == nil {
		t.Fatalf("qemu-img info succeeded while imgtool writes:\n%s", out)
	} else if !strings.Contains(string(out), "lock") {
		t.Fatalf("qemu-img info failed for another reason: %s", out)
	}
	testutil.Run(t, "qemu-img", "info", "-U", p)
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	testutil.Run(t, "qemu-img", "info", p)
	// A read-only open blocks qemu-io from writing.
	ro, err := Open(p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if out, err := testutil.Exec("qemu-io", "-f", "qcow2", "-c", "write 0 512", p); err == nil {
		t.Fatalf("qemu-io wrote while imgtool reads:\n%s", out)
	}
	ro.Close()
}

// TestCorruptBit: a write that would land on metadata is refused, the
// image is marked corrupt and opens read-only until check -r all.
func TestCorruptBit(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	p := filepath.Join(dir, "c.qcow2")
	qemuImage(t, p, "cluster_size=4096", "1M", "write -P 0x33 0 8k")
	b, _ := os.ReadFile(p)
	h, err := parseHeader(p, b, int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	// Guest cluster 1 now claims to live on the L1 table.
	entryOff, _ := dataOf(b, h, 1)
	putBe64(b, entryOff, h.L1TableOffset|entryCopied)
	os.WriteFile(p, b, 0o644)
	img, err := Open(p, Options{Writable: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := img.WriteAt([]byte("x"), 4096); !errors.Is(err, ErrOverlap) || !errors.Is(err, ErrCorrupt) {
		t.Fatalf("write onto the L1 table: %v", err)
	}
	img.Close()
	if _, err := Open(p, Options{Writable: true}); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("writable open of a corrupt image: %v", err)
	}
	out, _ := testutil.Exec("qemu-img", "info", p)
	if !strings.Contains(string(out), "corrupt: true") {
		t.Fatalf("qemu-img info does not see the corrupt bit:\n%s", out)
	}
	ro, err := Open(p, Options{})
	if err != nil {
		t.Fatalf("read-only open of a corrupt image: %v", err)
	}
	ro.Close()
	res, err := CheckFile(p, RepairAll, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode() != 0 {
		t.Fatalf("after repair: %+v\n%s", res, strings.Join(res.Messages, "\n"))
	}
	testutil.Run(t, "qemu-img", "check", "-U", p)
	img, err = Open(p, Options{Writable: true})
	if err != nil {
		t.Fatalf("writable open after repair: %v", err)
	}
	img.Close()
}
