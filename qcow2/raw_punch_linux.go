package qcow2

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// punchHole deallocates n bytes at off of f, keeping its size; the range
// reads as zeros afterwards. It returns
// errors.ErrUnsupported where the file system cannot.
func punchHole(f *os.File, off, n int64) error {
	for {
		err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOSYS), errors.Is(err, unix.ENODEV):
			return errors.ErrUnsupported
		}
		return err
	}
}
