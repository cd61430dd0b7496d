package qcow2

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/imgtool/imgtool/internal/faultfile"
	"github.com/imgtool/imgtool/internal/testutil"
)

// ccCrashSweep runs op on the top image of a fresh copy of the chain in
// dir (file name) for every crash point, writes what the disk could hold after the
// power cut (unsynced writes dropped, kept or a random subset), and
// calls verify on that copy.
func ccCrashSweep(t *testing.T, dir, name string, op func(img *Image, copyDir string) error, verify func(t *testing.T, copyDir string)) {
	t.Helper()
	total := -1
	rng := rand.New(rand.NewPCG(21, 22))
	for n := 1; total < 0 || n <= total+1; n++ {
		cp := cmCopy(t, dir)
		top := filepath.Join(cp, name)
		img, ff := openTee(t, top)
		ff.CrashAfter(n)
		err := op(img, cp)
		img.Close()
		if !ff.Crashed() {
			if err != nil {
				t.Fatalf("crash point %d: %v", n, err)
			}
			total = ff.Writes()
			if n > total {
				break
			}
			continue
		}
		for _, keep := range []faultfile.Keep{faultfile.KeepNone, faultfile.KeepAll, faultfile.KeepRandom} {
			if err := os.WriteFile(top, ff.Image(keep, rng), 0o644); err != nil {
				t.Fatal(err)
			}
			verify(t, cp)
		}
	}
	if total < 0 {
		t.Fatal("the operation never completed")
	}
	t.Logf("%d crash points", total)
}

// ccNoCorruption asserts that qemu-img check finds no corruption (leaks
// are what an interrupted free may leave, as in QEMU).
func ccNoCorruption(t *testing.T, path string) {
	t.Helper()
	_, code, out := runQemuCheck(t, path)
	if code != 0 && code != 3 {
		t.Fatalf("qemu-img check %s: exit %d\n%s", path, code, out)
	}
}

// ccChain builds the qcow2 chain base <- mid <- top (cmChain, with
// create options opts) in a temp dir and returns it with want, a raw
// copy of what top reads.
func ccChain(t *testing.T, opts string) (dir, want string) {
	t.Helper()
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	dir = t.TempDir()
	cmChain(t, dir, "qcow2", opts)
	want = filepath.Join(t.TempDir(), "want.raw")
	testutil.Run(t, "qemu-img", "convert", "-O", "raw", filepath.Join(dir, "top.qcow2"), want)
	return dir, want
}

// TestCrashCommitEmptyTop crashes the second phase of a commit (emptying
// the top, once the base holds its data) at every write: the top never
// shows corruption and always reads as before.
func TestCrashCommitEmptyTop(t *testing.T) {
	dir, want := ccChain(t, "cluster_size=4k")
	// Phase 1: the base (mid) gets the data.
	if err := Commit(context.Background(), filepath.Join(dir, "top.qcow2"), CommitOptions{Drop: true}); err != nil {
		t.Fatal(err)
	}
	ccCrashSweep(t, dir, "top.qcow2", func(img *Image, _ string) error { return img.w.makeEmpty(context.Background()) },
		func(t *testing.T, cp string) {
			top := filepath.Join(cp, "top.qcow2")
			ccNoCorruption(t, top)
			qemuCompare(t, top, want)
		})
}

// TestCrashRebaseHeader crashes the backing file switch of a rebase at
// every write: the image names the old or the new backing file, never
// garbage, and reads the same either way.
func TestCrashRebaseHeader(t *testing.T) {
	dir, want := ccChain(t, "")
	ctx := context.Background()
	// Copy what differs first (a full safe rebase onto base), then undo
	// only the reference: both references now read the same.
	top := filepath.Join(dir, "top.qcow2")
	if err := Rebase(ctx, top, RebaseOptions{Backing: "base.qcow2", BackingFormat: FormatQcow2}); err != nil {
		t.Fatal(err)
	}
	if err := Rebase(ctx, top, RebaseOptions{Backing: "mid.qcow2", BackingFormat: FormatQcow2, Unsafe: true}); err != nil {
		t.Fatal(err)
	}
	ccCrashSweep(t, dir, "top.qcow2", func(img *Image, _ string) error { return img.w.setBacking("base.qcow2", FormatQcow2) },
		func(t *testing.T, cp string) {
			p := filepath.Join(cp, "top.qcow2")
			ccNoCorruption(t, p)
			img, err := Open(p, Options{NoBacking: true, ForceShare: true})
			if err != nil {
				t.Fatalf("after a crash: %v", err)
			}
			name, format := img.Header().BackingFile, img.BackingFormat()
			img.Close()
			if (name != "mid.qcow2" && name != "base.qcow2") || format != "qcow2" {
				t.Fatalf("after a crash the image names %q (%q)", name, format)
			}
			qemuCompare(t, p, want)
		})
}

// TestCrashCommitBase crashes the first phase of a commit (writing the
// top's data into the base) at every write: the base shows no
// corruption and the top, untouched, reads as before.
func TestCrashCommitBase(t *testing.T) {
	dir, want := ccChain(t, "cluster_size=4k")
	ccCrashSweep(t, dir, "mid.qcow2", func(mid *Image, cp string) error {
		chain, err := Open(filepath.Join(cp, "top.qcow2"), Options{ForceShare: true})
		if err != nil {
			return err
		}
		defer chain.Close()
		if err := copyAbove(context.Background(), chain, 1, qcowTarget{mid}, 1, nil); err != nil {
			return err
		}
		return mid.Flush()
	}, func(t *testing.T, cp string) {
		ccNoCorruption(t, filepath.Join(cp, "mid.qcow2"))
		qemuCompare(t, filepath.Join(cp, "top.qcow2"), want)
	})
}
