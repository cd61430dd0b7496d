package qcow2

import (
	"bytes"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgtool/imgtool/internal/testutil"
)

// qemuCheckClean runs qemu-img check and fails unless it exits 0. Tests
// pass -U to the oracles for images this process has just closed: a child
// that another test goroutine is forking shares our open files until it
// execs, so a released lock can linger for a moment (locking itself is
// tested in lock_test.go without -U).
func qemuCheckClean(t *testing.T, path string) {
	t.Helper()
	out, err := testutil.Exec("qemu-img", "check", "-U", path)
	if err != nil {
		t.Fatalf("qemu-img check %s: %v\n%s", path, err, out)
	}
}

// closeAndCompare closes img, the writable image at p, then has qemu
// check it (clean) and compare its content with ref.
func closeAndCompare(t *testing.T, img *Image, p string, ref []byte) {
	t.Helper()
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	qemuCheckClean(t, p)
	refPath := filepath.Join(t.TempDir(), "ref.raw")
	if err := os.WriteFile(refPath, ref, 0o644); err != nil {
		t.Fatal(err)
	}
	qemuCompare(t, p, refPath)
}

// qemuCompare fails unless qemu-img compare says the two are identical.
func qemuCompare(t *testing.T, img, raw string) {
	t.Helper()
	out, err := testutil.Exec("qemu-img", "compare", "-U", "-f", "qcow2", "-F", "raw", img, raw)
	if err != nil {
		t.Fatalf("qemu-img compare %s %s: %v\n%s", img, raw, err, out)
	}
}

func TestWriteBasic(t *testing.T) {
	testutil.NeedTool(t, "qemu-img")
	dir := t.TempDir()
	p := filepath.Join(dir, "a.qcow2")
	if err := Create(p, CreateOptions{Size: 8 << 20}); err != nil {
		t.Fatal(err)
	}
	qemuCheckClean(t, p)
	img, err := Open(p, Options{Writable: true})
	if err != nil {
		t.Fatal(err)
	}
	ref := make([]byte, 8<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		off := rng.Int64N(int64(len(ref)) - 1)
		n := 1 + rng.Int64N(min(200000, int64(len(ref))-off))
		buf := make([]byte, n)
		for i := range buf {
			buf[i] = byte(rng.IntN(256))
		}
		copy(ref[off:], buf)
		if _, err := img.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	got := make([]byte, len(ref))
	if _, err := img.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, ref) {
		t.Fatal("read back differs before close")
	}
	closeAndCompare(t, img, p, ref)
	_ = exec.Command
	_ = strings.Contains
}

func TestWriteNeedsBacking(t *testing.T) {
	dir := t.TempDir()
	if err := Create(filepath.Join(dir, "b.qcow2"), CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "t.qcow2")
	if err := Create(p, CreateOptions{BackingFile: "b.qcow2"}); err != nil {
		t.Fatal(err)
	}
	img, err := Open(p, Options{Writable: true, NoBacking: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if _, err := img.WriteAt([]byte("x"), 10); err == nil {
		t.Fatal("a partial write without the backing chain succeeded")
	}
	if err := img.Discard(0, 1<<20); err != nil {
		t.Fatalf("discard needs no backing data: %v", err)
	}
}
