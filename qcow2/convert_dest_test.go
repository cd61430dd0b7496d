package qcow2

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/imgtool/imgtool/internal/atomicfile"
	"github.com/imgtool/imgtool/internal/imagelock"
	"github.com/imgtool/imgtool/internal/testutil"
)

// wantWriteLockError fails t unless err is qemu-img's write lock error.
func wantWriteLockError(t *testing.T, err error) {
	t.Helper()
	var le *atomicfile.LockError
	if !errors.As(err, &le) || !errors.Is(err, imagelock.ErrLocked) {
		t.Fatalf("err = %v, want a lock error", err)
	}
	if !strings.Contains(err.Error(), `"write" lock`) || !strings.Contains(err.Error(), "Failed to get") {
		t.Errorf("message %q, want qemu-img's Failed to get \"write\" lock", err)
	}
}

// guestBytes reads an image's guest content with qemu-img.
func guestBytes(t *testing.T, path string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "guest.raw")
	testutil.Run(t, "qemu-img", "convert", "-U", "-O", "raw", path, out)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestConvertOntoOwnBacking: two VMs on one base; converting vm1 onto the
// base is refused with qemu-img's lock error (the source chain is open
// with read locks before the destination is locked), for qcow2 and raw
// output, and vm2 reads as before.
func TestConvertOntoOwnBacking(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	web := filepath.Join(dir, "web.qcow2")
	vm1 := filepath.Join(dir, "vm1.qcow2")
	vm2 := filepath.Join(dir, "vm2.qcow2")
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", web, "4M")
	testutil.Run(t, "qemu-io", "-c", "write -P 0x11 0 1M", web)
	for _, vm := range []string{vm1, vm2} {
		testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "web.qcow2", "-F", "qcow2", vm, "4M")
	}
	testutil.Run(t, "qemu-io", "-c", "write -P 0x66 512k 1M", vm1) // vm1's private data
	testutil.Run(t, "qemu-io", "-c", "write -P 0x22 2M 64k", vm2)
	want := guestBytes(t, vm2)
	before, _ := os.Stat(web)
	for _, f := range []Format{FormatQcow2, FormatRaw} {
		src, err := Open(vm1, Options{}) // with read locks, as the CLI opens it
		if err != nil {
			t.Fatal(err)
		}
		err = Convert(context.Background(), src, web, ConvertOptions{Create: CreateOptions{Format: f}})
		src.Close()
		wantWriteLockError(t, err)
		if !strings.Contains(err.Error(), `Failed to get "write" lock`) {
			t.Errorf("message %q, want qemu-img's words", err)
		}
	}
	after, _ := os.Stat(web)
	if !os.SameFile(before, after) || before.ModTime() != after.ModTime() {
		t.Error("the base image was replaced or written")
	}
	if got := guestBytes(t, vm2); !bytes.Equal(got, want) {
		t.Error("vm2 reads differently after the refused convert")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 3 {
		t.Errorf("directory holds %d entries, want 3", len(ents))
	}
	// qemu-img refuses the same command with the same words.
	out, err := exec.Command("qemu-img", "convert", "-O", "qcow2", vm1, web).CombinedOutput()
	if err == nil || !strings.Contains(string(out), `Failed to get "write" lock`) {
		t.Errorf("qemu-img convert onto the backing file: %v %s (the oracle no longer refuses?)", err, out)
	}
}

// TestConvertHeldDestination: a destination a running qemu-io holds is
// refused for -O qcow2 and -O raw, and stays the same file. (qemu-img 7.2
// refuses the qcow2 case; onto a held raw file it writes, which issue 13
// asks imgtool not to do.)
func TestConvertHeldDestination(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	srcPath := writeRawFile(t, dir, "src.raw", mixedData(7, 2<<20))
	for _, f := range []Format{FormatQcow2, FormatRaw} {
		dst := filepath.Join(dir, "held-"+string(f))
		testutil.Run(t, "qemu-img", "create", "-q", "-f", string(f), dst, "1M")
		release := testutil.HoldWithQemuIOFormat(t, dst, string(f))
		before, _ := os.Stat(dst)
		src := cvOpen(t, srcPath)
		err := Convert(context.Background(), src, dst, ConvertOptions{Create: CreateOptions{Format: f}})
		src.Close()
		wantWriteLockError(t, err)
		after, _ := os.Stat(dst)
		if !os.SameFile(before, after) {
			t.Errorf("%s: the held destination was replaced", f)
		}
		release()
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 3 {
		t.Errorf("directory holds %d entries, want 3", len(ents))
	}
}

// TestConvertModeFollowsUmask: under umask 077 the output is 0600, as
// qemu-img makes it; a replaced destination keeps its mode, and a symlink
// is written through.
func TestConvertModeFollowsUmask(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	dir := t.TempDir()
	srcPath := writeRawFile(t, dir, "src.raw", mixedData(3, 1<<20))
	for _, f := range []Format{FormatQcow2, FormatRaw} {
		dst := filepath.Join(dir, "out-"+string(f))
		src := cvOpen(t, srcPath)
		if err := Convert(context.Background(), src, dst, ConvertOptions{Create: CreateOptions{Format: f}}); err != nil {
			t.Fatal(err)
		}
		if fi, _ := os.Stat(dst); fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v under umask 077, want 0600", f, fi.Mode().Perm())
		}
		os.Chmod(dst, 0o640)
		link := dst + ".link"
		os.Symlink(filepath.Base(dst), link)
		if err := Convert(context.Background(), src, link, ConvertOptions{Create: CreateOptions{Format: f}}); err != nil {
			t.Fatal(err)
		}
		src.Close()
		if fi, _ := os.Lstat(link); fi.Mode()&os.ModeSymlink == 0 {
			t.Errorf("%s: the symlink was replaced by a file", f)
		}
		if fi, _ := os.Stat(dst); fi.Mode().Perm() != 0o640 {
			t.Errorf("%s: replaced output mode %v, want the old 0640", f, fi.Mode().Perm())
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 5 {
		t.Errorf("directory holds %d entries, want 5 (no temp files)", len(ents))
	}
}
