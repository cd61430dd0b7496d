package vmdisk

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgtool/imgtool/internal/registry"
	"github.com/imgtool/imgtool/internal/testutil"
	"github.com/imgtool/imgtool/layers"
)

// TestBuildFromRealRegistry pushes an image to the real registry (TLS,
// htpasswd) and builds its disk from docker://: the levels equal those of
// the layout build; without credentials it fails before OUTDIR (or its
// missing parents) exists.
func TestBuildFromRealRegistry(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{Auth: true})
	dir := t.TempDir()
	layout, _ := twoLayerLayout(t, dir, fileE("etc/.wh.a", 0o644, nil))
	env := func(string) string { return "" } // no credential files of the host
	good := registry.Options{Insecure: true, Creds: testutil.RegistryUser + ":" + testutil.RegistryPassword, Env: env}
	src := "docker://" + reg.Host + "/disk/test:v"
	if _, err := layers.Push(context.Background(), layers.ImageRef{Dir: layout, Tag: "v"}, src, layers.PushOptions{Registry: good}); err != nil {
		t.Fatal(err)
	}
	opts := Options{Size: 64 << 20}

	work := t.TempDir()
	out := filepath.Join(work, "new", "disk")
	_, err := BuildFromRegistry(context.Background(), src, out, opts, layers.PullOptions{Registry: registry.Options{Insecure: true, Env: env}})
	if err == nil {
		t.Fatal("pull without credentials succeeded")
	}
	t.Log(err)
	if ents, _ := os.ReadDir(work); len(ents) != 0 {
		t.Fatalf("a failed build left %v in %s", ents, work)
	}

	fromReg, err := BuildFromRegistry(context.Background(), src, out, opts, layers.PullOptions{Registry: good})
	if err != nil {
		t.Fatal(err)
	}
	fromLayout, err := Build(context.Background(), layers.ImageRef{Dir: layout, Tag: "v"}, filepath.Join(dir, "layout"), opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(fromReg.Levels) != 2 || len(fromLayout.Levels) != 2 {
		t.Fatalf("levels: %d from the registry, %d from the layout", len(fromReg.Levels), len(fromLayout.Levels))
	}
	for k := range fromLayout.Levels {
		a, _ := os.ReadFile(fromReg.Levels[k].Path)
		b, _ := os.ReadFile(fromLayout.Levels[k].Path)
		if len(a) == 0 || !bytes.Equal(a, b) || filepath.Base(fromReg.Levels[k].Path) != filepath.Base(fromLayout.Levels[k].Path) {
			t.Errorf("level %d differs between registry and layout builds", k)
		}
	}
	// Only OUTDIR is left beside it: the pulled layout is gone.
	ents, _ := os.ReadDir(filepath.Dir(out))
	if len(ents) != 1 || ents[0].Name() != "disk" {
		t.Errorf("left in %s: %v", filepath.Dir(out), ents)
	}
	// A full OUTDIR is refused before anything is fetched.
	mark := len(reg.Log())
	if _, err := BuildFromRegistry(context.Background(), src, out, opts, layers.PullOptions{Registry: good}); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("a full OUTDIR: %v", err)
	}
	if n := reg.BlobBytesSent(mark); n != 0 {
		t.Errorf("%d blob bytes fetched for a build that was refused", n)
	}
}
