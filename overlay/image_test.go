package overlay

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imgtool/imgtool/internal/testutil"
	"github.com/imgtool/imgtool/layers"
	"golang.org/x/sys/unix"
)

// layerTar returns an uncompressed layer: layerNNN/fileK (files of size
// bytes each, content unique to the layer) and a "top" file every layer
// overwrites.
func layerTar(t testing.TB, i, files, size int) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mt := time.Unix(1700000000, 0)
	add := func(h *tar.Header, body []byte) {
		h.ModTime, h.Format = mt, tar.FormatPAX
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write(body)
	}
	dir := fmt.Sprintf("layer%03d", i)
	add(&tar.Header{Name: dir + "/", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	for k := range files {
		unit := []byte(fmt.Sprintf("layer %d file %d\n", i, k))
		body := bytes.Repeat(unit, size/len(unit)+1)[:size]
		add(&tar.Header{Name: fmt.Sprintf("%s/file%d", dir, k), Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))}, body)
	}
	top := []byte(fmt.Sprint(i))
	add(&tar.Header{Name: "top", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(top))}, top)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// buildImage writes an image of n layers (see layerTar) into the layout
// dir under tag, with layers.Build storing each tar as it is. The layers
// of images built with the same prefix n are shared.
func buildImage(t testing.TB, dir, tag string, n, files, size int) layers.ImageRef {
	return buildImageGz(t, dir, tag, n, files, size, false)
}

