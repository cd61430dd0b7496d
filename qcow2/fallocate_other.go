//go:build !linux

package qcow2

import (
	"errors"
	"os"
)

// fallocate and punchHole are not implemented outside Linux: callers
// write zeros instead.
func fallocate(*os.File, int64) error { return errors.ErrUnsupported }

func punchHole(*os.File, int64, int64) error { return errors.ErrUnsupported }
