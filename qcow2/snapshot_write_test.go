package qcow2

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgtool/imgtool/internal/qemusize"
	"github.com/imgtool/imgtool/internal/testutil"
)

func wReadAll(t *testing.T, img *Image) []byte {
	t.Helper()
	b := make([]byte, img.Size())
	if _, err := img.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSnapshots(t *testing.T) {
	testutil.NeedTool(t, "qemu-img")
	for _, opts := range []CreateOptions{{ClusterSize: 4096}, {Compat: "0.10"}, {ExtendedL2: true, ClusterSize: 32 << 10}} {
		t.Run(strings.ReplaceAll(opts.Compat+"-"+SizeStringForTest(opts.ClusterSize), "/", ""), func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "s.qcow2")
			opts.Size = 4 << 20
			if err := Create(p, opts); err != nil {
				t.Fatal(err)
			}
			img, err := Open(p, Options{Writable: true})
			if err != nil {
				t.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(3, 3))
			write := func(n int) {
				for range n {
					off := rng.Int64N(img.Size() - 40000)
					if _, err := img.WriteAt(randBytes(rng, 1+rng.Int64N(40000)), off); err != nil {
						t.Fatal(err)
					}
				}
			}
			write(30)
			state1 := wReadAll(t, img)
			if err := img.CreateSnapshot("one"); err != nil {
				t.Fatal(err)
			}
			if err := img.CreateSnapshot("one"); !errors.Is(err, ErrSnapshotExists) {
				t.Fatalf("duplicate name: %v", err)
			}
			write(30)
			state2 := wReadAll(t, img)
			if err := img.CreateSnapshot("two"); err != nil {
				t.Fatal(err)
			}
			write(10)
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			qemuCheckClean(t, p)
			out := string(testutil.Run(t, "qemu-img", "snapshot", "-l", p))
			if !strings.Contains(out, "one") || !strings.Contains(out, "two") {
				t.Fatalf("qemu-img snapshot -l:\n%s", out)
			}
			// qemu-img applies our snapshot.
			cp := filepath.Join(dir, "copy.qcow2")
			b, _ := os.ReadFile(p)
			os.WriteFile(cp, b, 0o644)
			testutil.Run(t, "qemu-img", "snapshot", "-a", "one", cp)
			s1 := filepath.Join(dir, "s1.raw")
			os.WriteFile(s1, state1, 0o644)
			qemuCompare(t, cp, s1)

			img, err = Open(p, Options{Writable: true})
			if err != nil {
				t.Fatal(err)
			}
			if err := img.ApplySnapshot("two"); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(wReadAll(t, img), state2) {
				t.Fatal("apply two: content differs")
			}
			write(10)
			if err := img.DeleteSnapshot("two"); err != nil {
				t.Fatal(err)
			}
			if err := img.ApplySnapshot("one"); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(wReadAll(t, img), state1) {
				t.Fatal("apply one: content differs")
			}
			if err := img.DeleteSnapshot("1"); err != nil { // by ID
				t.Fatal(err)
			}
			if err := img.DeleteSnapshot("one"); !errors.Is(err, ErrSnapshotNotFound) {
				t.Fatalf("deleting a deleted snapshot: %v", err)
			}
			write(10)
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			qemuCheckClean(t, p)
		})
	}
}

func SizeStringForTest(n int64) string { return qemusize.String(n) }

func TestResize(t *testing.T) {
	testutil.NeedTool(t, "qemu-img")
	dir := t.TempDir()
	p := filepath.Join(dir, "r.qcow2")
	// 512-byte clusters: an L2 table maps 32 KiB, so growing to 1 MiB
	// moves the L1 table.
	if err := Create(p, CreateOptions{Size: 64 << 10, ClusterSize: 512}); err != nil {
		t.Fatal(err)
	}
	img, err := Open(p, Options{Writable: true})
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("resize!"), 5000)
	if _, err := img.WriteAt(data, 1000); err != nil {
		t.Fatal(err)
	}
	if err := img.Resize(1<<20, false); err != nil {
		t.Fatal(err)
	}
	if _, err := img.WriteAt(data, 900000); err != nil {
		t.Fatal(err)
	}
	if err := img.Resize(512<<10, true); !errors.Is(err, ErrShrinkInUse) {
		t.Fatalf("shrink over data: %v", err)
	}
	if err := img.Discard(800<<10, 1<<20-800<<10); err != nil {
		t.Fatal(err)
	}
	if err := img.Resize(512<<10, false); err == nil {
		t.Fatal("shrink without the option succeeded")
	}
	if err := img.Resize(512<<10, true); err != nil {
		t.Fatal(err)
	}
	got := wReadAll(t, img)
	if !bytes.Equal(got[1000:1000+len(data)], data) {
		t.Fatal("data lost by resizing")
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	qemuCheckClean(t, p)
	out := string(testutil.Run(t, "qemu-img", "info", p))
	if !strings.Contains(out, "virtual size: 512 KiB") {
		t.Fatalf("qemu-img info after resize:\n%s", out)
	}
}
