//go:build unix

package dedup

import (
	"os"
	"syscall"
)

// allocated returns the bytes the file at path occupies on disk, or its
// size when the file system does not say, or 0 when it cannot be read.
func allocated(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int64(st.Blocks) * 512
	}
	return fi.Size()
}
