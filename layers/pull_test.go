package layers

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
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/imgtool/imgtool/internal/registry"
)

// pullTestRegistry serves go-containerregistry's in-memory registry
// through wrap (nil: as it is) and returns its host:port.
func pullTestRegistry(t *testing.T, wrap func(http.Handler) http.Handler) string {
	t.Helper()
	var h http.Handler = ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func pullTestPush(t *testing.T, host, repo string, img v1.Image) name.Reference {
	t.Helper()
	ref, err := name.ParseReference(host + "/" + repo)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	return ref
}

func pullTestImage(t *testing.T, size, n int64) v1.Image {
	t.Helper()
	img, err := random.Image(size, n)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestPullLayout(t *testing.T) {
	var blobGets atomic.Int64
	host := pullTestRegistry(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
				blobGets.Add(1)
			}
			h.ServeHTTP(w, r)
		})
	})
	img := pullTestImage(t, 64<<10, 3)
	pullTestPush(t, host, "test/a:v1", img)
	dir := t.TempDir()
	ctx := context.Background()
	var reports atomic.Int64
	res, err := Pull(ctx, "docker://"+host+"/test/a:v1", ImageRef{Dir: dir, Tag: "one"}, PullOptions{Progress: func(registry.Progress) { reports.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	if res.Fetched != 4 || res.Present != 0 || res.Blobs != 4 {
		t.Errorf("first pull: %+v, want 4 blobs fetched", res)
	}
	if reports.Load() == 0 {
		t.Error("no progress reports")
	}
	want, _ := img.Digest()
	if res.Descriptor.Digest.String() != want.String() {
		t.Errorf("tag points at %s, want %s", res.Descriptor.Digest, want)
	}
	l, err := OpenLayout(dir)
	if err != nil {
		t.Fatal(err)
	}
	if rep, err := l.Verify(ctx, Limits{}); err != nil || rep.Images != 1 {
		t.Fatalf("verify: %+v %v", rep, err)
	}
	before := blobGets.Load()
	res, err = Pull(ctx, host+"/test/a:v1", ImageRef{Dir: dir, Tag: "two"}, PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Fetched != 0 || res.Present != 4 || blobGets.Load() != before {
		t.Errorf("second pull fetched %d blobs (%d GETs), want none: %+v", res.Fetched, blobGets.Load()-before, res)
	}
}

func TestPullPlatforms(t *testing.T) {
	host := pullTestRegistry(t, nil)
	amd := pullTestImage(t, 1024, 1)
	arm := pullTestImage(t, 1024, 2)
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}}},
	)
	ref, _ := name.ParseReference(host + "/multi:latest")
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	dir := t.TempDir()
	res, err := Pull(ctx, ref.String(), ImageRef{Dir: dir, Tag: "arm"}, PullOptions{Platform: &v1Platform{OS: "linux", Architecture: "arm64"}})
	if err != nil {
		t.Fatal(err)
	}
	want, _ := arm.Digest()
	if res.Descriptor.Digest.String() != want.String() || res.Blobs != 3 {
		t.Errorf("arm pull: %+v, want manifest %s with 3 blobs", res, want)
	}
	if _, err := Pull(ctx, ref.String(), ImageRef{Dir: dir, Tag: "s390"}, PullOptions{Platform: &v1Platform{OS: "linux", Architecture: "s390x"}}); !errors.Is(err, ErrNoMatchingPlatform) {
		t.Errorf("s390x: %v, want ErrNoMatchingPlatform", err)
	}
	res, err = Pull(ctx, ref.String(), ImageRef{Dir: dir, Tag: "all"}, PullOptions{AllPlatforms: true})
	if err != nil {
		t.Fatal(err)
	}
	wantIdx, _ := idx.Digest()
	if res.Descriptor.Digest.String() != wantIdx.String() || res.Present != 3 || res.Fetched != 2 {
		t.Errorf("all platforms: %+v, want index %s, 3 present, 2 fetched", res, wantIdx)
	}
	l, _ := OpenLayout(dir)
	if rep, err := l.Verify(ctx, Limits{}); err != nil || rep.Images != 3 {
		t.Fatalf("verify: %+v %v", rep, err)
	}
}

func TestPullCorruptBlob(t *testing.T) {
	img := pullTestImage(t, 32<<10, 2)
	ls, _ := img.Layers()
	bad, _ := ls[1].Digest()
	host := pullTestRegistry(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, bad.String()) {
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, r)
				b := rec.Body.Bytes()
				b[len(b)/2] ^= 1
				w.Header().Set("Content-Length", rec.Header().Get("Content-Length"))
				w.WriteHeader(rec.Code)
				w.Write(b)
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	pullTestPush(t, host, "corrupt", img)
	dir := t.TempDir()
	_, err := Pull(context.Background(), host+"/corrupt", ImageRef{Dir: dir, Tag: "latest"}, PullOptions{})
	if !errors.Is(err, ErrBlobCorrupt) || !strings.Contains(err.Error(), bad.String()) {
		t.Fatalf("err = %v, want ErrBlobCorrupt naming %s", err, bad)
	}
	if _, err := os.Stat(filepath.Join(dir, "blobs", "sha256", bad.Hex)); !os.IsNotExist(err) {
		t.Errorf("corrupt blob kept: %v", err)
	}
	ents, _ := os.ReadDir(filepath.Join(dir, "blobs", "sha256"))
	for _, e := range ents {
		if strings.Contains(e.Name(), bad.Hex) {
			t.Errorf("left %s behind", e.Name())
		}
	}
	l, _ := OpenLayout(dir)
	if tags, _, _ := l.Tags(context.Background()); len(tags) != 0 {
		t.Errorf("tags %v after a failed pull", tags)
	}
}

