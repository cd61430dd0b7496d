package qcow2_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/imgtool/imgtool/qcow2"
)

// Convert a raw file to a compressed qcow2 image, check that both read
// the same, and measure what a qcow2 copy of it needs.
func ExampleConvert() {
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	raw := filepath.Join(dir, "disk.raw")
	data := make([]byte, 4<<20)
	copy(data[1<<20:], "hello, qcow2")
	os.WriteFile(raw, data, 0o644) // not sparse: every cluster counts as data

	src, err := qcow2.Open(raw, qcow2.Options{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer src.Close()
	dst := filepath.Join(dir, "disk.qcow2")
	err = qcow2.Convert(context.Background(), src, dst, qcow2.ConvertOptions{
		Compress: true,
		Create:   qcow2.CreateOptions{CompressionType: "zstd"},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	out, err := qcow2.Open(dst, qcow2.Options{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer out.Close()
	res, err := qcow2.Compare(context.Background(), src, out, qcow2.CompareOptions{})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(res.Message())
	m, _ := qcow2.Measure(context.Background(), src, 0, qcow2.CreateOptions{Format: qcow2.FormatQcow2})
	m.WriteHuman(os.Stdout)
	// Output:
	// Images are identical.
	// required size: 4521984
	// fully allocated size: 4521984
}
