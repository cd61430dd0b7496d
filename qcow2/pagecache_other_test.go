//go:build !linux

package qcow2

import "testing"

// evictPageCache does nothing where fadvise is not available.
func evictPageCache(*testing.T, string) {}