// buildImageGz is buildImage with gzip-compressed layers when gz is set.
func buildImageGz(t testing.TB, dir, tag string, n, files, size int, gz bool) layers.ImageRef {
	t.Helper()
	tmp := t.TempDir()
	var paths []string
	for i := range n {
		p := filepath.Join(tmp, fmt.Sprintf("%03d.tar", i))
		b := layerTar(t, i, files, size)
		if gz {
			var z bytes.Buffer
			zw := gzip.NewWriter(&z)
			zw.Write(b)
			zw.Close()
			b = z.Bytes()
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	epoch := time.Unix(1700000000, 0)
	if _, err := layers.Build(context.Background(), dir, layers.BuildOptions{Layers: paths, Tag: tag, SourceDateEpoch: &epoch}); err != nil {
		t.Fatal(err)
	}
	return layers.ImageRef{Dir: dir, Tag: tag}
}

// Test150LayerImage mounts an image of 150 layers (deeper than one page of
// mount(2) options holds with the store's absolute paths) and checks that
// every layer is visible.
func Test150LayerImage(t *testing.T) {
	testutil.NeedRoot(t)
	const n = 150
	ref := buildImage(t, filepath.Join(t.TempDir(), "layout"), "deep", n, 1, 10)
	s := testStore(t)
	target := t.TempDir()
	c, st, err := s.Mount(context.Background(), ref, target, MountOptions{}, ImageOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(target, unix.MNT_DETACH) })
	if st.Unpacked != n || len(c.Layers) != n {
		t.Fatalf("%+v, %d layers", st, len(c.Layers))
	}
	lower, _, _ := s.lowerDirs(c.Layers)
	if opts := legacyOptions(lower, c.UpperDir(), c.WorkDir(), &mountSpec{}); len(opts) < os.Getpagesize() {
		t.Fatalf("the options of this stack fit in a page (%d bytes): the test proves nothing", len(opts))
	}
	for i := range n {
		p := fmt.Sprintf("%s/layer%03d/file0", target, i)
		if b, err := os.ReadFile(p); err != nil || len(b) != 10 || !strings.HasPrefix(fmt.Sprintf("layer %d file 0\n", i), string(b)) {
			t.Fatalf("layer %d: %q %v", i, b, err)
		}
	}
	if b, _ := os.ReadFile(target + "/top"); string(b) != fmt.Sprint(n-1) {
		t.Errorf("top = %q, want %d", b, n-1)
	}
}

// TestHelperProcessUnpack is not a test: TestConcurrentProcesses runs the
// test binary as several processes that enter here.
func TestHelperProcessUnpack(t *testing.T) {
	arg := os.Getenv("IMGTOOL_OVERLAY_HELPER")
	if arg == "" {
		t.Skip("helper process for TestConcurrentProcesses")
	}
	storeDir, refDir, _ := strings.Cut(arg, "|")
	no := false
	s, err := OpenStore(storeDir, StoreOptions{UserXattr: &no, Concurrency: 2})
	if err != nil {
		t.Fatal(err)
	}
	st, err := s.Unpack(context.Background(), layers.ImageRef{Dir: refDir, Tag: "t"}, ImageOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(st)
	fmt.Printf("STATS %s\n", b)
}

// TestConcurrentProcesses unpacks one image into one store from four
// processes at once: every layer is unpacked exactly once in total.
func TestConcurrentProcesses(t *testing.T) {
	testutil.NeedRoot(t) // the store keeps layer owners
	const n = 12
	layout := filepath.Join(t.TempDir(), "layout")
	buildImage(t, layout, "t", n, 20, 4096)
	storeDir := filepath.Join(t.TempDir(), "store")
	t.Setenv("IMGTOOL_OVERLAY_HELPER", storeDir+"|"+layout)
	type result struct {
		out []byte
		err error
	}
	res := make(chan result, 4)
	for range 4 {
		go func() {
			out, err := testutil.Exec(os.Args[0], "-test.run=^TestHelperProcessUnpack$", "-test.v")
			res <- result{out, err}
		}()
	}
	unpacked, present := 0, 0
	for range 4 {
		r := <-res
		if r.err != nil {
			t.Fatalf("helper: %v\n%s", r.err, r.out)
		}
		_, js, ok := strings.Cut(string(r.out), "STATS ")
		if !ok {
			t.Fatalf("helper printed no stats:\n%s", r.out)
		}
		js, _, _ = strings.Cut(js, "\n")
		var st UnpackStats
		if err := json.Unmarshal([]byte(js), &st); err != nil {
			t.Fatal(err)
		}
		unpacked += st.Unpacked
		present += st.Present
	}
	if unpacked != n || present != 3*n {
		t.Errorf("4 processes unpacked %d layers and found %d present, want %d and %d", unpacked, present, n, 3*n)
	}
	no := false
	s, _ := OpenStore(storeDir, StoreOptions{UserXattr: &no})
	if ls, _ := s.Layers(); len(ls) != n {
		t.Errorf("store holds %d layers, want %d", len(ls), n)
	}
}

// TestMountCorruptLayer: a layer blob whose bytes no longer match its
// digest fails the mount, leaving no container, no half layer and nothing
// in tmp/.
func TestMountCorruptLayer(t *testing.T) {
	layout := filepath.Join(t.TempDir(), "layout")
	ref := buildImage(t, layout, "t", 2, 1, 100)
	l, err := layers.OpenLayout(layout)
	if err != nil {
		t.Fatal(err)
	}
	img, err := l.Resolve(context.Background(), "t", layers.ResolveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p, _ := l.BlobPath(img.Manifest.Layers[1].Digest)
	b, _ := os.ReadFile(p)
	b[600] ^= 1 // inside the first file's content
	os.Chmod(p, 0o644)
	must(t, os.WriteFile(p, b, 0o644))
	s := testStore(t)
	_, _, err = s.Mount(context.Background(), ref, t.TempDir(), MountOptions{Name: "bad"}, ImageOptions{})
	if !errors.Is(err, layers.ErrBlobCorrupt) && !errors.Is(err, layers.ErrDigestMismatch) && !errors.Is(err, layers.ErrCorrupt) {
		t.Fatalf("mount of a corrupt image: %v", err)
	}
	if cs, _ := s.Containers(); len(cs) != 0 {
		t.Errorf("failed mount left container %+v", cs[0])
	}
	if _, err := os.Stat(s.path("containers", "bad")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("failed mount left its container dir: %v", err)
	}
	if _, err := s.Layer(img.Manifest.Layers[1].Digest); err == nil {
		t.Errorf("corrupt layer is in the store")
	}
	if ents, _ := os.ReadDir(s.path("tmp")); len(ents) != 0 {
		t.Errorf("tmp/ holds %d entries", len(ents))
	}
}

// TestGCImagePins: an image pin keeps its layers while its tag names the
// pinned manifest; a moved tag or a deleted layout drops the pin; IgnorePins
// keeps only what containers use.
func TestGCImagePins(t *testing.T) {
	ctx := context.Background()
	work := t.TempDir()
	a := buildImage(t, filepath.Join(work, "a"), "t", 3, 1, 10)
	b := buildImage(t, filepath.Join(work, "b"), "t", 1, 1, 10) // shares layer 0 with a
	s := testStore(t)
	for _, ref := range []layers.ImageRef{a, b} {
		if _, err := s.Unpack(ctx, ref, ImageOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if res, err := s.GC(ctx, GCOptions{}); err != nil || len(res.RemovedLayers) != 0 || res.KeptLayers != 3 {
		t.Fatalf("gc with valid pins: %+v %v", res, err)
	}
	// Move a's tag to another (two-layer) image: a's pin is stale, and
	// its layers go except layer 0, which b's pin keeps.
	buildImage(t, a.Dir, "t", 2, 1, 10)
	res, err := s.GC(ctx, GCOptions{})
	if err != nil || len(res.RemovedLayers) != 2 || len(res.DroppedPins) != 1 || res.KeptLayers != 1 {
		t.Fatalf("gc after the tag moved: %+v %v", res, err)
	}
	// Delete b's layout: its pin goes, and with it layer 0.
	must(t, os.RemoveAll(b.Dir))
	res, err = s.GC(ctx, GCOptions{})
	if err != nil || len(res.RemovedLayers) != 1 || len(res.DroppedPins) != 1 {
		t.Fatalf("gc after deleting the layout: %+v %v", res, err)
	}
	if ls, _ := s.Layers(); len(ls) != 0 {
		t.Errorf("store holds %d layers", len(ls))
	}
	// IgnorePins removes pinned layers.
	if _, err := s.Unpack(ctx, a, ImageOptions{}); err != nil {
		t.Fatal(err)
	}
	res, err = s.GC(ctx, GCOptions{IgnorePins: true})
	if err != nil || len(res.RemovedLayers) != 2 {
		t.Fatalf("gc --all: %+v %v", res, err)
	}
}

// TestPlatformRecorded: a container mounted with an explicit platform
// records it, and commit and gc resolve the tag with it.
func TestPlatformRecorded(t *testing.T) {
	testutil.NeedRoot(t)
	ctx := context.Background()
	ref := buildImage(t, filepath.Join(t.TempDir(), "layout"), "t", 2, 1, 10)
	s := testStore(t)
	target := t.TempDir()
	host := layers.HostPlatform()
	c, _, err := s.Mount(ctx, ref, target, MountOptions{}, ImageOptions{Platform: &host})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(target, unix.MNT_DETACH) })
	if c.Platform == nil || c.Platform.Architecture != host.Architecture {
		t.Fatalf("platform not recorded: %+v", c.Platform)
	}
	write(t, target+"/added", "x")
	res, err := s.Commit(ctx, target, layers.ImageRef{Dir: ref.Dir, Tag: "next"}, CommitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Image.Manifest.Platform == nil || res.Image.Manifest.Platform.Architecture != host.Architecture {
		t.Errorf("committed manifest platform: %+v", res.Image.Manifest.Platform)
	}
	if _, err := s.Unmount(ctx, target, UnmountOptions{Remove: true}); err != nil {
		t.Fatal(err)
	}
	if gc, err := s.GC(ctx, GCOptions{}); err != nil || len(gc.RemovedLayers) != 0 || len(gc.DroppedPins) != 0 {
		t.Errorf("the pin made with a platform did not keep its layers: %+v %v", gc, err)
	}
}

// TestGCConcurrentWithMounts runs gc (ignoring pins, so it removes every
// layer no container holds) in a loop while containers are mounted,
// checked and removed: every mount sees its whole image, and every layer
// gc removes gets unpacked again when needed.
func TestGCConcurrentWithMounts(t *testing.T) {
	testutil.NeedRoot(t)
	ctx := context.Background()
	ref := buildImage(t, filepath.Join(t.TempDir(), "layout"), "t", 4, 2, 100)
	dir := filepath.Join(t.TempDir(), "store")
	no := false
	open := func() *Store {
		s, err := OpenStore(dir, StoreOptions{UserXattr: &no})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	done := make(chan struct{})
	gcErr := make(chan error, 1)
	removed := 0
	go func() {
		s := open() // its own handle, as another process would have
		defer close(gcErr)
		for {
			select {
			case <-done:
				return
			default:
			}
			res, err := s.GC(ctx, GCOptions{IgnorePins: true})
			if err != nil {
				gcErr <- err
				return
			}
			removed += len(res.RemovedLayers)
		}
	}()
	s := open()
	for i := range 6 {
		target := t.TempDir()
		if _, _, err := s.Mount(ctx, ref, target, MountOptions{}, ImageOptions{}); err != nil {
			t.Fatal(err)
		}
		for l := range 4 {
			if _, err := os.Stat(fmt.Sprintf("%s/layer%03d/file1", target, l)); err != nil {
				t.Errorf("mount %d: %v", i, err)
			}
		}
		if _, err := s.Unmount(ctx, target, UnmountOptions{Remove: true}); err != nil {
			t.Fatal(err)
		}
	}
	close(done)
	if err := <-gcErr; err != nil {
		t.Fatal(err)
	}
	t.Logf("gc removed %d layers while 6 containers came and went", removed)
}

// TestCommitNoChanges: committing a container with no changes writes
// nothing and says so, unless AllowEmpty asks for an empty layer.
func TestCommitNoChanges(t *testing.T) {
	testutil.NeedRoot(t)
	ctx := context.Background()
	ref := buildImage(t, filepath.Join(t.TempDir(), "layout"), "t", 2, 1, 10)
	s := testStore(t)
	for _, copyMode := range []bool{false, true} {
		target := filepath.Join(t.TempDir(), "c")
		must(t, os.Mkdir(target, 0o755))
		if _, _, err := s.Mount(ctx, ref, target, MountOptions{Copy: copyMode}, ImageOptions{}); err != nil {
			t.Fatal(err)
		}
		if !copyMode {
			t.Cleanup(func() { unix.Unmount(target, unix.MNT_DETACH) })
		}
		_, err := s.Commit(ctx, target, layers.ImageRef{Dir: ref.Dir, Tag: "same"}, CommitOptions{})
		if !errors.Is(err, ErrNoChanges) {
			t.Fatalf("copy=%v: commit without changes: %v, want ErrNoChanges", copyMode, err)
		}
		l, err := layers.OpenLayout(ref.Dir)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := l.Resolve(ctx, "same", layers.ResolveOptions{}); err == nil {
			t.Errorf("copy=%v: a refused commit wrote the tag", copyMode)
		}
		res, err := s.Commit(ctx, target, layers.ImageRef{Dir: ref.Dir, Tag: "empty"}, CommitOptions{AllowEmpty: true})
		if err != nil {
			t.Fatalf("copy=%v: AllowEmpty: %v", copyMode, err)
		}
		if n := len(res.Image.Layers); n != 1 || res.Layer.UncompressedSize > emptyTarSize {
			t.Errorf("copy=%v: AllowEmpty wrote %d layers, the new one %d bytes; want one empty layer", copyMode, n, res.Layer.UncompressedSize)
		}
		if _, err := s.Unmount(ctx, target, UnmountOptions{Remove: true}); err != nil {
			t.Fatal(err)
		}
	}
}
