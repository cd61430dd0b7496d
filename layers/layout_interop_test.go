package layers

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/imgtool/imgtool/internal/testutil"
)

// TestLayoutInteropSkopeoLayout reads a layout skopeo wrote from one of ours
// (skopeo rewrites index.json its own way) and lists it.
func TestLayoutInteropSkopeoLayout(t *testing.T) {
	testutil.NeedTool(t, "skopeo")
	ctx := context.Background()
	src, _ := InitLayout(filepath.Join(t.TempDir(), "src"))
	d := layoutTestWriteImage(t, src, layoutTestImageSpec{platform: HostPlatform(), layers: []map[string]string{{"a": "1"}, {"b": "2"}}})
	if err := src.SetTag(ctx, "t", d); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "dst")
	testutil.Run(t, "skopeo", "copy", "oci:"+src.Dir()+":t", "oci:"+dst+":copied")
	testutil.Run(t, "skopeo", "copy", "oci:"+src.Dir()+":t", "oci:"+dst+":second")
	l := mustOpen(t, dst)
	img, err := l.Resolve(ctx, "copied", ResolveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if img.Descriptor.Digest != d.Digest {
		t.Errorf("skopeo copy changed the manifest: %s, want %s", img.Descriptor.Digest, d.Digest)
	}
	list, err := l.List(ctx)
	if err != nil || len(list) != 2 {
		t.Fatalf("List = %+v, %v", list, err)
	}
	// Our tag update keeps skopeo's other entry.
	if err := l.SetTag(ctx, "copied", d); err != nil {
		t.Fatal(err)
	}
	out, err := testutil.Exec("skopeo", "inspect", "oci:"+dst+":second")
	if err != nil {
		t.Fatalf("skopeo inspect after our SetTag: %v\n%s", err, out)
	}
}

// TestLayoutInteropUmociLayout reads a layout umoci made (umoci init, new)
// and checks that umoci reads one after our SetTag.
func TestLayoutInteropUmociLayout(t *testing.T) {
	testutil.NeedTool(t, "umoci")
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "layout")
	testutil.Run(t, "umoci", "init", "--layout", dir)
	testutil.Run(t, "umoci", "new", "--image", dir+":empty")
	l := mustOpen(t, dir)
	img, err := l.Resolve(ctx, "empty", ResolveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(img.Manifest.Layers) != 0 || img.Config.OS != "linux" {
		t.Fatalf("umoci new image: %+v", img.Config)
	}
	d := layoutTestWriteImage(t, l, layoutTestImageSpec{platform: HostPlatform(), layers: []map[string]string{{"a": "1"}}})
	if err := l.SetTag(ctx, "ours", d); err != nil {
		t.Fatal(err)
	}
	out := testutil.Run(t, "umoci", "ls", "--layout", dir)
	if got := string(out); got != "empty\nours\n" {
		t.Errorf("umoci ls = %q", got)
	}
	testutil.Run(t, "umoci", "stat", "--image", dir+":ours")
}

func mustOpen(t testing.TB, dir string) *Layout {
	t.Helper()
	l, err := OpenLayout(dir)
	if err != nil {
		t.Fatal(err)
	}
	return l
}
