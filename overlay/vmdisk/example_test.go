package vmdisk_test

import (
	"archive/tar"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/imgtool/imgtool/layers"
	"github.com/imgtool/imgtool/overlay/vmdisk"
)

// An image's layers become a qcow2 chain holding an ext4 filesystem, one
// level per layer, each named by its ChainID.
func ExampleBuild() {
	dir, _ := os.MkdirTemp("", "vmdisk-example-")
	defer os.RemoveAll(dir)
	var paths []string
	for i, content := range []string{"first\n", "second\n"} {
		p := filepath.Join(dir, fmt.Sprintf("layer%d.tar", i))
		f, _ := os.Create(p)
		tw := tar.NewWriter(f)
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("file%d", i), Mode: 0o644, Size: int64(len(content))})
		tw.Write([]byte(content))
		tw.Close()
		f.Close()
		paths = append(paths, p)
	}
	layout := filepath.Join(dir, "oci")
	if _, err := layers.Build(context.Background(), layout, layers.BuildOptions{Layers: paths, Tag: "app"}); err != nil {
		fmt.Println(err)
		return
	}
	res, err := vmdisk.Build(context.Background(), layers.ImageRef{Dir: layout, Tag: "app"}, filepath.Join(dir, "disk"), vmdisk.Options{Size: 64 << 20})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(len(res.Levels), "levels;", res.VirtualSize>>20, "MiB;", strings.HasPrefix(filepath.Base(res.Top), "sha256-"))
	// Output: 2 levels; 64 MiB; true
}
