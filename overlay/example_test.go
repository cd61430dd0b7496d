package overlay_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/imgtool/imgtool/layers"
	"github.com/imgtool/imgtool/overlay"
)

// Mount a container of an image from an OCI layout, write in it, commit
// the change as a new image and remove the container (needs root, or a
// user namespace, for the overlay mount).
func ExampleStore_Mount() {
	ctx := context.Background()
	s, err := overlay.OpenStore("/var/lib/imgtool/store", overlay.StoreOptions{})
	if err != nil {
		log.Fatal(err)
	}
	ref := layers.ImageRef{Dir: "/srv/images", Tag: "alpine"}
	c, st, err := s.Mount(ctx, ref, "/mnt/rootfs", overlay.MountOptions{Name: "demo"}, overlay.ImageOptions{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("container %s: %d layers unpacked, %d shared\n", c.Name, st.Unpacked, st.Present)
	os.WriteFile("/mnt/rootfs/etc/motd", []byte("hello\n"), 0o644)
	if _, err := s.Commit(ctx, "/mnt/rootfs", layers.ImageRef{Dir: "/srv/images", Tag: "alpine-motd"}, overlay.CommitOptions{}); err != nil {
		log.Fatal(err)
	}
	if _, err := s.Unmount(ctx, "/mnt/rootfs", overlay.UnmountOptions{Remove: true}); err != nil {
		log.Fatal(err)
	}
}

// A new store is empty; Usage lists layers and containers with sizes.
func ExampleStore_Usage() {
	dir, _ := os.MkdirTemp("", "store-example-")
	defer os.RemoveAll(dir)
	no := false
	s, err := overlay.OpenStore(filepath.Join(dir, "store"), overlay.StoreOptions{UserXattr: &no})
	if err != nil {
		log.Fatal(err)
	}
	u, err := s.Usage(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(u.Layers), "layers,", len(u.Containers), "containers")
	// Output: 0 layers, 0 containers
}
