package qcow2

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// evictPageCache writes back and drops the cached pages of the file at
// path.
func evictPageCache(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Logf("fadvise %s: %v", path, err)
	}
}
