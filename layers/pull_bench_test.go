package layers

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/imgtool/imgtool/internal/registry"
	"github.com/imgtool/imgtool/internal/testutil"
)

// Size of the registry benchmark image: 5 gzip layers of about 100 MiB
// each (issue 11's "5-layer, 500 MiB image").
const (
	pullBenchLayers     = 5
	pullBenchLayerBytes = 100 << 20
)

// pullBenchRegistry starts the real registry on loopback and pushes the
// (cached) benchmark image to it; it returns the image and its reference.
func pullBenchRegistry(b *testing.B) (*testutil.BenchImage, string) {
	b.Helper()
	bi := testutil.BenchLayout(b, pullBenchLayers, pullBenchLayerBytes)
	reg := testutil.StartRegistry(b, testutil.RegistryOptions{})
	ref := reg.Host + "/bench/app:v1"
	if _, err := Push(context.Background(), ImageRef{Dir: bi.Dir, Tag: bi.Tag}, ref, PushOptions{}); err != nil {
		b.Fatal(err)
	}
	return bi, ref
}

// BenchmarkRegistryPull pulls a 5-layer, ~500 MiB image from the real
// docker-registry on loopback into a new OCI layout (under $TMPDIR): Pull
// against skopeo copy docker://REF oci:DIR:TAG. MB/s are of the layer
// blobs; cpu-s/op is the CPU of this process and of skopeo (the
// registry's own CPU counts for neither).
func BenchmarkRegistryPull(b *testing.B) {
	bi, ref := pullBenchRegistry(b)
	ctx := context.Background()
	root := b.TempDir()
	b.Run("imgtool", func(b *testing.B) {
		b.SetBytes(bi.Compressed)
		b.ReportAllocs()
		var m cpuMeter
		for i := 0; i < b.N; i++ {
			dir := filepath.Join(root, "imgtool")
			m.start()
			res, err := Pull(ctx, ref, ImageRef{Dir: dir, Tag: "v1"}, PullOptions{Registry: registry.Options{}})
			m.stop()
			if err != nil {
				b.Fatal(err)
			}
			if res.Fetched != bi.Layers+1 {
				b.Fatalf("fetched %d blobs, want %d", res.Fetched, bi.Layers+1)
			}
			b.StopTimer()
			os.RemoveAll(dir)
			b.StartTimer()
		}
		m.report(b)
	})
	b.Run("skopeo", func(b *testing.B) {
		testutil.NeedTool(b, "skopeo")
		b.SetBytes(bi.Compressed)
		var m cpuMeter
		for i := 0; i < b.N; i++ {
			dir := filepath.Join(root, "skopeo")
			m.start()
			testutil.Run(b, "skopeo", "copy", "-q", "--src-tls-verify=false", "docker://"+ref, "oci:"+dir+":v1")
			m.stop()
			b.StopTimer()
			os.RemoveAll(dir)
			b.StartTimer()
		}
		m.report(b)
	})
}
