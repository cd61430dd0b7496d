package qcow2

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestConvertRawFixtures(t *testing.T) {
	for _, name := range fixtures {
		t.Run(name, func(t *testing.T) {
			img, err := Open(fixture(name), Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			dst := filepath.Join(t.TempDir(), "out.raw")
			var mu sync.Mutex
			var calls int
			var last int64
			err = ConvertRaw(context.Background(), img, dst, ConvertOptions{Workers: 2, ChunkSize: 8192, Progress: func(done, total int64) {
				mu.Lock()
				defer mu.Unlock()
				if done < last || total != img.Size() {
					t.Errorf("progress %d/%d after %d", done, total, last)
				}
				last = done
				calls++
			}})
			if err != nil {
				t.Fatal(err)
			}
			if last != img.Size() || calls < 2 {
				t.Errorf("progress ended at %d after %d calls, want %d", last, calls, img.Size())
			}
			b, err := os.ReadFile(dst)
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(b)
			want, _ := os.ReadFile(fixture(name) + ".sha256")
			if hex.EncodeToString(sum[:]) != strings.TrimSpace(string(want)) {
				t.Error("converted content differs from qemu-img's")
			}
			if a, ok := allocatedSize(mustOpen(t, dst)); ok && a >= img.Size()/2 {
				t.Errorf("output uses %d bytes on disk for a %d-byte mostly empty image; want holes", a, img.Size())
			}
			// No temporary file is left behind.
			ents, _ := os.ReadDir(filepath.Dir(dst))
			if len(ents) != 1 {
				t.Errorf("directory holds %d entries, want only the output", len(ents))
			}
		})
	}
}

func mustOpen(t *testing.T, p string) *os.File {
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestConvertRawCancel(t *testing.T) {
	img, err := Open(fixture("chain/top.qcow2"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	dir := t.TempDir()
	dst := filepath.Join(dir, "out.raw")
	os.WriteFile(dst, []byte("keep me"), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := ConvertRaw(ctx, img, dst, ConvertOptions{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled convert: %v", err)
	}
	if b, _ := os.ReadFile(dst); string(b) != "keep me" {
		t.Error("cancelled convert touched the destination")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("cancelled convert left %d entries", len(ents))
	}
}
