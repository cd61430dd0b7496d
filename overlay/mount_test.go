package overlay

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/imgtool/imgtool/internal/testutil"
	digest "github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	"golang.org/x/sys/unix"
)

// handLayer is a layer written directly in overlay format by a test.
type handLayer func(t testing.TB, dir string)

// handImage describes an image whose layers the fill functions write, as
// Apply would from tar blobs. fills counts the layers actually filled.
func handImage(t testing.TB, name string, ls []handLayer, fills *atomic.Int64) *imageSpec {
	t.Helper()
	diffIDs := make([]digest.Digest, len(ls))
	for i := range ls {
		diffIDs[i] = digest.FromString(fmt.Sprintf("%s layer %d", name, i))
	}
	chain := identity.ChainIDs(append([]digest.Digest(nil), diffIDs...))
	im := &imageSpec{Tag: name}
	for i, l := range ls {
		rec := Layer{ChainID: chain[i], DiffID: diffIDs[i]}
		if i > 0 {
			rec.Parent = chain[i-1]
		}
		im.Jobs = append(im.Jobs, layerJob{rec: rec, fill: func(ctx context.Context, dir string) (int64, error) {
			if fills != nil {
				fills.Add(1)
			}
			l(t, dir)
			return 0, nil
		}})
	}
	return im
}

