package overlay

import (
	"context"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/imgtool/imgtool/internal/registry"
	"github.com/imgtool/imgtool/internal/testutil"
	"github.com/imgtool/imgtool/internal/treecmp"
	"github.com/imgtool/imgtool/layers"
)

// remoteTestImage builds an n-layer gzip image in a layout, pushes it to
// an in-process registry served through wrap, and returns the layout ref
// and the registry reference.
func remoteTestImage(t *testing.T, n int, wrap func(http.Handler) http.Handler) (layers.ImageRef, string) {
	t.Helper()
	var h http.Handler = ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	ref := buildImageGz(t, filepath.Join(t.TempDir(), "oci"), "v1", n, 3, 5000, true)
	l, err := layers.OpenLayout(ref.Dir)
	if err != nil {
		t.Fatal(err)
	}
	img, err := l.Image(context.Background(), ref.Tag)
	if err != nil {
		t.Fatal(err)
	}
	r := strings.TrimPrefix(srv.URL, "http://") + "/test/img:v1"
	nr, _ := name.ParseReference(r)
	if err := remote.Write(nr, img); err != nil {
		t.Fatal(err)
	}
	return ref, "docker://" + r
}

func TestUnpackRemote(t *testing.T) {
	var blobGets atomic.Int64
	local, ref := remoteTestImage(t, 4, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
				blobGets.Add(1)
			}
			h.ServeHTTP(w, r)
		})
	})
	ctx := context.Background()
	s := testStore(t)
	var bytes atomic.Int64
	st, err := s.UnpackRemote(ctx, ref, ImageOptions{}, RemoteOptions{Progress: func(p registry.Progress) {
		if p.State == registry.BlobDone {
			bytes.Add(p.Size)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	if st.Unpacked != 4 || bytes.Load() == 0 {
		t.Errorf("stats %+v, %d bytes reported", st, bytes.Load())
	}
	// The same layers as unpacking from the layout.
	s2 := testStore(t)
	if _, err := s2.Unpack(ctx, local, ImageOptions{}); err != nil {
		t.Fatal(err)
	}
	want, _ := s2.Layers()
	got, _ := s.Layers()
	if len(got) != len(want) {
		t.Fatalf("%d layers, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].ChainID != want[i].ChainID {
			t.Fatalf("layer %d: %s, want %s", i, got[i].ChainID, want[i].ChainID)
		}
		a, err := treecmp.Snapshot(want[i].Dir, treecmp.Options{})
		if err != nil {
			t.Fatal(err)
		}
		b, err := treecmp.Snapshot(got[i].Dir, treecmp.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if d := treecmp.Diff(a, b); len(d) > 0 {
			t.Errorf("layer %d differs: %v", i, d)
		}
	}
	// Again: nothing fetched but the config.
	before := blobGets.Load()
	st, err = s.UnpackRemote(ctx, ref, ImageOptions{}, RemoteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Present != 4 || blobGets.Load()-before != 1 {
		t.Errorf("second unpack: %+v, %d blob GETs (want only the config)", st, blobGets.Load()-before)
	}
	// The pin survives gc; gc --all drops it.
	if res, err := s.GC(ctx, GCOptions{}); err != nil || len(res.RemovedLayers) != 0 {
		t.Errorf("gc: %+v %v", res, err)
	}
}

func TestUnpackRemoteCorrupt(t *testing.T) {
	var bad atomic.Value
	bad.Store("")
	_, ref := remoteTestImage(t, 3, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if d := bad.Load().(string); d != "" && r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, d) {
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, r)
				b := rec.Body.Bytes()
				b[len(b)-10] ^= 0xff // in the gzip trailer's region: the tar still parses
				w.WriteHeader(rec.Code)
				w.Write(b)
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	c, _ := registry.New(registry.Options{})
	img, err := layers.ResolveRemote(context.Background(), c, ref, layers.RemoteResolveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d := img.Manifest.Layers[1].Digest
	bad.Store(d.String())
	s := testStore(t)
	_, err = s.UnpackRemote(context.Background(), ref, ImageOptions{}, RemoteOptions{Client: c})
	if err == nil || !strings.Contains(err.Error(), d.String()) {
		t.Fatalf("err = %v, want an error naming %s", err, d)
	}
	ls, _ := s.Layers()
	for _, l := range ls {
		if l.Blob == d {
			t.Errorf("corrupt layer %s committed", d)
		}
	}
	if ents, _ := os.ReadDir(s.path("tmp")); len(ents) != 0 {
		t.Errorf("tmp holds %d entries", len(ents))
	}
}

func TestMountRemote(t *testing.T) {
	testutil.NeedRoot(t)
	_, ref := remoteTestImage(t, 2, nil)
	s := testStore(t)
	target := t.TempDir()
	c, st, err := s.MountRemote(context.Background(), ref, target, MountOptions{}, ImageOptions{}, RemoteOptions{})
	if errors.Is(err, ErrMountUnsupported) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Unmount(context.Background(), target, UnmountOptions{Remove: true}) })
	if st.Unpacked != 2 || !strings.HasPrefix(c.ImageDir, "docker://") {
		t.Errorf("stats %+v, container image %q", st, c.ImageDir)
	}
	if b, err := os.ReadFile(filepath.Join(target, "top")); err != nil || string(b) != "1" {
		t.Errorf("top = %q, %v; want the top layer's", b, err)
	}
}
