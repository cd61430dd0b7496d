package layers

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/imgtool/imgtool/internal/registry"
	"github.com/imgtool/imgtool/internal/testutil"
)

// The real-registry proofs of pull and push (umoci and skopeo as oracles,
// shared layers, cross-repository mounts, htpasswd, self-signed TLS, a
// corrupted stored blob, rootfs mount and commit of docker://REF) are the
// CLI's, in cmd/imgtool/registry_interop_test.go: they run this package's
// Pull and Push through the commands users type. What the CLI cannot
// reach (a stall timeout shorter than the default) is tested here.

// TestRegistryVanishInterop: the real registry goes away mid-pull behind
// a proxy that stops sending (a dead network path): the pull fails with
// ErrStalled within the timeout and keeps the blobs it finished; pulled
// again once the registry is back, it fetches no finished blob again
// and resumes the broken one from where its partial file ends (a range
// request), so every blob crosses the wire once in all.
func TestRegistryVanishInterop(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	proxy := testutil.StartProxy(t, reg.Host)
	ctx := context.Background()
	m := testutil.PushRandomImage(t, reg.Host+"/vanish/app:v1", types.OCILayer, 48<<10, 200<<10, 3<<20)
	sizes := map[string]int64{m.Config.Digest.String(): m.Config.Size}
	for _, l := range m.Layers {
		sizes[l.Digest.String()] = l.Size
	}
	big := m.Layers[2].Digest.String()

	// The registry stops sending half-way through the big layer.
	const timeout = 1500 * time.Millisecond
	ro := registry.Options{Timeout: timeout}
	dir := filepath.Join(t.TempDir(), "oci")
	ref := proxy.Host + "/vanish/app:v1"
	proxy.Break(testutil.ProxyStall, big, m.Layers[2].Size/2)
	start := time.Now()
	_, err := Pull(ctx, ref, ImageRef{Dir: dir, Tag: "v1"}, PullOptions{Registry: ro})
	took := time.Since(start)
	if !errors.Is(err, registry.ErrStalled) || !strings.Contains(err.Error(), big) {
		t.Fatalf("pull from a registry that went away: %v; want ErrStalled naming %s", err, big)
	}
	if took > timeout+10*time.Second {
		t.Errorf("the stalled pull took %v with a %v timeout", took, timeout)
	}
	if proxy.Stalled() == 0 {
		t.Fatal("the proxy never stalled a response")
	}
	t.Logf("failed after %v: %v", took, err)
	first := proxy.BlobBytes(0)
	finished := map[string]bool{}
	for d := range sizes {
		if _, err := os.Stat(filepath.Join(dir, "blobs", "sha256", strings.TrimPrefix(d, "sha256:"))); err == nil {
			finished[d] = true
		}
	}
	if finished[big] || len(finished) == 0 {
		t.Fatalf("after the failure the layout holds %v; want some blobs, not %s", finished, big)
	}
	l, _ := OpenLayout(dir)
	if tags, _, _ := l.Tags(ctx); len(tags) != 0 {
		t.Errorf("a failed pull tagged %v", tags)
	}

	// Back again: the same pull resumes.
	proxy.Heal()
	mark := proxy.Mark()
	res, err := Pull(ctx, ref, ImageRef{Dir: dir, Tag: "v1"}, PullOptions{Registry: ro})
	if err != nil {
		t.Fatal(err)
	}
	second := proxy.BlobBytes(mark)
	t.Logf("first pull: %v; second pull: %v; %+v", first, second, res)
	for d := range finished {
		if second[d] != 0 {
			t.Errorf("blob %s, finished by the first pull, was fetched again (%d bytes)", d, second[d])
		}
	}
	for d, size := range sizes {
		if finished[d] {
			continue
		}
		// Resumed: the rest of the blob, no more (bytes sent before the
		// failure but lost in flight are fetched again).
		if second[d] == 0 || second[d] > size || first[d]+second[d] < size {
			t.Errorf("blob %s (%d bytes): %d bytes in the first pull, %d in the second", d, size, first[d], second[d])
		}
	}
	var ranged bool
	for _, r := range proxy.Requests()[mark:] {
		if testutil.BlobDigestOf(r.Path) == big && strings.HasPrefix(r.Range, "bytes=") && r.Range != "bytes=0-" {
			ranged = true
		}
	}
	if !ranged || second[big] >= sizes[big] {
		t.Errorf("the second pull did not resume %s with a range request (%d of %d bytes)", big, second[big], sizes[big])
	}
	if res.Present != len(finished) || res.Fetched != len(sizes)-len(finished) {
		t.Errorf("second pull %+v; want %d present, %d fetched", res, len(finished), len(sizes)-len(finished))
	}
	if _, err := l.Verify(ctx, Limits{}); err != nil {
		t.Fatal(err)
	}
}
