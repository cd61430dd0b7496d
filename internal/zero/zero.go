// Package zero tells whether a buffer holds only zero bytes, the test
// behind hole detection in qcow2 rebase and convert, dedup scan and
// rebase, layer extraction and the ext4 writer.
package zero

import "bytes"

// page is compared against; it is never written.
var page [64 << 10]byte

// Is reports whether every byte of b is zero (true for an empty b). It
// compares against a zero page with bytes.Equal, which runs at memory
// speed.
func Is(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(page))
		if !bytes.Equal(b[:n], page[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}
