//go:build unix

package qcow2

import (
	"os"
	"syscall"
)

// allocatedSize returns the bytes the file occupies on disk.
func allocatedSize(f *os.File) (int64, bool) {
	fi, err := f.Stat()
	if err != nil {
		return 0, false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return int64(st.Blocks) * 512, true
}
