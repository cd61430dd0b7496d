package testutil

import (
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// PushRandomImage writes to a registry, as ref (HOST/REPO:TAG), an image
// of one random layer of media type mt per size in sizes, and returns
// the image's manifest.
func PushRandomImage(tb testing.TB, ref string, mt types.MediaType, sizes ...int64) *v1.Manifest {
	tb.Helper()
	img := empty.Image
	for _, size := range sizes {
		l, err := random.Layer(size, mt)
		if err != nil {
			tb.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			tb.Fatal(err)
		}
	}
	nr, err := name.ParseReference(ref)
	if err != nil {
		tb.Fatal(err)
	}
	if err := remote.Write(nr, img); err != nil {
		tb.Fatal(err)
	}
	m, err := img.Manifest()
	if err != nil {
		tb.Fatal(err)
	}
	return m
}
