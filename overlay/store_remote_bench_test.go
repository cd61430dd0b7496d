package overlay

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/imgtool/imgtool/internal/registry"
	"github.com/imgtool/imgtool/internal/testutil"
	"github.com/imgtool/imgtool/layers"
	"golang.org/x/sys/unix"
)

// BenchmarkRegistryMount mounts a rootfs of a 5-layer, ~500 MiB image
// (the layers benchmark's BenchmarkRegistryPull image) from the real
// docker-registry on loopback into an empty store under $TMPDIR:
// MountRemote (each layer streamed from the registry straight into the
// store, in parallel, then an overlay mount) against its peer, skopeo copy
// docker://REF oci:DIR:TAG followed by umoci raw unpack of the copy. MB/s
// are of the layer blobs; cpu-s/op is the CPU of this process and of the
// peer's processes (not the registry's).
func BenchmarkRegistryMount(b *testing.B) {
	testutil.NeedRoot(b)
	bi := testutil.BenchLayout(b, 5, 100<<20)
	reg := testutil.StartRegistry(b, testutil.RegistryOptions{})
	ref := reg.Host + "/bench/app:v1"
	ctx := context.Background()
	if _, err := layers.Push(ctx, layers.ImageRef{Dir: bi.Dir, Tag: bi.Tag}, ref, layers.PushOptions{}); err != nil {
		b.Fatal(err)
	}
	root := b.TempDir()
	b.Run("imgtool", func(b *testing.B) {
		b.SetBytes(bi.Compressed)
		b.ReportAllocs()
		var cpu benchCPU
		for i := 0; i < b.N; i++ {
			dir, target := filepath.Join(root, "store"), filepath.Join(root, "target")
			s, err := OpenStore(dir, StoreOptions{})
			if err != nil {
				b.Fatal(err)
			}
			cpu.start()
			_, st, err := s.MountRemote(ctx, "docker://"+ref, target, MountOptions{Name: "bench"}, ImageOptions{}, RemoteOptions{Registry: registry.Options{}})
			cpu.stop()
			if err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if _, err := s.Unmount(ctx, target, UnmountOptions{Remove: true}); err != nil {
				unix.Unmount(target, unix.MNT_DETACH)
				b.Fatal(err)
			}
			if st.Unpacked != bi.Layers {
				b.Fatalf("unpacked %+v, want %d layers", st, bi.Layers)
			}
			os.RemoveAll(dir)
			os.RemoveAll(target)
			b.StartTimer()
		}
		cpu.report(b)
	})
	b.Run("skopeo+umoci", func(b *testing.B) {
		testutil.NeedTool(b, "skopeo", "umoci")
		b.SetBytes(bi.Compressed)
		var cpu benchCPU
		for i := 0; i < b.N; i++ {
			oci, rootfs := filepath.Join(root, "oci"), filepath.Join(root, "rootfs")
			cpu.start()
			testutil.Run(b, "skopeo", "copy", "-q", "--src-tls-verify=false", "docker://"+ref, "oci:"+oci+":v1")
			testutil.Run(b, "umoci", "raw", "unpack", "--image", oci+":v1", rootfs)
			cpu.stop()
			b.StopTimer()
			os.RemoveAll(oci)
			os.RemoveAll(rootfs)
			b.StartTimer()
		}
		cpu.report(b)
	})
}

// benchCPU sums the CPU time of this process and its waited-for children
// over timed sections; on a shared machine it varies much less than wall
// time.
type benchCPU struct {
	t0, total time.Duration
	n         int
}

func benchCPUTime() time.Duration {
	var self, kids unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &self) != nil || unix.Getrusage(unix.RUSAGE_CHILDREN, &kids) != nil {
		return 0
	}
	return time.Duration(self.Utime.Nano() + self.Stime.Nano() + kids.Utime.Nano() + kids.Stime.Nano())
}

func (c *benchCPU) start() { c.t0 = benchCPUTime() }
func (c *benchCPU) stop()  { c.total += benchCPUTime() - c.t0; c.n++ }

func (c *benchCPU) report(b *testing.B) {
	if c.n > 0 {
		b.ReportMetric(c.total.Seconds()/float64(c.n), "cpu-s/op")
	}
}