// TestPullResume cuts the first download of the big layer half-way, then
// checks that a second pull fetches only the rest (a ranged request).
func TestPullResume(t *testing.T) {
	img := pullTestImage(t, 1<<20, 1)
	ls, _ := img.Layers()
	big, _ := ls[0].Digest()
	bigSize, _ := ls[0].Size()
	var cut atomic.Bool
	cut.Store(true)
	var ranged atomic.Value
	ranged.Store("")
	host := pullTestRegistry(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, big.String()) {
				rec := httptest.NewRecorder()
				whole := r.Clone(r.Context())
				whole.Header.Del("Range")
				h.ServeHTTP(rec, whole)
				b := rec.Body.Bytes()
				if cut.Swap(false) {
					// Promise all, send half, drop the connection.
					w.Header().Set("Content-Length", rec.Header().Get("Content-Length"))
					w.WriteHeader(200)
					w.Write(b[:len(b)/2])
					panic(http.ErrAbortHandler)
				}
				if rg := r.Header.Get("Range"); rg != "" {
					ranged.Store(rg)
					var off int
					if _, err := fmtSscanf(rg, "bytes=%d-", &off); err != nil {
						w.WriteHeader(400)
						return
					}
					w.Header().Set("Content-Range", "bytes "+pitoa(off)+"-"+pitoa(len(b)-1)+"/"+pitoa(len(b)))
					w.Header().Set("Content-Length", pitoa(len(b)-off))
					w.WriteHeader(http.StatusPartialContent)
					w.Write(b[off:])
					return
				}
				w.WriteHeader(rec.Code)
				w.Write(b)
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	pullTestPush(t, host, "resume", img)
	dir := t.TempDir()
	ctx := context.Background()
	if _, err := Pull(ctx, host+"/resume", ImageRef{Dir: dir, Tag: "latest"}, PullOptions{}); err == nil {
		t.Fatal("first pull did not fail")
	}
	res, err := Pull(ctx, host+"/resume", ImageRef{Dir: dir, Tag: "latest"}, PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rg := ranged.Load().(string); rg == "" || rg == "bytes=0-" {
		t.Errorf("second pull did not resume (Range %q)", rg)
	}
	if res.Bytes >= bigSize {
		t.Errorf("second pull moved %d bytes, the layer is %d", res.Bytes, bigSize)
	}
	l, _ := OpenLayout(dir)
	if _, err := l.Verify(ctx, Limits{}); err != nil {
		t.Fatal(err)
	}
}

// TestPullStall: a registry that stops sending mid-blob fails the pull
// within the timeout.
func TestPullStall(t *testing.T) {
	img := pullTestImage(t, 256<<10, 1)
	ls, _ := img.Layers()
	big, _ := ls[0].Digest()
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	host := pullTestRegistry(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, big.String()) {
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, r)
				w.Header().Set("Content-Length", rec.Header().Get("Content-Length"))
				w.WriteHeader(200)
				w.Write(rec.Body.Bytes()[:1000])
				w.(http.Flusher).Flush()
				select {
				case <-stop:
				case <-r.Context().Done():
				}
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	pullTestPush(t, host, "stall", img)
	start := time.Now()
	_, err := Pull(context.Background(), host+"/stall", ImageRef{Dir: t.TempDir(), Tag: "latest"}, PullOptions{Registry: registry.Options{Timeout: 500 * time.Millisecond}})
	if !errors.Is(err, registry.ErrStalled) {
		t.Fatalf("err = %v, want ErrStalled", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("took %v", d)
	}
}

func TestPullBadInput(t *testing.T) {
	host := pullTestRegistry(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch {
			case strings.HasSuffix(r.URL.Path, "/huge/manifests/latest"):
				w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
				w.Header().Set("Content-Length", pitoa(5<<20))
				w.WriteHeader(200)
				w.Write(make([]byte, 5<<20))
			case strings.HasSuffix(r.URL.Path, "/odd/manifests/latest"):
				b := []byte(`{"schemaVersion":2}`)
				w.Header().Set("Content-Type", "application/x-odd")
				w.Header().Set("Docker-Content-Digest", "sha256:"+sha256hex(b))
				w.Write(b)
			default:
				h.ServeHTTP(w, r)
			}
		})
	})
	ctx := context.Background()
	cases := []struct {
		ref  string
		want error
	}{
		{host + "/huge", registry.ErrManifestTooLarge},
		{host + "/odd", ErrUnsupportedMediaType},
		{"docker://UPPER/Case::x", registry.ErrInvalidReference},
		{host + "/missing:tag", nil},
	}
	for _, c := range cases {
		_, err := Pull(ctx, c.ref, ImageRef{Dir: t.TempDir(), Tag: "latest"}, PullOptions{})
		if err == nil || (c.want != nil && !errors.Is(err, c.want)) {
			t.Errorf("%s: err = %v, want %v", c.ref, err, c.want)
		}
		if err != nil && !strings.Contains(err.Error(), strings.TrimPrefix(c.ref, "docker://")) && !strings.Contains(err.Error(), c.ref) {
			t.Errorf("%s: error %q does not name the reference", c.ref, err)
		}
	}
}
