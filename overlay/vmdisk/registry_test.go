package vmdisk

import (
	"bytes"
	"context"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/imgtool/imgtool/layers"
)

// TestBuildFromRegistry pushes a 2-layer image (gzip layers) to an
// in-process registry and builds its disk from docker://: the levels are
// byte-identical to those built from an OCI layout holding the same
// layers uncompressed, since a level depends only on the diffIDs.
func TestBuildFromRegistry(t *testing.T) {
	dir := t.TempDir()
	layout, paths := twoLayerLayout(t, dir, fileE(".wh.nothing", 0o644, nil))
	img := empty.Image
	for _, p := range paths {
		l, err := tarball.LayerFromFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			t.Fatal(err)
		}
	}
	srv := httptest.NewServer(ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	ref, err := name.ParseReference(host + "/disk/test:v")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	opts := Options{Size: 64 << 20}
	fromReg, err := BuildFromRegistry(context.Background(), "docker://"+host+"/disk/test:v", filepath.Join(dir, "reg"), opts, layers.PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fromLayout, err := Build(context.Background(), layers.ImageRef{Dir: layout, Tag: "v"}, filepath.Join(dir, "layout"), opts)
	if err != nil {
		t.Fatal(err)
	}
	for k := range fromLayout.Levels {
		a, _ := os.ReadFile(fromReg.Levels[k].Path)
		b, _ := os.ReadFile(fromLayout.Levels[k].Path)
		if len(a) == 0 || !bytes.Equal(a, b) {
			t.Errorf("level %d differs between registry and layout builds", k)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 5 { // 1.tar 2.tar oci reg layout
		t.Errorf("left in %s: %v", dir, ents)
	}
	// An OUTDIR that is a file, or a directory with something in it, is
	// refused before anything is fetched, and stays as it was.
	notDir := filepath.Join(dir, "1.tar")
	before, _ := os.ReadFile(notDir)
	for _, out := range []string{notDir, filepath.Join(dir, "reg")} {
		_, err := BuildFromRegistry(context.Background(), "docker://"+host+"/disk/test:v", out, opts, layers.PullOptions{})
		if err == nil || !strings.Contains(err.Error(), out) {
			t.Errorf("build into %s: %v, want an error naming it", out, err)
		}
	}
	if after, _ := os.ReadFile(notDir); !bytes.Equal(before, after) {
		t.Errorf("%s changed", notDir)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 5 {
		t.Errorf("left in %s: %v", dir, ents)
	}
}

// twoLayerLayout writes two uncompressed layer tars under dir (etc/a of
// 100,000 bytes, then etc/b and last) and an OCI layout dir/oci of them
// tagged v; it returns the layout and the tars.
func twoLayerLayout(t *testing.T, dir string, last tarEntry) (layout string, tars []string) {
	t.Helper()
	for i, l := range [][]tarEntry{
		{dirE("etc/"), fileE("etc/a", 0o644, bytes.Repeat([]byte("a"), 100000))},
		{fileE("etc/b", 0o600, []byte("b")), last},
	} {
		p := filepath.Join(dir, string(rune('1'+i))+".tar")
		writeTar(t, p, l)
		tars = append(tars, p)
	}
	return layoutOf(t, dir, tars), tars
}

// layoutOf builds the OCI layout dir/oci of the layer tars, tagged v.
func layoutOf(t *testing.T, dir string, tars []string) string {
	t.Helper()
	layout := filepath.Join(dir, "oci")
	if _, err := layers.Build(context.Background(), layout, layers.BuildOptions{Layers: tars, Tag: "v"}); err != nil {
		t.Fatal(err)
	}
	return layout
}
