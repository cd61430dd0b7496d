package layers

import (
	"context"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	ggcrlayout "github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// TestLayoutGgcr checks our layouts against go-containerregistry's layout
// package, an implementation we did not write: it reads and validates an
// image we built (every blob re-hashed, diffIDs recomputed), and an image
// it writes from our v1.Image view resolves and unpacks here.
func TestLayoutGgcr(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "layout")
	a := buildTestTree(t, map[string]string{"etc/a": "a", "d/x": "x"})
	b := buildTestTree(t, map[string]string{"etc/a": "a2", "y": "y"})
	// Gzip: ggcr v0.22.1 validate.Index fails on our tar+zstd layers with
	// "gzip: invalid header" (it does not read zstd there).
	res, err := Build(ctx, dir, BuildOptions{Layers: []string{a, b}, Tag: "t"})
	if err != nil {
		t.Fatal(err)
	}

	// ggcr reads our layout.
	p, err := ggcrlayout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Index(idx); err != nil {
		t.Fatalf("ggcr validate.Index of our layout: %v", err)
	}
	h, _ := v1.NewHash(res.Manifest.Digest.String())
	img, err := p.Image(h)
	if err != nil {
		t.Fatal(err)
	}
	im, _ := idx.IndexManifest()
	if len(im.Manifests) != 1 || im.Manifests[0].Annotations[ocispec.AnnotationRefName] != "t" {
		t.Fatalf("ggcr sees index %+v", im)
	}

	// ggcr writes our v1.Image view into a layout of its own; we read it.
	ours, err := mustOpen(t, dir).Image(ctx, "t")
	if err != nil {
		t.Fatal(err)
	}
	dir2 := filepath.Join(t.TempDir(), "ggcr")
	p2, err := ggcrlayout.Write(dir2, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p2.AppendImage(ours, ggcrlayout.WithAnnotations(map[string]string{ocispec.AnnotationRefName: "copied"})); err != nil {
		t.Fatal(err)
	}
	got, err := mustOpen(t, dir2).Resolve(ctx, "copied", ResolveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := img.Digest()
	if got.Descriptor.Digest.String() != d1.String() {
		t.Errorf("ggcr copy has manifest %s, want %s", got.Descriptor.Digest, d1)
	}
	out1, out2 := filepath.Join(t.TempDir(), "r1"), filepath.Join(t.TempDir(), "r2")
	if _, err := Unpack(ctx, dir, "t", out1, UnpackOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := Unpack(ctx, dir2, "copied", out2, UnpackOptions{}); err != nil {
		t.Fatal(err)
	}
	snapCompare(t, out1, out2, snapOptions{mtimes: true})
	if _, err := mustOpen(t, dir2).Verify(ctx, Limits{}); err != nil {
		t.Errorf("Verify of ggcr's layout: %v", err)
	}
}
