package qcow2

import (
	"os"

	"golang.org/x/sys/unix"
)

// fallocate allocates n bytes of f from offset 0 (mode 0: blocks are
// reserved and read as zeros). It fails where the filesystem can't.
func fallocate(f *os.File, n int64) error {
	if n == 0 {
		return nil
	}
	return unix.Fallocate(int(f.Fd()), 0, 0, n)
}
