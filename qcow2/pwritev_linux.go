package qcow2

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// pwritev writes bufs back to back at off with vectored writes.
func pwritev(f *os.File, bufs [][]byte, off int64) error {
	if len(bufs) == 1 {
		return writeAll(f, bufs[0], off)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	for len(bufs) > 0 {
		var n int
		var werr error
		if err := rc.Write(func(fd uintptr) bool {
			n, werr = unix.Pwritev(int(fd), bufs, off)
			return werr != unix.EAGAIN
		}); err != nil {
			return err
		}
		if werr == unix.EINTR {
			continue
		}
		if werr != nil {
			return fmt.Errorf("writing %s at %#x: %w", f.Name(), off, werr)
		}
		if n == 0 {
			return fmt.Errorf("writing %s at %#x: no progress", f.Name(), off)
		}
		off += int64(n)
		for n > 0 {
			if n >= len(bufs[0]) {
				n -= len(bufs[0])
				bufs = bufs[1:]
				continue
			}
			bufs[0] = bufs[0][n:]
			n = 0
		}
	}
	return nil
}
