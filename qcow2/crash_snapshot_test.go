package qcow2

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/imgtool/imgtool/internal/testutil"
)

// TestCrashSnapshotResize cuts the power at every sampled write of
// internal snapshot create, apply and delete and of resize (growing the L1
// table, then shrinking back), and requires what every crash test does:
// qemu-img check finds at most leaks, and flushed guest data survives.
func TestCrashSnapshotResize(t *testing.T) {
	testutil.NeedTool(t, "qemu-img")
	fill := func(n int64) func(img *Image, ref []byte, rng *rand.Rand) error {
		return func(img *Image, ref []byte, rng *rand.Rand) error {
			for off := int64(0); off < n; off += 32 << 10 {
				if err := writeRef(img, ref, nil, off, randBytes(rng, min(32<<10, n-off))); err != nil {
					return err
				}
			}
			return img.Flush()
		}
	}
	// scatter overwrites a few ranges of the first n bytes: after a
	// snapshot these copy shared clusters.
	scatter := func(img *Image, ref []byte, dirty *dirtySet, rng *rand.Rand, n int64) error {
		for range 4 {
			off := int64(rng.IntN(int(n - 3000)))
			if err := writeRef(img, ref, dirty, off, randBytes(rng, 1000+int64(rng.IntN(2000)))); err != nil {
				return err
			}
		}
		return nil
	}
	step := func(flushed func(), err error) error {
		if err == nil {
			flushed()
		}
		return err
	}
	workloads := []crashWorkload{
		{
			name:         "snapshot-create-delete",
			copiedWindow: true,
			opts:         CreateOptions{ClusterSize: 512},
			size:         1 << 20,
			setup:        fill(256 << 10),
			run: func(img *Image, ref []byte, dirty *dirtySet, rng *rand.Rand, flushed func()) error {
				if err := step(flushed, img.CreateSnapshot("s1")); err != nil {
					return err
				}
				if err := scatter(img, ref, dirty, rng, 256<<10); err != nil {
					return err
				}
				if err := step(flushed, img.Flush()); err != nil {
					return err
				}
				if err := step(flushed, img.CreateSnapshot("s2")); err != nil {
					return err
				}
				if err := step(flushed, img.DeleteSnapshot("s1")); err != nil {
					return err
				}
				if err := scatter(img, ref, dirty, rng, 256<<10); err != nil {
					return err
				}
				if err := step(flushed, img.Flush()); err != nil {
					return err
				}
				return step(flushed, img.DeleteSnapshot("s2"))
			},
		},
		{
			name:         "snapshot-apply",
			copiedWindow: true,
			opts:         CreateOptions{ClusterSize: 4096, RefcountBits: 8},
			size:         1 << 20,
			setup:        fill(512 << 10),
			run: func(img *Image, ref []byte, dirty *dirtySet, rng *rand.Rand, flushed func()) error {
				if err := step(flushed, img.CreateSnapshot("s")); err != nil {
					return err
				}
				snap := bytes.Clone(ref)
				if err := scatter(img, ref, dirty, rng, 512<<10); err != nil {
					return err
				}
				if err := step(flushed, img.Flush()); err != nil {
					return err
				}
				// Until apply returns, each byte may hold either state.
				dirty.add(0, int64(len(ref)))
				copy(ref, snap)
				if err := step(flushed, img.ApplySnapshot("s")); err != nil {
					return err
				}
				return step(flushed, img.DeleteSnapshot("s"))
			},
		},
		{
			name:  "resize-grow-shrink",
			opts:  CreateOptions{ClusterSize: 512},
			size:  1 << 20,
			setup: fill(128 << 10),
			run: func(img *Image, ref []byte, dirty *dirtySet, rng *rand.Rand, flushed func()) error {
				// 512-byte clusters: an L1 entry maps 32 KiB, so 1 MiB
				// has a 256-byte L1 and 64 MiB needs 16 clusters of it:
				// the table moves.
				if err := step(flushed, img.Resize(64<<20, false)); err != nil {
					return err
				}
				// Data past the old end, which the shrink below cuts.
				if _, err := img.WriteAt(randBytes(rng, 5000), 40<<20); err != nil {
					return err
				}
				if err := scatter(img, ref, dirty, rng, 1<<20); err != nil {
					return err
				}
				if err := step(flushed, img.Flush()); err != nil {
					return err
				}
				if err := img.Discard(1<<20, 63<<20); err != nil {
					return err
				}
				return step(flushed, img.Resize(1<<20, true))
			},
		},
	}
	for wi, wl := range workloads {
		t.Run(wl.name, func(t *testing.T) {
			t.Parallel()
			runCrash(t, wl, uint64(100+wi))
		})
	}
}

func TestHarmlessCopied(t *testing.T) {
	const leak = "Leaked cluster 512 refcount=2 reference=1\n"
	for _, tc := range []struct {
		out  string
		want bool
	}{
		{"ERROR OFLAG_COPIED data cluster: l2_entry=8000000000040000 refcount=2\n" + leak, true},
		{"ERROR OFLAG_COPIED L2 cluster: l1_index=7 l1_entry=8000000000040000 refcount=2\n" + leak, true},
		{"ERROR OFLAG_COPIED data cluster: l2_entry=40000 refcount=1\n", true},
		// Shared by a committed snapshot, yet COPIED: a write would
		// change the snapshot.
		{"ERROR OFLAG_COPIED data cluster: l2_entry=8000000000040000 refcount=2\n", false},
		{"ERROR cluster 512 refcount=1 reference=2\n", false},
	} {
		if got := harmlessCopied(tc.out, 9); got != tc.want {
			t.Errorf("harmlessCopied(%q) = %v, want %v", tc.out, got, tc.want)
		}
	}
}
