package overlay

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imgtool/imgtool/internal/testutil"
	"github.com/imgtool/imgtool/layers"
)

// whiteoutImage builds a two-layer image: d/{a,b}, f and a device null,
// then an opaque d holding c and a whiteout of f.
func whiteoutImage(t testing.TB, dir string) layers.ImageRef {
	t.Helper()
	mk := func(entries ...tar.Header) string {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, h := range entries {
			h.ModTime, h.Format, h.Mode = time.Unix(1700000000, 0), tar.FormatPAX, 0o755
			if h.Typeflag == tar.TypeReg {
				h.Size = int64(len(h.Name))
			}
			must(t, tw.WriteHeader(&h))
			if h.Typeflag == tar.TypeReg {
				tw.Write([]byte(h.Name))
			}
		}
		must(t, tw.Close())
		p := filepath.Join(t.TempDir(), "layer.tar")
		must(t, os.WriteFile(p, buf.Bytes(), 0o644))
		return p
	}
	reg := byte(tar.TypeReg)
	l0 := mk(tar.Header{Name: "d/", Typeflag: tar.TypeDir}, tar.Header{Name: "d/a", Typeflag: reg}, tar.Header{Name: "d/b", Typeflag: reg}, tar.Header{Name: "f", Typeflag: reg},
		tar.Header{Name: "null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3})
	l1 := mk(tar.Header{Name: "d/", Typeflag: tar.TypeDir}, tar.Header{Name: "d/.wh..wh..opq", Typeflag: reg}, tar.Header{Name: "d/c", Typeflag: reg}, tar.Header{Name: ".wh.f", Typeflag: reg})
	if _, err := layers.Build(context.Background(), dir, layers.BuildOptions{Layers: []string{l0, l1}, Tag: "t"}); err != nil {
		t.Fatal(err)
	}
	return layers.ImageRef{Dir: dir, Tag: "t"}
}

// TestHelperProcessUserns is not a test: TestUserNamespace runs the test
// binary inside a user and mount namespace, entering here.
func TestHelperProcessUserns(t *testing.T) {
	arg := os.Getenv("IMGTOOL_OVERLAY_USERNS")
	if arg == "" {
		t.Skip("helper process for TestUserNamespace")
	}
	if !inUserNamespace() {
		t.Fatal("not in a user namespace")
	}
	layout, storeDir, _ := strings.Cut(arg, "|")
	s, err := OpenStore(storeDir, StoreOptions{}) // detects the namespace
	if err != nil {
		t.Fatal(err)
	}
	if !s.UserXattr() {
		t.Fatal("store does not use user.overlay xattrs in a user namespace")
	}
	target := t.TempDir()
	ctx := context.Background()
	ref := layers.ImageRef{Dir: layout, Tag: "t"}
	if os.Getenv("IMGTOOL_OVERLAY_USERNS_NOMOUNT") != "" {
		// No mount namespace of our own: overlay cannot be mounted, the
		// error says so, and copy mode works instead.
		_, _, err := s.Mount(ctx, ref, target, MountOptions{}, ImageOptions{})
		if !errors.Is(err, ErrMountUnsupported) {
			t.Fatalf("mount without privilege: %v, want ErrMountUnsupported", err)
		}
		cp := filepath.Join(t.TempDir(), "copy")
		if _, _, err := s.Mount(ctx, ref, cp, MountOptions{Copy: true}, ImageOptions{}); err != nil {
			t.Fatal(err)
		}
		if got := readNames(t, cp) + "|" + readNames(t, cp+"/d"); got != "d|c" {
			t.Errorf("copy holds %q, want d|c", got)
		}
		return
	}
	c, _, err := s.Mount(ctx, ref, target, MountOptions{}, ImageOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Unmount(ctx, target, UnmountOptions{Remove: true})
	if got := readNames(t, target); got != "d" {
		t.Errorf("root holds %q, want d (f whited out, the device null skipped)", got)
	}
	if got := readNames(t, target+"/d"); got != "c" {
		t.Errorf("opaque d holds %q, want c", got)
	}
	top, _ := s.Layer(c.Layers[1])
	if v, err := lgetxattr(top.Dir+"/d", "user.overlay.opaque"); err != nil || string(v) != "y" {
		t.Errorf("user.overlay.opaque on the layer's d: %q %v", v, err)
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if !strings.Contains(string(mi), "userxattr") {
		t.Errorf("no userxattr mount in mountinfo:\n%s", mi)
	}
}

// TestUserNamespace mounts an image inside an unprivileged user namespace
// (unshare --user --map-root-user --mount): the store then uses
// user.overlay.* xattrs and mounts with userxattr (kernel >= 5.11).
func TestUserNamespace(t *testing.T) {
	testutil.NeedTool(t, "unshare")
	layout := filepath.Join(t.TempDir(), "layout")
	whiteoutImage(t, layout)
	storeDir := filepath.Join(t.TempDir(), "store")
	t.Setenv("IMGTOOL_OVERLAY_USERNS", layout+"|"+storeDir)
	out, err := testutil.Exec("unshare", "--user", "--map-root-user", "--mount", os.Args[0], "-test.run=^TestHelperProcessUserns$", "-test.v")
	if err != nil {
		if strings.Contains(string(out), "unshare failed") && !testutil.InteropRequired() {
			t.Skipf("user namespaces unavailable: %s", out)
		}
		t.Fatalf("%v\n%s", err, out)
	}
	if !strings.Contains(string(out), "--- PASS: TestHelperProcessUserns") {
		t.Fatalf("helper did not pass:\n%s", out)
	}
	t.Run("no-mount-namespace", func(t *testing.T) {
		t.Setenv("IMGTOOL_OVERLAY_USERNS", layout+"|"+filepath.Join(t.TempDir(), "store"))
		t.Setenv("IMGTOOL_OVERLAY_USERNS_NOMOUNT", "1")
		out, err := testutil.Exec("unshare", "--user", "--map-root-user", os.Args[0], "-test.run=^TestHelperProcessUserns$", "-test.v")
		if err != nil || !strings.Contains(string(out), "--- PASS: TestHelperProcessUserns") {
			t.Fatalf("%v\n%s", err, out)
		}
	})
}
