//go:build !unix

package qcow2

import "os"

// allocatedSize is unknown on this platform.
func allocatedSize(f *os.File) (int64, bool) { return 0, false }
