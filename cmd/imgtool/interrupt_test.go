package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestCtrlC runs the built imgtool on work long enough to be stopped
// (tar of a sparse 64 GiB file), sends it SIGINT once its progress line
// shows it is under way, and checks what a user sees: "interrupted",
// exit status 130, and no partial output left.
func TestCtrlC(t *testing.T) {
	if testing.Short() {
		t.Skip("builds imgtool")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "imgtool")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	in := filepath.Join(dir, "in")
	if err := os.Mkdir(in, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(in, "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(64 << 30); err != nil {
		t.Fatal(err)
	}
	f.Close()
	for _, c := range []struct {
		args   []string
		prefix string
	}{
		{[]string{"layer", "create", "-p", "--output-file", "OUT/l.tar.gz", in}, "imgtool layer: "},
		{[]string{"image", "build", "-p", "--layer", in, "OUT/oci:x"}, "imgtool image: "},
	} {
		out := filepath.Join(dir, "out-"+c.args[0])
		if err := os.Mkdir(out, 0o755); err != nil {
			t.Fatal(err)
		}
		args := make([]string, len(c.args))
		for i, a := range c.args {
			args[i] = strings.Replace(a, "OUT", out, 1)
		}
		var stderr syncBuffer
		cmd := exec.Command(bin, args...)
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for !strings.Contains(stderr.String(), "B") && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond) // until the progress line shows bytes
		}
		cmd.Process.Signal(syscall.SIGINT)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			t.Fatalf("%v: still running 30 s after SIGINT", c.args[:2])
		}
		if code := cmd.ProcessState.ExitCode(); code != 130 || !strings.HasSuffix(stderr.String(), "\n"+c.prefix+"interrupted\n") {
			t.Errorf("%v: exit %d, stderr %q; want 130 and %q", c.args[:2], code, stderr.String(), c.prefix+"interrupted")
		}
		// image build makes the layout it was asked for (empty);
		// no blob, temp file or layer file is left.
		var left []string
		filepath.Walk(out, func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode().IsRegular() && !strings.HasSuffix(p, "oci-layout") && !strings.HasSuffix(p, "index.json") {
				left = append(left, p)
			}
			return nil
		})
		if len(left) > 0 {
			t.Errorf("%v: left %v behind", c.args[:2], left)
		}
	}
}

// syncBuffer is a bytes.Buffer safe to read while a process writes it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
