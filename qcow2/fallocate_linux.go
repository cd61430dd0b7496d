package qcow2

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// fallocate reserves the first n bytes of f (mode 0: the blocks are
// allocated and read as zeros). It fails where the filesystem can't.
func fallocate(f *os.File, n int64) error {
	if n == 0 {
		return nil
	}
	return retryEINTR(func() error { return unix.Fallocate(int(f.Fd()), 0, 0, n) })
}

// punchHole deallocates n bytes at off of f, keeping its size; the range
// reads as zeros afterwards. It returns errors.ErrUnsupported where the
// file system cannot.
func punchHole(f *os.File, off, n int64) error {
	err := retryEINTR(func() error {
		return unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	})
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.ENODEV) {
		return errors.ErrUnsupported
	}
	return err
}

func retryEINTR(call func() error) error {
	for {
		if err := call(); !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}
