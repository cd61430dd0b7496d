package qcow2

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/imgtool/imgtool/internal/testutil"
)

// rbOwnBytes returns the guest bytes the image at path allocates itself
// (data, compressed and zero clusters), not counting its backing chain.
func rbOwnBytes(t *testing.T, path string) int64 {
	t.Helper()
	img, err := Open(path, Options{NoBacking: true, ForceShare: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	var n int64
	img.WalkExtents(0, img.Size(), func(e Extent) error {
		if e.Depth == 0 && e.Kind != KindUnallocated && !(e.Kind == KindZero && img.Header().BackingFile == "") {
			n += e.Length
		}
		return nil
	})
	return n
}

func TestRebaseAgainstQemu(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	cases := []struct {
		name, topOpts string
		opts          RebaseOptions
		qemuArgs      []string
	}{
		{name: "onto-base", opts: RebaseOptions{Backing: "base.qcow2", BackingFormat: FormatQcow2}, qemuArgs: []string{"-b", "base.qcow2", "-F", "qcow2"}},
		{name: "onto-base-probe", topOpts: "extended_l2=on", opts: RebaseOptions{Backing: "base.qcow2"}, qemuArgs: []string{"-b", "base.qcow2", "-F", "qcow2"}},
		{name: "flatten", opts: RebaseOptions{}, qemuArgs: []string{"-b", ""}},
		{name: "flatten-v2", topOpts: "compat=0.10", opts: RebaseOptions{}, qemuArgs: []string{"-b", ""}},
		{name: "onto-other", opts: RebaseOptions{Backing: "other.qcow2", BackingFormat: FormatQcow2}, qemuArgs: []string{"-b", "other.qcow2", "-F", "qcow2"}},
		{name: "compressed", opts: RebaseOptions{Backing: "base.qcow2", BackingFormat: FormatQcow2, Compress: true}, qemuArgs: []string{"-b", "base.qcow2", "-F", "qcow2"}}, // qemu-img < 8.2 has no rebase -c
		{name: "unsafe", opts: RebaseOptions{Backing: "base.qcow2", BackingFormat: FormatQcow2, Unsafe: true}, qemuArgs: []string{"-u", "-b", "base.qcow2", "-F", "qcow2"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			cmChain(t, dir, "qcow2", c.topOpts)
			other := filepath.Join(dir, "other.qcow2")
			testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", other, "8M")
			qio(t, other, "qcow2", "write -P 1 0 1M", "write -P 3 1M 1M", "write -P 8 3M 2M")
			before := cmCopy(t, dir)
			ours, theirs := cmCopy(t, dir), cmCopy(t, dir)
			testutil.Run(t, "qemu-img", append(append([]string{"rebase", "-q"}, c.qemuArgs...), filepath.Join(theirs, "top.qcow2"))...)
			if err := Rebase(context.Background(), filepath.Join(ours, "top.qcow2"), c.opts); err != nil {
				t.Fatal(err)
			}
			cmSame(t, ours, theirs, "top.qcow2")
			if !c.opts.Unsafe {
				cmSame(t, ours, before, "top.qcow2")
			}
			top, err := Open(filepath.Join(ours, "top.qcow2"), Options{NoBacking: true, ForceShare: true})
			if err != nil {
				t.Fatal(err)
			}
			if top.Header().BackingFile != c.opts.Backing {
				t.Errorf("backing file %q, want %q", top.Header().BackingFile, c.opts.Backing)
			}
			if c.opts.Backing != "" && top.BackingFormat() != "qcow2" {
				t.Errorf("backing format %q", top.BackingFormat())
			}
			if c.opts.Compress {
				comp := false
				top.WalkExtents(0, top.Size(), func(e Extent) error {
					comp = comp || e.Kind == KindCompressed
					return nil
				})
				if !comp {
					t.Error("rebase -c stored no compressed cluster")
				}
				a, _ := os.Stat(filepath.Join(ours, "top.qcow2"))
				b, _ := os.Stat(filepath.Join(theirs, "top.qcow2"))
				t.Logf("file size: imgtool -c %d, qemu-img %d", a.Size(), b.Size())
				if a.Size() >= b.Size() {
					t.Errorf("compressed rebase output is %d bytes, uncompressed %d", a.Size(), b.Size())
				}
			}
			top.Close()
			o, q := rbOwnBytes(t, filepath.Join(ours, "top.qcow2")), rbOwnBytes(t, filepath.Join(theirs, "top.qcow2"))
			t.Logf("delta: imgtool %d bytes, qemu-img %d", o, q)
			if o > q {
				t.Errorf("imgtool's delta is %d bytes, qemu-img's %d", o, q)
			}
		})
	}
}

// TestRebaseUnsafeBackingFormat: rebase -u without a format probes the new
// backing file, so the chain opens again, and refuses when it can't.
func TestRebaseUnsafeBackingFormat(t *testing.T) {
	dir := t.TempDir()
	top := filepath.Join(dir, "top.qcow2")
	if err := Create(top, CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	raw := filepath.Join(dir, "base.raw")
	if err := Create(raw, CreateOptions{Format: FormatRaw, Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := Rebase(ctx, top, RebaseOptions{Backing: "base.raw", Unsafe: true}); err != nil {
		t.Fatal(err)
	}
	img, err := Open(top, Options{})
	if err != nil {
		t.Fatalf("the rebased chain does not open: %v", err)
	}
	if img.BackingFormat() != "raw" {
		t.Errorf("backing format %q, want the probed raw", img.BackingFormat())
	}
	img.Close()
	err = Rebase(ctx, top, RebaseOptions{Backing: "missing.qcow2", Unsafe: true})
	if !errors.Is(err, ErrBackingFormatNeeded) {
		t.Fatalf("rebase -u onto a missing file without a format: %v, want ErrBackingFormatNeeded", err)
	}
	img, err = Open(top, Options{NoBacking: true})
	if err != nil {
		t.Fatal(err)
	}
	if img.BackingPath() == "" || filepath.Base(img.BackingPath()) != "base.raw" {
		t.Errorf("a refused rebase changed the backing file to %q", img.BackingPath())
	}
	img.Close()
	// With the format given, a missing file is the user's business.
	if err := Rebase(ctx, top, RebaseOptions{Backing: "missing.qcow2", BackingFormat: FormatQcow2, Unsafe: true}); err != nil {
		t.Errorf("rebase -u -F qcow2 onto a missing file: %v", err)
	}
}
