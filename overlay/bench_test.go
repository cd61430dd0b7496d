package overlay

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/imgtool/imgtool/internal/testutil"
	"golang.org/x/sys/unix"
)

// BenchmarkMountPresent measures mounting (and unmounting) a container of
// a 20-layer image whose layers are all in the store already: resolving
// the image, checking the layers, writing the record, mounting.
func BenchmarkMountPresent(b *testing.B) {
	testutil.NeedRoot(b)
	ctx := context.Background()
	ref := buildImage(b, filepath.Join(b.TempDir(), "layout"), "t", 20, 2, 100)
	s := testStore(b)
	target := b.TempDir()
	if _, err := s.Unpack(ctx, ref, ImageOptions{}); err != nil {
		b.Fatal(err)
	}
	b.Run("mount(8)", func(b *testing.B) {
		// The peer: util-linux mount and umount of the same stack (read
		// only, as no container dir is set up), process start included.
		testutil.NeedTool(b, "mount", "umount")
		c, _, err := s.Mount(ctx, ref, target, MountOptions{Name: "peer", ReadOnly: true}, ImageOptions{})
		if err != nil {
			b.Fatal(err)
		}
		lower, _, err := s.lowerDirs(c.Layers)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := s.Unmount(ctx, target, UnmountOptions{Remove: true}); err != nil {
			b.Fatal(err)
		}
		opts := legacyOptions(lower, "", "", &mountSpec{})
		for b.Loop() {
			testutil.Run(b, "mount", "-t", "overlay", "overlay", "-o", opts, target)
			testutil.Run(b, "umount", target)
		}
	})
	for _, m := range []struct {
		name   string
		method MountMethod
	}{{"newapi", MountNewAPI}, {"legacy", MountLegacy}} {
		b.Run(m.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_, st, err := s.Mount(ctx, ref, target, MountOptions{Name: "bench", Method: m.method}, ImageOptions{})
				if err != nil {
					b.Fatal(err)
				}
				if st.Unpacked != 0 {
					b.Fatalf("unpacked %d layers", st.Unpacked)
				}
				if _, err := s.Unmount(ctx, target, UnmountOptions{}); err != nil {
					unix.Unmount(target, unix.MNT_DETACH)
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkUnpack measures unpacking a 16-layer image (gzip layers, 4 MiB
// of files each) into an empty store: all layers in parallel
// (GOMAXPROCS), one at a time, and, as the peer, umoci raw unpack of the
// same image (which flattens the layers serially).
func BenchmarkUnpack(b *testing.B) {
	testutil.NeedRoot(b)
	const n, files, size = 16, 256, 16 << 10
	ctx := context.Background()
	ref := buildImageGz(b, filepath.Join(b.TempDir(), "layout"), "t", n, files, size, true)
	root := b.TempDir()
	bytes := int64(n * files * size)
	for _, c := range []struct {
		name        string
		concurrency int
	}{{"parallel", 0}, {"serial", 1}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(bytes)
			b.ReportAllocs()
			for b.Loop() {
				dir, err := os.MkdirTemp(root, "store-")
				if err != nil {
					b.Fatal(err)
				}
				no := false
				s, err := OpenStore(dir, StoreOptions{UserXattr: &no, Concurrency: c.concurrency})
				if err != nil {
					b.Fatal(err)
				}
				st, err := s.Unpack(ctx, ref, ImageOptions{})
				if err != nil || st.Unpacked != n {
					b.Fatalf("%+v %v", st, err)
				}
				b.StopTimer()
				os.RemoveAll(dir)
				b.StartTimer()
			}
		})
	}
	b.Run("umoci-raw-unpack", func(b *testing.B) {
		testutil.NeedTool(b, "umoci")
		b.SetBytes(bytes)
		for b.Loop() {
			dir := filepath.Join(root, "umoci")
			testutil.Run(b, "umoci", "raw", "unpack", "--image", ref.String(), dir)
			b.StopTimer()
			os.RemoveAll(dir)
			b.StartTimer()
		}
	})
}
