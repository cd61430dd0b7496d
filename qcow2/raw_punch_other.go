//go:build !linux

package qcow2

import (
	"errors"
	"os"
)

// punchHole is not implemented outside Linux: callers write zeros.
func punchHole(f *os.File, off, n int64) error { return errors.ErrUnsupported }
