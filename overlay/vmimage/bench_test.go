package vmimage

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/imgtool/imgtool/internal/testutil"
)

// BenchmarkPullChain pulls a 3-level chain (1 GiB virtual, 100 MiB of
// data per level) from the real registry on loopback into an empty
// directory, against the peer: skopeo copy into an OCI layout, then tar
// -x of each layer blob. The chain is built and pushed only when the
// benchmark runs (go test -bench), so plain go test stays fast.
func BenchmarkPullChain(b *testing.B) {
	testutil.NeedTool(b, "qemu-img", "qemu-io")
	reg := testutil.StartRegistry(b, testutil.RegistryOptions{})
	ctx := context.Background()
	src := b.TempDir()
	p := func(n string) string { return filepath.Join(src, n+".qcow2") }
	testutil.Run(b, "qemu-img", "create", "-q", "-f", "qcow2", p("base"), "1G")
	testutil.Run(b, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", p("db"))
	testutil.Run(b, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "db.qcow2", "-F", "qcow2", p("web"))
	testutil.Run(b, "qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 100M", p("base"))
	testutil.Run(b, "qemu-io", "-f", "qcow2", "-c", "write -P 0x22 200M 100M", p("db"))
	testutil.Run(b, "qemu-io", "-f", "qcow2", "-c", "write -P 0x33 400M 100M", p("web"))
	ref := reg.Host + "/bench/vm:1"
	res, err := Push(ctx, p("web"), ref, PushOptions{})
	if err != nil {
		b.Fatal(err)
	}
	var total int64
	for _, l := range res.Levels {
		total += l.BlobSize
	}
	work := b.TempDir()

	b.Run("imgtool", func(b *testing.B) {
		b.SetBytes(total)
		b.ReportAllocs()
		for b.Loop() {
			dir := filepath.Join(work, "pull")
			if _, err := Pull(ctx, ref, dir, PullOptions{}); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			os.RemoveAll(dir)
			b.StartTimer()
		}
	})

	b.Run("skopeo+extract", func(b *testing.B) {
		skopeo := testutil.NeedTool(b, "skopeo")
		testutil.NeedTool(b, "tar")
		b.SetBytes(total)
		b.ReportAllocs()
		for b.Loop() {
			layout, out := filepath.Join(work, "layout"), filepath.Join(work, "out")
			if o, err := exec.Command(skopeo, "copy", "-q", "--src-tls-verify=false", "docker://"+ref, "oci:"+layout+":vm").CombinedOutput(); err != nil {
				b.Fatalf("skopeo copy: %v\n%s", err, o)
			}
			if err := os.Mkdir(out, 0o755); err != nil {
				b.Fatal(err)
			}
			for _, blob := range layoutLayers(b, layout) {
				if o, err := exec.Command("tar", "-xf", blob, "-C", out).CombinedOutput(); err != nil {
					b.Fatalf("tar -x: %v\n%s", err, o)
				}
			}
			b.StopTimer()
			os.RemoveAll(layout)
			os.RemoveAll(out)
			b.StartTimer()
		}
	})
}

// layoutLayers returns the layer blob paths of the single image in an
// OCI layout, base first.
func layoutLayers(b *testing.B, layout string) []string {
	raw, err := os.ReadFile(filepath.Join(layout, "index.json"))
	if err != nil {
		b.Fatal(err)
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
	if err != nil || len(idx.Manifests) != 1 {
		b.Fatalf("index.json: %v", err)
	}
	blob := func(h v1.Hash) string { return filepath.Join(layout, "blobs", h.Algorithm, h.Hex) }
	raw, err = os.ReadFile(blob(idx.Manifests[0].Digest))
	if err != nil {
		b.Fatal(err)
	}
	var m v1.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		b.Fatal(err)
	}
	var out []string
	for _, l := range m.Layers {
		out = append(out, blob(l.Digest))
	}
	return out
}
