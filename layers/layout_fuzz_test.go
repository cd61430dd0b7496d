package layers

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// FuzzLayoutResolve feeds arbitrary index.json, manifest and config bytes
// to Resolve and List: they must fail cleanly, never panic or hang. So that
// the fuzzer gets past digest checks, the placeholders @MD@/@MS@ in the
// index and @CD@/@CS@ in the manifest are replaced by the digest and size
// of the manifest and config blobs.
func FuzzLayoutResolve(f *testing.F) {
	// Seeds from our own writer's output.
	l, err := InitLayout(filepath.Join(f.TempDir(), "seed"))
	if err != nil {
		f.Fatal(err)
	}
	d := layoutTestWriteImage(f, l, layoutTestImageSpec{platform: HostPlatform(), layers: []map[string]string{{"a": "1"}}})
	if err := l.SetTag(context.Background(), "latest", d); err != nil {
		f.Fatal(err)
	}
	img, err := l.Resolve(context.Background(), "latest", ResolveOptions{})
	if err != nil {
		f.Fatal(err)
	}
	idx, _ := os.ReadFile(l.indexPath())
	templ := func(b []byte, dg digest.Digest, size int64, dp, sp string) []byte {
		b = bytes.ReplaceAll(b, []byte(dg.String()), []byte(dp))
		return bytes.ReplaceAll(b, []byte(`"size":`+strconv.FormatInt(size, 10)), []byte(`"size":`+sp))
	}
	idxT := templ(idx, d.Digest, d.Size, "@MD@", "@MS@")
	manT := templ(img.RawManifest, img.Manifest.Config.Digest, img.Manifest.Config.Size, "@CD@", "@CS@")
	f.Add(idxT, manT, img.RawConfig)
	nested := []byte(`{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"@MD@","size":@MS@,"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}`)
	f.Add(nested, idxT, img.RawConfig)
	f.Add([]byte(`{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"@MD@","size":@MS@,"platform":{"os":"linux","architecture":"arm64","variant":"v8"},"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}`), manT, []byte(`{"rootfs":{"type":"layers","diff_ids":[]}}`))

	f.Fuzz(func(t *testing.T, index, manifest, config []byte) {
		if len(index)+len(manifest)+len(config) > 1<<20 {
			return
		}
		// No fsync: it costs tens of ms on a loaded disk.
		l, err := layoutInit(filepath.Join(t.TempDir(), "l"), true)
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		cd, err := l.WriteBlobBytes(ctx, ocispec.MediaTypeImageConfig, config)
		if err != nil {
			t.Fatal(err)
		}
		manifest = bytes.ReplaceAll(manifest, []byte("@CD@"), []byte(cd.Digest.String()))
		manifest = bytes.ReplaceAll(manifest, []byte("@CS@"), []byte(strconv.FormatInt(cd.Size, 10)))
		md, err := l.WriteBlobBytes(ctx, ocispec.MediaTypeImageManifest, manifest)
		if err != nil {
			t.Fatal(err)
		}
		index = bytes.ReplaceAll(index, []byte("@MD@"), []byte(md.Digest.String()))
		index = bytes.ReplaceAll(index, []byte("@MS@"), []byte(strconv.FormatInt(md.Size, 10)))
		if err := os.WriteFile(l.indexPath(), index, 0o644); err != nil {
			t.Fatal(err)
		}
		img, err := l.Resolve(ctx, "latest", ResolveOptions{})
		if err == nil {
			// What Resolve accepts is consistent.
			if len(img.Config.RootFS.DiffIDs) != len(img.Manifest.Layers) {
				t.Fatalf("accepted %d diff_ids for %d layers", len(img.Config.RootFS.DiffIDs), len(img.Manifest.Layers))
			}
			for _, ld := range img.Manifest.Layers {
				if !IsLayerMediaType(ld.MediaType) || ld.Digest.Validate() != nil {
					t.Fatalf("accepted layer %+v", ld)
				}
			}
			if _, err := img.V1(); err != nil {
				t.Fatalf("V1 of an accepted image: %v", err)
			}
		}
		list, err := l.List(ctx)
		if err == nil {
			if _, err := json.Marshal(list); err != nil {
				t.Fatal(err)
			}
		}
	})
}
