package layers_test

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/imgtool/imgtool/layers"
)

// Create a reproducible layer of a directory, list it, and apply it onto
// another directory.
func Example() {
	ctx := context.Background()
	src, _ := os.MkdirTemp("", "example-src")
	dst, _ := os.MkdirTemp("", "example-dst")
	defer os.RemoveAll(src)
	defer os.RemoveAll(dst)
	os.MkdirAll(filepath.Join(src, "etc"), 0o755)
	os.WriteFile(filepath.Join(src, "etc", "motd"), []byte("hello\n"), 0o644)
	os.Symlink("/etc/motd", filepath.Join(src, "motd"))

	epoch := time.Unix(0, 0)
	var blob bytes.Buffer
	d, err := layers.Create(ctx, &blob, src, layers.CreateOptions{Compression: layers.Zstd, SourceDateEpoch: &epoch})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(d.MediaType)

	_, err = layers.List(ctx, bytes.NewReader(blob.Bytes()), func(h *tar.Header) error {
		if h.Linkname != "" {
			fmt.Println(h.Name, "->", h.Linkname)
		} else {
			fmt.Println(h.Name)
		}
		return nil
	}, layers.Limits{})
	if err != nil {
		log.Fatal(err)
	}

	got, err := layers.Apply(ctx, bytes.NewReader(blob.Bytes()), dst, layers.ApplyOptions{ExpectDigest: d.Digest})
	if err != nil {
		log.Fatal(err)
	}
	motd, _ := os.ReadFile(filepath.Join(dst, "etc", "motd"))
	fmt.Printf("%s%v\n", motd, got.DiffID == d.DiffID)
	// Output:
	// application/vnd.oci.image.layer.v1.tar+zstd
	// etc/
	// etc/motd
	// motd -> /etc/motd
	// hello
	// true
}
