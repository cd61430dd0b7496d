package qcow2

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/imgtool/imgtool/internal/testutil"
)

// TestWriteAfterQemuSnapshot writes into clusters and L2 tables shared
// with an internal snapshot qemu-img took: both must be copied, and the
// snapshot must keep its content.
func TestWriteAfterQemuSnapshot(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	for _, o := range []string{"cluster_size=4096", "cluster_size=65536,extended_l2=on", "compat=0.10,cluster_size=4096"} {
		t.Run(o, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "s.qcow2")
			size := int64(4 << 20)
			qemuImage(t, p, o, "4M", "write -P 0x11 0 3M")
			testutil.Run(t, "qemu-img", "snapshot", "-c", "s1", p)
			snapRaw := filepath.Join(dir, "snap.raw")
			testutil.Run(t, "qemu-img", "convert", "-O", "raw", p, snapRaw)
			ref, _ := os.ReadFile(snapRaw)
			img, err := Open(p, Options{Writable: true})
			if err != nil {
				t.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(5, 6))
			for range 60 {
				off := rng.Int64N(size - 70000)
				b := randBytes(rng, 1+rng.Int64N(70000))
				if _, err := img.WriteAt(b, off); err != nil {
					t.Fatal(err)
				}
				copy(ref[off:], b)
			}
			if err := img.WriteZeroes(1<<20, 256<<10); err != nil {
				t.Fatal(err)
			}
			clear(ref[1<<20 : 1<<20+256<<10])
			closeAndCompare(t, img, p, ref)
			// The snapshot still holds the old content.
			testutil.Run(t, "qemu-img", "snapshot", "-a", "s1", p)
			qemuCompare(t, p, snapRaw)
		})
	}
}

// TestConcurrentWrites writes disjoint ranges from many goroutines while
// others read; run with -race.
func TestConcurrentWrites(t *testing.T) {
	testutil.NeedTool(t, "qemu-img")
	for _, extL2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("extl2=%v", extL2), func(t *testing.T) { concurrentWrites(t, extL2) })
	}
}

func concurrentWrites(t *testing.T, extL2 bool) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	qemuImage(t, base, "cluster_size=4096", "8M", "write -P 0x55 0 8M")
	p := filepath.Join(dir, "top.qcow2")
	cs := int64(4096)
	if extL2 {
		cs = 16 << 10
	}
	if err := Create(p, CreateOptions{BackingFile: "base.qcow2", BackingFormat: FormatQcow2, ClusterSize: cs, ExtendedL2: extL2}); err != nil {
		t.Fatal(err)
	}
	img, err := Open(p, Options{Writable: true})
	if err != nil {
		t.Fatal(err)
	}
	size := img.Size()
	ref := bytes.Repeat([]byte{0x55}, int(size))
	const workers = 8
	var wg sync.WaitGroup
	errs := make(chan error, workers*2)
	for w := range workers {
		wg.Add(2)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			stripe := size / workers
			for range 150 {
				off := int64(w)*stripe + rng.Int64N(stripe-9000)
				n := 1 + rng.Int64N(9000)
				b := randBytes(rng, n)
				if _, err := img.WriteAt(b, off); err != nil {
					errs <- err
					return
				}
				copy(ref[off:], b) // stripes are disjoint
				if rng.IntN(20) == 0 {
					if err := img.Flush(); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
		go func() {
			defer wg.Done()
			buf := make([]byte, 64<<10)
			rng := rand.New(rand.NewPCG(uint64(w), 2))
			for range 100 {
				if _, err := img.ReadAt(buf, rng.Int64N(size-int64(len(buf)))); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	got := make([]byte, size)
	if _, err := img.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, ref) {
		t.Fatal("content differs after concurrent writes")
	}
	closeAndCompare(t, img, p, ref)
}
