package qcow2_test

import (
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/imgtool/imgtool/qcow2"
)

// Create an image over a backing file, write into it, and check it.
func ExampleCreate() {
	dir, err := os.MkdirTemp("", "example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	base := filepath.Join(dir, "base.qcow2")
	if err := qcow2.Create(base, qcow2.CreateOptions{Size: 1 << 20}); err != nil {
		log.Fatal(err)
	}
	top := filepath.Join(dir, "top.qcow2")
	if err := qcow2.Create(top, qcow2.CreateOptions{BackingFile: "base.qcow2", ExtendedL2: true}); err != nil {
		log.Fatal(err)
	}
	img, err := qcow2.Open(top, qcow2.Options{Writable: true})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := img.WriteAt([]byte("hello, qcow2"), 4096); err != nil {
		log.Fatal(err)
	}
	if err := img.Close(); err != nil { // flushes
		log.Fatal(err)
	}
	res, err := qcow2.CheckFile(top, qcow2.RepairNone, qcow2.Options{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("exit code:", res.ExitCode(), "allocated clusters:", res.AllocatedClusters)
	// Output: exit code: 0 allocated clusters: 1
}
