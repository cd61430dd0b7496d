package qcow2

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/imgtool/imgtool/internal/atomicfile"
	"github.com/imgtool/imgtool/internal/imagelock"
	"github.com/imgtool/imgtool/internal/testutil"
)

// TestCreateOverwriteHeldImage: create --overwrite onto an image a running
// qemu-io holds is refused with qemu-img's lock error, and the image is
// left as it was.
func TestCreateOverwriteHeldImage(t *testing.T) {
	testutil.NeedTool(t, "qemu-io", "qemu-img")
	path := filepath.Join(t.TempDir(), "held.qcow2")
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", path, "1M")
	testutil.HoldWithQemuIO(t, path)
	before, _ := os.Stat(path)
	err := Create(path, CreateOptions{Size: 2 << 20, Overwrite: true})
	var le *atomicfile.LockError
	if !errors.As(err, &le) || !errors.Is(err, imagelock.ErrLocked) {
		t.Fatalf("Create --overwrite of a held image: %v, want a lock error", err)
	}
	if !strings.Contains(err.Error(), `Failed to get "write" lock`) {
		t.Errorf("message %q", err)
	}
	after, _ := os.Stat(path)
	if !os.SameFile(before, after) {
		t.Error("the held image was replaced")
	}
}

func TestCreateModeFollowsUmask(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	dir := t.TempDir()
	path := filepath.Join(dir, "a.qcow2")
	if err := Create(path, CreateOptions{Size: 1 << 20, Preallocation: PreallocMetadata}); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v under umask 077, want 0600", fi.Mode().Perm())
	}
	os.Chmod(path, 0o640)
	link := filepath.Join(dir, "link.qcow2")
	os.Symlink("a.qcow2", link)
	if err := Create(link, CreateOptions{Size: 2 << 20, Overwrite: true}); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Lstat(link); fi.Mode()&os.ModeSymlink == 0 {
		t.Error("the symlink was replaced by a file")
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o640 {
		t.Errorf("replaced image mode %v, want the old 0640", fi.Mode().Perm())
	}
	img, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if img.Size() != 2<<20 {
		t.Errorf("size %d: the link target was not rewritten", img.Size())
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("directory holds %d entries, want 2", len(ents))
	}
}
