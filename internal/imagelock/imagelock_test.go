package imagelock

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imgtool/imgtool/internal/testutil"
)

func openTemp(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestConflictsBetweenOpens(t *testing.T) {
	path := filepath.Join(t.TempDir(), "img")
	a, b := openTemp(t, path), openTemp(t, path)

	w, err := Acquire(a, Writer)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		mode Mode
		ok   bool
	}{
		{"second writer", Writer, false},
		{"reader", Reader, false},
		{"force-share", ForceShare, true},
	} {
		l, err := Acquire(b, tc.mode)
		if tc.ok {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
				continue
			}
			l.Release()
			continue
		}
		var ce *ConflictError
		if !errors.As(err, &ce) || !errors.Is(err, ErrLocked) {
			t.Errorf("%s: got %v, want a ConflictError", tc.name, err)
			continue
		}
		if len(ce.Holders) == 0 || ce.Holders[0].PID != os.Getpid() {
			t.Errorf("%s: holders %v do not name this process", tc.name, ce.Holders)
		}
	}
	// A failed Acquire leaves nothing behind: after the writer goes, a
	// reader on b gets in, and two readers share.
	if err := w.Release(); err != nil {
		t.Fatal(err)
	}
	r1, err := Acquire(b, Reader)
	if err != nil {
		t.Fatalf("reader after release: %v", err)
	}
	if _, err := Acquire(a, Reader); err != nil {
		t.Fatalf("second reader: %v", err)
	}
	if _, err := Acquire(openTemp(t, path), Writer); err == nil {
		t.Fatal("writer got in beside readers")
	}
	// Upgrading to writer fails while another reader holds it and keeps
	// the old mode.
	if err := r1.Change(Writer); err == nil {
		t.Fatal("upgrade beside another reader succeeded")
	}
	if r1.Mode() != Reader {
		t.Fatalf("mode after failed upgrade = %v", r1.Mode())
	}
}

func TestCoversByte(t *testing.T) {
	info := "pos:\t0\nflags:\t02\nlock:\t1: OFDLCK ADVISORY  READ -1 fe:00:9979371 100 101\nlock:\t2: OFDLCK ADVISORY  READ -1 fe:00:9979371 203 EOF\n"
	for _, tc := range []struct {
		off  int64
		want bool
	}{{100, true}, {101, true}, {102, false}, {201, false}, {300, true}} {
		if got := coversByte(info, "fe:00:9979371", tc.off); got != tc.want {
			t.Errorf("coversByte(%d) = %v, want %v", tc.off, got, tc.want)
		}
	}
	if coversByte(info, "fe:00:1", 100) {
		t.Error("matched another inode")
	}
}

// startQemuIO runs qemu-io on path with its stdin held open, and waits
// until its locks are visible.
func startQemuIO(t *testing.T, path string, args ...string) {
	t.Helper()
	cmd := exec.Command("qemu-io", append(args, path)...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	probe := openTemp(t, path)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var held bool
		rc, _ := probe.SyscallConn()
		rc.Control(func(fd uintptr) { held, _ = heldByOthers(int(fd), permBase) })
		if held {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("qemu-io did not lock the image within 10s")
}

func TestQemuSeesUs(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	path := filepath.Join(t.TempDir(), "img.qcow2")
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", path, "1M")

	f := openTemp(t, path)
	l, err := Acquire(f, Writer)
	if err != nil {
		t.Fatal(err)
	}
	out, err := testutil.Exec("qemu-img", "info", path)
	if err == nil || !strings.Contains(string(out), "lock") {
		t.Fatalf("qemu-img info beside our writer: err=%v out=%s", err, out)
	}
	testutil.Run(t, "qemu-img", "info", "-U", path)
	l.Change(Reader)
	testutil.Run(t, "qemu-img", "info", path)
	if out, err := testutil.Exec("qemu-io", "-c", "write 0 512", path); err == nil {
		t.Fatalf("qemu-io wrote beside our reader: %s", out)
	}
}

func TestWeSeeQemu(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	path := filepath.Join(t.TempDir(), "img.qcow2")
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", path, "1M")
	startQemuIO(t, path)

	f := openTemp(t, path)
	_, err := Acquire(f, Writer)
	var ce *ConflictError
	if !errors.As(err, &ce) {
		t.Fatalf("Acquire beside qemu-io: %v", err)
	}
	if len(ce.Holders) == 0 || ce.Holders[0].Command != "qemu-io" {
		t.Errorf("holders = %v, want qemu-io", ce.Holders)
	}
	if !strings.Contains(err.Error(), "qemu-io (pid ") {
		t.Errorf("message does not name qemu-io: %v", err)
	}
	if _, err := Acquire(f, Reader); err == nil {
		t.Error("reader got in beside qemu-io's writer")
	}
	l, err := Acquire(f, ForceShare)
	if err != nil {
		t.Fatalf("force-share beside qemu-io: %v", err)
	}
	l.Release()
}
