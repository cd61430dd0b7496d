package vmimage_test

import (
	"fmt"

	"github.com/imgtool/imgtool/overlay/vmimage"
)

// A level's layer is a fixed tar header, the qcow2 file, padding and the
// end-of-archive, so the file sits at byte 512 of the blob and can be
// read by HTTP range requests.
func ExampleHeader() {
	h, err := vmimage.Header("web", 200704)
	if err != nil {
		panic(err)
	}
	size, err := vmimage.ParseHeader(h[:], "web")
	fmt.Println(vmimage.Title("web"), size, err)
	fmt.Println("file at", vmimage.HeaderSize, "blob size", vmimage.BlobSize(200704))
	// Output:
	// disk/web.qcow2 200704 <nil>
	// file at 512 blob size 202240
}
