package layers

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/imgtool/imgtool/internal/tartest"
	digest "github.com/opencontainers/go-digest"
)

func TestLayerAdapter(t *testing.T) {
	blob := tartest.Zstd(tartest.Tar(tartest.File("etc/hello", "world"), tartest.Dir("usr/")), 0)
	path := filepath.Join(t.TempDir(), "blob")
	must(t, os.WriteFile(path, blob, 0o644))
	l, d, err := LayerFromFile(context.Background(), path, Limits{})
	must(t, err)
	if h, _ := l.Digest(); h.String() != d.Digest.String() || d.Digest != digest.FromBytes(blob) {
		t.Errorf("digest %v, descriptor %v", h, d.Digest)
	}
	if mt, _ := l.MediaType(); string(mt) != MediaTypeTarZstd {
		t.Errorf("media type %s", mt)
	}
	// go-containerregistry consumes it: build an image and flatten it.
	img, err := mutate.AppendLayers(empty.Image, l)
	must(t, err)
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	found := false
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		must(t, err)
		if h.Name == "etc/hello" {
			b, _ := io.ReadAll(tr)
			found = string(b) == "world"
		}
	}
	if !found {
		t.Error("mutate.Extract did not yield etc/hello")
	}
	// A wrong diffID is reported at the end of the stream.
	bad := NewLayer(func() (io.ReadCloser, error) { return os.Open(path) }, Descriptor{Digest: d.Digest, DiffID: digest.FromString("x"), MediaType: d.MediaType}, Limits{})
	u, err := bad.Uncompressed()
	must(t, err)
	defer u.Close()
	if _, err := io.Copy(io.Discard, u); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("wrong diffID: %v", err)
	}
	c, err := l.Compressed()
	must(t, err)
	defer c.Close()
	got, err := io.ReadAll(c)
	must(t, err)
	if !bytes.Equal(got, blob) {
		t.Error("Compressed differs from the blob")
	}
}
