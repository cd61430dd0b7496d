//go:build !linux

package qcow2

import (
	"errors"
	"os"
)

// fallocate is not available here; callers write zeros instead.
func fallocate(*os.File, int64) error { return errors.ErrUnsupported }
