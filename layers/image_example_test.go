package layers_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/imgtool/imgtool/layers"
)

// Build an image from a directory into an OCI layout, list the layout and
// flatten the image again, as `imgtool image build`, `ls` and `unpack` do.
func ExampleBuild() {
	ctx := context.Background()
	tmp, err := os.MkdirTemp("", "example-*")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	src := filepath.Join(tmp, "src")
	os.MkdirAll(filepath.Join(src, "etc"), 0o755)
	os.WriteFile(filepath.Join(src, "etc", "motd"), []byte("hello from a layer\n"), 0o644)

	layout := filepath.Join(tmp, "layout")
	res, err := layers.Build(ctx, layout, layers.BuildOptions{Layers: []string{src}, Tag: "v1"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("layers:", len(res.Layers), res.Layers[0].MediaType)

	l, err := layers.OpenLayout(layout)
	if err != nil {
		log.Fatal(err)
	}
	list, err := l.List(ctx)
	if err != nil {
		log.Fatal(err)
	}
	for _, s := range list {
		fmt.Println("tag:", s.Tag, "os:", s.Images[0].Platform.OS, "digest matches:", s.Images[0].Digest == res.Manifest.Digest.String())
	}

	rootfs := filepath.Join(tmp, "rootfs")
	if _, err := layers.Unpack(ctx, layout, "v1", rootfs, layers.UnpackOptions{}); err != nil {
		log.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(rootfs, "etc", "motd"))
	fmt.Print(string(b))
	// Output:
	// layers: 1 application/vnd.oci.image.layer.v1.tar+gzip
	// tag: v1 os: linux digest matches: true
	// hello from a layer
}