func write(t testing.TB, p, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func whiteout(t testing.TB, p string) {
	t.Helper()
	if err := unix.Mknod(p, unix.S_IFCHR, 0); err != nil {
		t.Fatal(err)
	}
}

func opaqueDir(t testing.TB, p string) {
	t.Helper()
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(p, "trusted.overlay.opaque", []byte("y"), 0); err != nil {
		t.Fatal(err)
	}
}

func testStore(t testing.TB) *Store {
	t.Helper()
	no := false
	s, err := OpenStore(filepath.Join(t.TempDir(), "store"), StoreOptions{UserXattr: &no})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// mountForTest mounts and registers the unmount (and removal) in Cleanup.
func mountForTest(t testing.TB, s *Store, im *imageSpec, target string, opts MountOptions) (*Container, UnpackStats) {
	t.Helper()
	c, st, err := s.mountImage(context.Background(), im, target, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if tp, _ := mountFSType(c.Target); tp == "overlay" {
			if err := unix.Unmount(c.Target, unix.MNT_DETACH); err != nil {
				t.Errorf("cleanup unmount %s: %v", c.Target, err)
			}
		}
	})
	return c, st
}

func threeLayers() []handLayer {
	return []handLayer{
		func(t testing.TB, d string) {
			write(t, d+"/a", "a0")
			write(t, d+"/dir/x", "x0")
			write(t, d+"/dir/y", "y0")
			write(t, d+"/keep", "keep0")
		},
		func(t testing.TB, d string) {
			whiteout(t, d+"/a")
			opaqueDir(t, d+"/dir")
			write(t, d+"/dir/z", "z1")
		},
		func(t testing.TB, d string) {
			if err := os.Symlink("keep", d+"/b"); err != nil {
				t.Fatal(err)
			}
		},
	}
}

func readNames(t testing.TB, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n []string
	for _, e := range ents {
		n = append(n, e.Name())
	}
	return strings.Join(n, " ")
}

func TestMountUmountRemount(t *testing.T) {
	testutil.NeedRoot(t)
	ctx := context.Background()
	s := testStore(t)
	var fills atomic.Int64
	im := handImage(t, "three", threeLayers(), &fills)
	target := t.TempDir()
	c, st := mountForTest(t, s, im, target, MountOptions{Name: "web"})
	if st.Unpacked != 3 || st.Present != 0 || fills.Load() != 3 {
		t.Fatalf("first mount: %+v, %d fills", st, fills.Load())
	}
	if got := readNames(t, target); got != "b dir keep" {
		t.Errorf("root holds %q, want \"b dir keep\"", got)
	}
	if got := readNames(t, target+"/dir"); got != "z" {
		t.Errorf("opaque dir holds %q, want \"z\"", got)
	}
	if l, err := os.Readlink(target + "/b"); err != nil || l != "keep" {
		t.Errorf("symlink b: %q %v", l, err)
	}
	write(t, target+"/new", "written in the container")
	if err := os.Remove(target + "/keep"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(c.UpperDir(), "new")); err != nil {
		t.Errorf("write did not land in the upper dir: %v", err)
	}
	if got, err := s.ContainerByTarget(target); err != nil || got.Name != "web" || !got.Mounted {
		t.Fatalf("ContainerByTarget: %+v %v", got, err)
	}
	// A second mount of the same name is refused while mounted.
	if _, _, err := s.mountImage(ctx, im, t.TempDir(), MountOptions{Name: "web"}, nil); !errors.Is(err, ErrContainerExists) {
		t.Errorf("mounting a mounted name again: %v, want ErrContainerExists", err)
	}
	if _, err := s.Unmount(ctx, target, UnmountOptions{}); err != nil {
		t.Fatal(err)
	}
	if tp, _ := mountFSType(target); tp != "" {
		t.Fatalf("still mounted: %s", tp)
	}
	// Mounting again by name brings back the upper dir, and unpacks nothing.
	fills.Store(0)
	_, st = mountForTest(t, s, im, target, MountOptions{Name: "web"})
	if st.Unpacked != 0 || st.Present != 3 || fills.Load() != 0 {
		t.Errorf("remount unpacked: %+v", st)
	}
	if b, err := os.ReadFile(target + "/new"); err != nil || string(b) != "written in the container" {
		t.Errorf("upper dir not kept: %q %v", b, err)
	}
	if _, err := os.Lstat(target + "/keep"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("deletion not kept: %v", err)
	}
	if _, err := s.Unmount(ctx, target, UnmountOptions{Remove: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(c.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("umount --rm left %s: %v", c.Dir, err)
	}
	if _, err := s.Unmount(ctx, target, UnmountOptions{}); !errors.Is(err, ErrContainerNotFound) {
		t.Errorf("umount of nothing: %v, want ErrContainerNotFound", err)
	}
}

func TestMountReadOnly(t *testing.T) {
	testutil.NeedRoot(t)
	s := testStore(t)
	for _, n := range []int{1, 3} {
		t.Run(fmt.Sprint(n, "layers"), func(t *testing.T) {
			im := handImage(t, fmt.Sprint("ro", n), threeLayers()[:n], nil)
			target := t.TempDir()
			mountForTest(t, s, im, target, MountOptions{ReadOnly: true})
			if err := os.WriteFile(target+"/x", nil, 0o644); !errors.Is(err, unix.EROFS) {
				t.Errorf("write to read-only mount: %v, want EROFS", err)
			}
			if _, err := os.Stat(target + "/keep"); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestDeepStack mounts 150 layers with each method; every layer's own file
// must be visible, and the top layer's version of a shared file wins.
func TestDeepStack(t *testing.T) {
	testutil.NeedRoot(t)
	const n = 150
	var ls []handLayer
	for i := range n {
		ls = append(ls, func(t testing.TB, d string) {
			write(t, fmt.Sprintf("%s/layer%03d", d, i), fmt.Sprint(i))
			write(t, d+"/top", fmt.Sprint(i))
		})
	}
	// A long store path makes absolute lowerdirs overflow a page.
	long := filepath.Join(t.TempDir(), strings.Repeat("long-store-path-", 6))
	no := false
	s, err := OpenStore(long, StoreOptions{UserXattr: &no})
	if err != nil {
		t.Fatal(err)
	}
	im := handImage(t, "deep", ls, nil)
	for _, m := range []struct {
		name   string
		method MountMethod
	}{{"newapi", MountNewAPI}, {"legacy-short-names", MountLegacy}} {
		t.Run(m.name, func(t *testing.T) {
			target := t.TempDir()
			mountForTest(t, s, im, target, MountOptions{Method: m.method, ReadOnly: m.method == MountLegacy})
			for i := range n {
				b, err := os.ReadFile(fmt.Sprintf("%s/layer%03d", target, i))
				if err != nil || string(b) != fmt.Sprint(i) {
					t.Fatalf("layer %d: %q %v", i, b, err)
				}
			}
			if b, _ := os.ReadFile(target + "/top"); string(b) != fmt.Sprint(n-1) {
				t.Errorf("top = %q, want %d", b, n-1)
			}
		})
	}
}

// TestConcurrentInstall: many Store handles (as many processes would)
// install the same layers at once; each layer is unpacked exactly once.
func TestConcurrentInstall(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "store")
	no := false
	var fills atomic.Int64
	ls := []handLayer{}
	for i := range 8 {
		ls = append(ls, func(t testing.TB, d string) { write(t, fmt.Sprint(d, "/f", i), "x") })
	}
	im := handImage(t, "conc", ls, &fills)
	var wg sync.WaitGroup
	var unpacked atomic.Int64
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := OpenStore(dir, StoreOptions{UserXattr: &no, Concurrency: 3})
			if err != nil {
				t.Error(err)
				return
			}
			st, err := s.ensureLayers(context.Background(), im.Jobs, nil)
			if err != nil {
				t.Error(err)
			}
			unpacked.Add(int64(st.Unpacked))
		}()
	}
	wg.Wait()
	if fills.Load() != 8 || unpacked.Load() != 8 {
		t.Errorf("8 layers filled %d times, %d reported unpacked", fills.Load(), unpacked.Load())
	}
	s, _ := OpenStore(dir, StoreOptions{UserXattr: &no})
	got, err := s.Layers()
	if err != nil || len(got) != 8 {
		t.Fatalf("store holds %d layers: %v", len(got), err)
	}
	if ents, _ := os.ReadDir(s.path("tmp")); len(ents) != 0 {
		t.Errorf("tmp/ not empty: %d entries", len(ents))
	}
}

// TestFailedUnpackLeavesNothing: a layer whose fill fails is not visible
// in the store, and its temp dir is gone.
func TestFailedUnpackLeavesNothing(t *testing.T) {
	s := testStore(t)
	boom := errors.New("boom")
	im := handImage(t, "fail", []handLayer{func(t testing.TB, d string) { write(t, d+"/half", "x") }}, nil)
	im.Jobs[0].fill = func(ctx context.Context, dir string) (int64, error) {
		write(t, dir+"/half", "x")
		return 0, boom
	}
	if _, err := s.ensureLayers(context.Background(), im.Jobs, nil); !errors.Is(err, boom) {
		t.Fatalf("got %v, want boom", err)
	}
	if ls, _ := s.Layers(); len(ls) != 0 {
		t.Errorf("store holds %d layers after a failed unpack", len(ls))
	}
	if ents, _ := os.ReadDir(s.path("tmp")); len(ents) != 0 {
		t.Errorf("tmp/ not empty")
	}
}

func TestCopyModeMatchesMount(t *testing.T) {
	testutil.NeedRoot(t)
	s := testStore(t)
	ls := append(threeLayers(), func(t testing.TB, d string) {
		write(t, d+"/hl/one", "hardlinked")
		if err := os.Link(d+"/hl/one", d+"/hl/two"); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mkfifo(d+"/fifo", 0o600); err != nil {
			t.Fatal(err)
		}
		if err := unix.Lsetxattr(d+"/keep2", "user.k", []byte("v"), 0); err == nil {
			t.Fatal("setxattr on a missing file worked")
		}
		write(t, d+"/keep2", "k2")
		if err := unix.Lsetxattr(d+"/keep2", "user.k", []byte("v"), 0); err != nil {
			t.Fatal(err)
		}
	})
	im := handImage(t, "copy", ls, nil)
	mnt := t.TempDir()
	mountForTest(t, s, im, mnt, MountOptions{ReadOnly: true})
	for _, ro := range []bool{false, true} {
		t.Run(fmt.Sprint("readonly=", ro), func(t *testing.T) {
			target := filepath.Join(t.TempDir(), "rootfs")
			c, _, err := s.mountImage(context.Background(), im, target, MountOptions{Copy: true, ReadOnly: ro}, nil)
			if err != nil {
				t.Fatal(err)
			}
			compareTrees(t, mnt, target)
			var a, b unix.Stat_t
			unix.Lstat(target+"/keep", &a)
			l, _ := s.Layer(c.Layers[0])
			unix.Lstat(l.Dir+"/keep", &b)
			if shared := a.Ino == b.Ino; shared != ro {
				t.Errorf("readonly=%v copy shares the store's inode: %v", ro, shared)
			}
			if _, err := s.Unmount(context.Background(), target, UnmountOptions{Remove: true}); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("umount --rm of a copy left %s", target)
			}
		})
	}
}

func TestGC(t *testing.T) {
	testutil.NeedRoot(t)
	ctx := context.Background()
	s := testStore(t)
	a := handImage(t, "a", threeLayers(), nil)
	b := handImage(t, "b", threeLayers()[:1], nil) // another diffID: separate layer
	ta, tb := t.TempDir(), t.TempDir()
	mountForTest(t, s, a, ta, MountOptions{Name: "a"})
	mountForTest(t, s, b, tb, MountOptions{Name: "b"})
	os.MkdirAll(s.path("tmp", "layer-crashed"), 0o700)
	res, err := s.GC(ctx, GCOptions{})
	if err != nil || len(res.RemovedLayers) != 0 || res.KeptLayers != 4 {
		t.Fatalf("gc with both containers: %+v %v", res, err)
	}
	if ents, _ := os.ReadDir(s.path("tmp")); len(ents) != 0 {
		t.Errorf("gc left tmp/ entries")
	}
	// An unmounted container still keeps its layers.
	if _, err := s.Unmount(ctx, tb, UnmountOptions{}); err != nil {
		t.Fatal(err)
	}
	if res, err := s.GC(ctx, GCOptions{}); err != nil || len(res.RemovedLayers) != 0 {
		t.Fatalf("gc with b unmounted: %+v %v", res, err)
	}
	if _, err := s.Unmount(ctx, tb, UnmountOptions{Remove: true}); err != nil {
		t.Fatal(err)
	}
	res, err = s.GC(ctx, GCOptions{DryRun: true})
	if err != nil || len(res.RemovedLayers) != 1 || res.RemovedLayers[0] != b.Jobs[0].rec.ChainID {
		t.Fatalf("dry run: %+v %v", res, err)
	}
	if ls, _ := s.Layers(); len(ls) != 4 {
		t.Fatalf("dry run removed layers")
	}
	if res, err = s.GC(ctx, GCOptions{}); err != nil || len(res.RemovedLayers) != 1 {
		t.Fatalf("gc: %+v %v", res, err)
	}
	if ls, _ := s.Layers(); len(ls) != 3 {
		t.Fatalf("store holds %d layers, want 3", len(ls))
	}
	u, err := s.Usage(ctx)
	if err != nil || len(u.Containers) != 1 || len(u.Layers) != 3 || u.Layers[0].Containers[0] != "a" || u.LayerBytes <= 0 {
		t.Fatalf("usage: %+v %v", u, err)
	}
}

// TestUmountLeavesForeignOverlay: when the target of a container's record
// holds an overlay that is not the container's, Unmount refuses.
func TestUmountLeavesForeignOverlay(t *testing.T) {
	testutil.NeedRoot(t)
	ctx := context.Background()
	s := testStore(t)
	im := handImage(t, "foreign", threeLayers(), nil)
	target := t.TempDir()
	mountForTest(t, s, im, target, MountOptions{Name: "mine"})
	if _, err := s.Unmount(ctx, target, UnmountOptions{}); err != nil {
		t.Fatal(err)
	}
	// Someone else mounts an overlay there.
	d := t.TempDir()
	for _, sub := range []string{"l1", "l2", "u", "w"} {
		must(t, os.Mkdir(filepath.Join(d, sub), 0o755))
	}
	sp := &mountSpec{Target: target, Lower: []string{d + "/l2", d + "/l1"}, Upper: d + "/u", Work: d + "/w"}
	must(t, mountOverlay(sp, MountAuto))
	t.Cleanup(func() { unix.Unmount(target, unix.MNT_DETACH) })
	if _, err := s.Unmount(ctx, target, UnmountOptions{}); !errors.Is(err, ErrContainerNotFound) {
		t.Errorf("umount of a foreign overlay: %v", err)
	}
	if tp, _ := mountFSType(target); tp != "overlay" {
		t.Errorf("the foreign overlay was unmounted")
	}
}

// TestMountNoLayers: an image of no layers (umoci new makes one) mounts
// as an empty tree, read-write and read-only.
func TestMountNoLayers(t *testing.T) {
	testutil.NeedRoot(t)
	s := testStore(t)
	im := handImage(t, "none", nil, nil)
	for _, ro := range []bool{false, true} {
		target := t.TempDir()
		mountForTest(t, s, im, target, MountOptions{ReadOnly: ro})
		if got := readNames(t, target); got != "" {
			t.Errorf("readonly=%v: empty image shows %q", ro, got)
		}
		if err := os.WriteFile(target+"/f", nil, 0o644); (err == nil) == ro {
			t.Errorf("readonly=%v: write: %v", ro, err)
		}
	}
}

// TestCopyReuse: a kept copy-mode container is mounted again in place,
// never in another directory, and a read-only (hardlinked) copy never
// becomes writable.
func TestCopyReuse(t *testing.T) {
	testutil.NeedRoot(t)
	ctx := context.Background()
	s := testStore(t)
	im := handImage(t, "reuse", threeLayers(), nil)
	target := filepath.Join(t.TempDir(), "copy")
	if _, _, err := s.mountImage(ctx, im, target, MountOptions{Name: "ro", Copy: true, ReadOnly: true}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Unmount(ctx, target, UnmountOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.mountImage(ctx, im, target, MountOptions{Name: "ro", Copy: true}, nil); !errors.Is(err, ErrContainerExists) {
		t.Errorf("read-only copy mounted writable: %v", err)
	}
	if _, _, err := s.mountImage(ctx, im, filepath.Join(t.TempDir(), "elsewhere"), MountOptions{Name: "ro", Copy: true, ReadOnly: true}, nil); !errors.Is(err, ErrContainerExists) {
		t.Errorf("copy mounted in another directory: %v", err)
	}
	if _, _, err := s.mountImage(ctx, im, target, MountOptions{Name: "ro", Copy: true, ReadOnly: true}, nil); err != nil {
		t.Errorf("remount in place: %v", err)
	}
	if got := readNames(t, target); got != "b dir keep" {
		t.Errorf("copy holds %q", got)
	}
}
