//go:build !linux

package qcow2

import "os"

// pwritev writes bufs back to back at off.
func pwritev(f *os.File, bufs [][]byte, off int64) error {
	for _, b := range bufs {
		if err := writeAll(f, b, off); err != nil {
			return err
		}
		off += int64(len(b))
	}
	return nil
}
