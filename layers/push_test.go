package layers

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/imgtool/imgtool/internal/registry"
)

func TestPushLayout(t *testing.T) {
	var mounts, puts atomic.Int64
	count := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPost && r.URL.Query().Get("mount") != "" {
				mounts.Add(1)
			}
			if r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/blobs/uploads/") {
				puts.Add(1)
			}
			h.ServeHTTP(w, r)
		})
	}
	src := pullTestRegistry(t, nil)
	// The in-process registry keeps blobs by digest for all repositories,
	// so the push goes to a second one, where they are all missing (the
	// real registry's per-repository blobs and mounts are interop tests').
	dst := pullTestRegistry(t, count)
	img := pullTestImage(t, 16<<10, 3)
	pullTestPush(t, src, "src/app:v1", img)
	dir := t.TempDir()
	ctx := context.Background()
	if _, err := Pull(ctx, src+"/src/app:v1", ImageRef{Dir: dir, Tag: "v1"}, PullOptions{}); err != nil {
		t.Fatal(err)
	}
	var skipped atomic.Int64
	res, err := Push(ctx, ImageRef{Dir: dir, Tag: "v1"}, "docker://"+dst+"/dst/app:v2", PushOptions{Progress: func(p registry.Progress) {
		if p.State == registry.BlobSkipped {
			skipped.Add(1)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	// The image came from another registry: no mount is asked for.
	if mounts.Load() != 0 || res.Uploaded != 3 || res.Blobs != 3 || skipped.Load() != 0 {
		t.Errorf("push: %+v, %d mount requests, %d skipped; want 3 uploads and nothing else", res, mounts.Load(), skipped.Load())
	}
	ref, _ := name.ParseReference(dst + "/dst/app:v2")
	got, err := remote.Head(ref)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	if got.Digest != want {
		t.Errorf("pushed %s, want %s", got.Digest, want)
	}
	// Again: the registry has everything, and nothing is uploaded.
	puts.Store(0)
	res, err = Push(ctx, ImageRef{Dir: dir, Tag: "v1"}, dst+"/dst/app:v3", PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Uploaded != 0 || res.Skipped != 3 || puts.Load() != 0 {
		t.Errorf("second push: %+v, %d blob PUTs; want none", res, puts.Load())
	}
}

func TestPushIndex(t *testing.T) {
	host := pullTestRegistry(t, nil)
	a, b := pullTestImage(t, 1024, 1), pullTestImage(t, 1024, 2)
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: a, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: b, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
	)
	ref, _ := name.ParseReference(host + "/multi:latest")
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ctx := context.Background()
	if _, err := Pull(ctx, ref.String(), ImageRef{Dir: dir, Tag: "all"}, PullOptions{AllPlatforms: true}); err != nil {
		t.Fatal(err)
	}
	res, err := Push(ctx, ImageRef{Dir: dir, Tag: "all"}, host+"/copy:all", PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want, _ := idx.Digest()
	dst, _ := name.ParseReference(host + "/copy:all")
	got, err := remote.Head(dst)
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != want || res.Descriptor.Digest.String() != want.String() || res.Blobs != 3 {
		t.Errorf("pushed %s (%+v), want index %s with 3 layers", got.Digest, res, want)
	}
}
