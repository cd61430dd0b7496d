package vmchain_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/imgtool/imgtool/overlay/vmchain"
	"github.com/imgtool/imgtool/qcow2"
)

// Build a chain base -> db with one VM on db, write into the VM, and list
// what depends on what.
func ExampleChainDir() {
	ctx := context.Background()
	tmp, _ := os.MkdirTemp("", "chain-example-")
	defer os.RemoveAll(tmp)
	// A 4 MiB raw "OS install" with 64 KiB of data.
	base := filepath.Join(tmp, "os.raw")
	os.WriteFile(base, make([]byte, 4<<20), 0o644)
	f, _ := os.OpenFile(base, os.O_RDWR, 0)
	f.WriteAt(make([]byte, 64<<10), 0)
	f.WriteAt([]byte("boot sector"), 0)
	f.Close()

	c, err := vmchain.InitChain(ctx, filepath.Join(tmp, "chain"), base, vmchain.InitChainOptions{})
	if err != nil {
		log.Fatal(err)
	}
	if err := c.AddLevel(ctx, "db", "base", vmchain.AddLevelOptions{}); err != nil {
		log.Fatal(err)
	}
	if err := c.AddVM(ctx, "vm1", "db"); err != nil {
		log.Fatal(err)
	}
	vm, err := c.Open(ctx, "vm1", qcow2.Options{Writable: true})
	if err != nil {
		log.Fatal(err)
	}
	vm.WriteAt([]byte("guest data"), 1<<20)
	vm.Close()
	// db has a dependent now: it is read-only.
	if _, err := c.Open(ctx, "db", qcow2.Options{Writable: true}); err != nil {
		fmt.Println("db:", err)
	}
	imgs, err := c.Images(ctx)
	if err != nil {
		log.Fatal(err)
	}
	for _, ci := range imgs {
		fmt.Printf("%-4s %-5s parent=%-4q private=%d shared=%d read-only=%v\n", ci.Name, ci.Kind, ci.Parent, ci.PrivateBytes, ci.SharedBytes, ci.ReadOnly)
	}
	// Output:
	// db: vmchain: chain level has dependents and is read-only: db (used by vm1)
	// base level parent=""   private=65536 shared=0 read-only=true
	// db   level parent="base" private=0 shared=65536 read-only=true
	// vm1  vm    parent="db" private=65536 shared=65536 read-only=false
}
