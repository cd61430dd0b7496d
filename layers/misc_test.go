package layers

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/imgtool/imgtool/internal/tartest"
)

// waitGoroutines fails if more goroutines than before remain after a
// grace period (a leaked read-ahead or compressor goroutine).
func waitGoroutines(t *testing.T, before int) {
	t.Helper()
	for range 100 {
		if runtime.NumGoroutine() <= before {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("%d goroutines left, %d before", runtime.NumGoroutine(), before)
}

func TestApplyCancelAndErrorsLeakNothing(t *testing.T) {
	before := runtime.NumGoroutine()
	big := tartest.Zstd(tartest.Tar(tartest.File("a", string(make([]byte, 4<<20))), tartest.File("../bad", "x")), 0)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Apply(ctx, bytes.NewReader(big), t.TempDir(), ApplyOptions{}); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled: %v", err)
	}
	if _, err := Apply(context.Background(), bytes.NewReader(big), t.TempDir(), ApplyOptions{}); !errors.Is(err, ErrUnsafePath) {
		t.Errorf("bad entry: %v", err)
	}
	stop := errors.New("stop")
	_, err := List(context.Background(), bytes.NewReader(big), func(*tar.Header) error { return stop }, Limits{})
	if !errors.Is(err, stop) {
		t.Errorf("List with a failing callback: %v", err)
	}
	var buf bytes.Buffer
	src := t.TempDir()
	must(t, os.WriteFile(filepath.Join(src, "f"), make([]byte, 3<<20), 0o644))
	if _, err := Create(ctx, &buf, src, CreateOptions{}); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled Create: %v", err)
	}
	waitGoroutines(t, before)
}

func TestApplyEmptyAndIgnoreOwners(t *testing.T) {
	// An empty blob is an empty tar: nothing to do.
	d, err := Apply(context.Background(), bytes.NewReader(nil), t.TempDir(), ApplyOptions{})
	if err != nil || d.Size != 0 || d.MediaType != MediaTypeTar {
		t.Errorf("empty blob: %+v %v", d, err)
	}
	dir := t.TempDir()
	layer := tartest.Tar(tartest.File("f", "x").With(func(h *tar.Header) { h.Uid, h.Gid = 4321, 4321 }))
	must(t, applyBytes(dir, layer, ApplyOptions{IgnoreOwners: true}))
	st, err := os.Lstat(filepath.Join(dir, "f"))
	must(t, err)
	if s, ok := statOwner(st); ok && s == 4321 {
		t.Error("IgnoreOwners still chowned")
	}
}

func TestCreateErrors(t *testing.T) {
	var buf bytes.Buffer
	ctx := context.Background()
	if _, err := Create(ctx, &buf, filepath.Join(t.TempDir(), "missing"), CreateOptions{}); err == nil {
		t.Error("missing dir accepted")
	}
	src := t.TempDir()
	must(t, os.WriteFile(filepath.Join(src, ".wh.x"), nil, 0o644))
	if _, err := Create(ctx, &buf, src, CreateOptions{}); !errors.Is(err, ErrUnsupported) {
		t.Errorf("file named .wh.x: %v", err)
	}
	if _, err := Create(ctx, &buf, t.TempDir(), CreateOptions{Compression: Compression(42)}); !errors.Is(err, ErrUnsupported) {
		t.Errorf("bad compression: %v", err)
	}
}

func statOwner(fi os.FileInfo) (uint32, bool) {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Uid, true
	}
	return 0, false
}
