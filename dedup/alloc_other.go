//go:build !unix

package dedup

import "os"

// allocated returns the size of the file at path (the allocated size is
// not known here), or 0 when it cannot be read.
func allocated(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}
