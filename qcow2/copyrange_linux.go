package qcow2

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// copyFileRange copies n bytes at soff of src to doff of dst with
// copy_file_range, in the kernel (a reflink or server-side copy where
// the file system has one). It returns how many bytes were copied: n,
// fewer when src ends early, or 0 with a nil error when the kernel can't
// copy between these files (EXDEV, ENOSYS, EINVAL, EOPNOTSUPP...), so
// that the caller reads and writes instead.
func copyFileRange(dst, src *os.File, doff, soff, n int64) (int64, error) {
	sc, err := src.SyscallConn()
	if err != nil {
		return 0, nil
	}
	dc, err := dst.SyscallConn()
	if err != nil {
		return 0, nil
	}
	var done int64
	var cerr error
	ctlErr := sc.Control(func(sfd uintptr) {
		if err := dc.Control(func(dfd uintptr) {
			for done < n {
				so, do := soff+done, doff+done
				k, err := unix.CopyFileRange(int(sfd), &so, int(dfd), &do, int(min(n-done, 1<<30)), 0)
				if errors.Is(err, unix.EINTR) {
					continue
				}
				if err != nil {
					if done == 0 && unsupportedCopy(err) {
						return
					}
					cerr = fmt.Errorf("copying %s at %#x to %s: %w", src.Name(), so, dst.Name(), err)
					return
				}
				if k == 0 {
					return // end of src
				}
				done += int64(k)
			}
		}); err != nil {
			cerr = err
		}
	})
	if cerr == nil {
		cerr = ctlErr
	}
	return done, cerr
}

func unsupportedCopy(err error) bool {
	return errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) ||
		errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EBADF) || errors.Is(err, unix.EPERM)
}
