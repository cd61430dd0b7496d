package dedup_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/imgtool/imgtool/dedup"
)

// Scan two raw disk images made of 64 KiB chunks: a has two equal chunks
// of "a" and four equal chunks of "same", b two of "b", the same four and
// two chunks of zeros.
func ExampleScan() {
	dir, err := os.MkdirTemp("", "dedup-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	shared := bytes.Repeat([]byte("same"), 64<<10) // 256 KiB
	a := append(bytes.Repeat([]byte{'a'}, 128<<10), shared...)
	b := append(bytes.Repeat([]byte{'b'}, 128<<10), shared...)
	b = append(b, make([]byte, 128<<10)...) // and 128 KiB of zeros
	for name, data := range map[string][]byte{"a.raw": a, "b.raw": b} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			panic(err)
		}
	}
	rep, err := dedup.Scan(context.Background(), []string{filepath.Join(dir, "a.raw"), filepath.Join(dir, "b.raw")}, dedup.ScanOptions{})
	if err != nil {
		panic(err)
	}
	r := rep.Images
	fmt.Printf("total %d KiB: zero %d KiB, unique %d KiB, duplicate %d KiB (%d inside images, %d across)\n",
		r.TotalBytes>>10, r.ZeroBytes>>10, r.UniqueBytes>>10, r.DuplicateBytes>>10, r.InternalDuplicateBytes>>10, r.CrossDuplicateBytes>>10)
	// Output:
	// total 896 KiB: zero 128 KiB, unique 192 KiB, duplicate 576 KiB (512 inside images, 64 across)
}
