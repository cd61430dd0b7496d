package qcow2_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/imgtool/imgtool/qcow2"
)

// Open a chain (top -> mid -> base, relative backing names), read guest
// bytes and see which image stores each range.
func Example() {
	img, err := qcow2.Open("../testdata/chain/top.qcow2", qcow2.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer img.Close()
	fmt.Println("size", img.Size(), "backing", img.Backing().Path())

	buf := make([]byte, 4)
	if _, err := img.ReadAt(buf, 28<<10); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("bytes at 28 KiB: % x\n", buf)

	ext, err := img.Extents(0, 64<<10)
	if err != nil {
		log.Fatal(err)
	}
	for _, e := range ext {
		fmt.Printf("%6d +%6d %-11s depth %d\n", e.Start, e.Length, e.Kind, e.Depth)
	}
	// Output:
	// size 3145728 backing ../testdata/chain/mid.qcow2
	// bytes at 28 KiB: 70 70 70 70
	//      0 +  4096 zero        depth 0
	//   4096 + 12288 data        depth 2
	//  16384 +  8192 unallocated depth 2
	//  24576 +  4096 data        depth 1
	//  28672 +  8192 data        depth 0
	//  36864 + 28672 unallocated depth 2
}

// Convert a compressed image to a sparse raw file.
func ExampleConvert_raw() {
	img, err := qcow2.Open("../testdata/qcow2/zstd.qcow2", qcow2.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer img.Close()
	dir, err := os.MkdirTemp("", "example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	dst := filepath.Join(dir, "disk.raw")
	if err := qcow2.Convert(context.Background(), img, dst, qcow2.ConvertOptions{Create: qcow2.CreateOptions{Format: qcow2.FormatRaw}}); err != nil {
		log.Fatal(err)
	}
	fi, err := os.Stat(dst)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(fi.Size())
	// Output: 524288
}
