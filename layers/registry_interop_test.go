package layers

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/imgtool/imgtool/internal/registry"
	"github.com/imgtool/imgtool/internal/testutil"
	"github.com/imgtool/imgtool/internal/treecmp"
)

var blobGet = regexp.MustCompile(`"GET /v2/[^ ]+/blobs/(sha256:[0-9a-f]{64}) HTTP/[0-9.]+" (200|206) ([0-9]+)`)

// blobBytes sums the bytes of blob GETs in reg's access log from byte
// offset from on, by digest, and returns the log's length for the next
// call.
func blobBytes(reg *testutil.Registry, from int) (map[string]int64, int) {
	log := reg.Log()
	got := map[string]int64{}
	for _, m := range blobGet.FindAllStringSubmatch(log[min(from, len(log)):], -1) {
		n, _ := strconv.ParseInt(m[3], 10, 64)
		got[m[1]] += n
	}
	return got, len(log)
}

// umociImage builds DIR:TAG with umoci from the trees, one layer each,
// on top of the image base names (or a new one).
func umociImage(t *testing.T, dir, base, tag string, trees ...func(root string)) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(dir, "index.json")); err != nil {
		testutil.Run(t, "umoci", "init", "--layout", dir)
	}
	if base == "" {
		testutil.Run(t, "umoci", "new", "--image", dir+":"+tag)
	} else {
		testutil.Run(t, "umoci", "tag", "--image", dir+":"+base, tag)
	}
	for _, tree := range trees {
		bundle := filepath.Join(t.TempDir(), "bundle")
		testutil.Run(t, "umoci", "unpack", "--image", dir+":"+tag, bundle)
		tree(filepath.Join(bundle, "rootfs"))
		testutil.Run(t, "umoci", "repack", "--image", dir+":"+tag, bundle)
	}
}

func sameTrees(t *testing.T, want, got string) {
	t.Helper()
	opts := treecmp.Options{NoDirMtime: true}
	w, err := treecmp.Snapshot(want, opts)
	if err != nil {
		t.Fatal(err)
	}
	g, err := treecmp.Snapshot(got, opts)
	if err != nil {
		t.Fatal(err)
	}
	if d := treecmp.Diff(w, g); len(d) > 0 {
		t.Errorf("trees differ:\n%s", strings.Join(d, "\n"))
	}
}

// TestRegistryInterop holds Pull and Push to the real registry with
// skopeo and umoci as oracles: an image built by umoci and pushed by
// skopeo pulls and unpacks identically; an image pushed here copies back
// with skopeo and unpacks identically; a second image sharing layers
// moves only its new layer; a corrupted blob in the registry's storage is
// caught and nothing of it is kept.
func TestRegistryInterop(t *testing.T) {
	testutil.NeedTool(t, "umoci")
	testutil.NeedTool(t, "skopeo")
	testutil.NeedRoot(t) // umoci unpack/repack keep owners
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	ctx := context.Background()
	ro := registry.Options{Insecure: true}
	work := t.TempDir()

	src := filepath.Join(work, "umoci")
	umociImage(t, src, "", "v1", func(root string) { imgTestTreeA(t, root) })
	umociImage(t, src, "v1", "v2", func(root string) {
		imgTestWrite(t, root, "srv/new-in-v2", strings.Repeat("v2 data\n", 4096), 0o644, 0, 0)
	})
	for _, tag := range []string{"v1", "v2"} {
		testutil.Run(t, "skopeo", "copy", "--dest-tls-verify=false", "oci:"+src+":"+tag, "docker://"+reg.Host+"/umoci/app:"+tag)
	}

	// Pull v1; umoci unpacks both layouts the same.
	got := filepath.Join(work, "pulled")
	_, mark := blobBytes(reg, 0)
	if _, err := Pull(ctx, reg.Host+"/umoci/app:v1", ImageRef{Dir: got, Tag: "v1"}, PullOptions{Registry: ro}); err != nil {
		t.Fatal(err)
	}
	sameTrees(t, imgTestUmociRawUnpack(t, src+":v1"), imgTestUmociRawUnpack(t, got+":v1"))
	first, mark := blobBytes(reg, mark)
	if len(first) < 2 {
		t.Fatalf("the access log shows %d blob GETs for the first pull; want the layer and config:\n%s", len(first), reg.Log())
	}

	// Pull v2 into the same layout: only v2's new layer (and config).
	res, err := Pull(ctx, "docker://"+reg.Host+"/umoci/app:v2", ImageRef{Dir: got, Tag: "v2"}, PullOptions{Registry: ro})
	if err != nil {
		t.Fatal(err)
	}
	second, _ := blobBytes(reg, mark)
	t.Logf("first pull: %v; second pull: %v", first, second)
	for d := range second {
		if _, again := first[d]; again {
			t.Errorf("pull of v2 fetched %s again (%d bytes), which v1 had brought", d, second[d])
		}
	}
	l, err := OpenLayout(got)
	if err != nil {
		t.Fatal(err)
	}
	v2, err := l.Resolve(ctx, "v2", ResolveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	newLayer := v2.Manifest.Layers[len(v2.Manifest.Layers)-1]
	var moved int64
	for _, n := range second {
		moved += n
	}
	if second[newLayer.Digest.String()] != newLayer.Size || moved > newLayer.Size+v2.Manifest.Config.Size {
		t.Errorf("pull of v2 moved %d bytes (%v); want only the new layer (%d) and the config (%d); result %+v",
			moved, second, newLayer.Size, v2.Manifest.Config.Size, res)
	}
	sameTrees(t, imgTestUmociRawUnpack(t, src+":v2"), imgTestUmociRawUnpack(t, got+":v2"))

	// Push v2 under another name; skopeo copies it back; same tree.
	if _, err := Push(ctx, ImageRef{Dir: got, Tag: "v2"}, reg.Host+"/imgtool/app:v2", PushOptions{Registry: ro}); err != nil {
		t.Fatal(err)
	}
	back := filepath.Join(work, "back")
	testutil.Run(t, "skopeo", "copy", "--src-tls-verify=false", "docker://"+reg.Host+"/imgtool/app:v2", "oci:"+back+":v2")
	sameTrees(t, imgTestUmociRawUnpack(t, src+":v2"), imgTestUmociRawUnpack(t, back+":v2"))

	// A corrupted blob in the registry's storage: the pull fails naming
	// it, and the layout keeps nothing of it.
	hex := newLayer.Digest.Encoded()
	data := reg.BlobPath(newLayer.Digest.String())
	b, err := os.ReadFile(data)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(data, b, 0o644); err != nil {
		t.Fatal(err)
	}
	fresh := filepath.Join(work, "fresh")
	_, err = Pull(ctx, reg.Host+"/umoci/app:v2", ImageRef{Dir: fresh, Tag: "v2"}, PullOptions{Registry: ro})
	if err == nil || !strings.Contains(err.Error(), hex) {
		t.Fatalf("pull of a corrupted blob: %v; want an error naming %s", err, newLayer.Digest)
	}
	filepath.Walk(fresh, func(p string, fi os.FileInfo, err error) error {
		if err == nil && strings.Contains(filepath.Base(p), hex) {
			t.Errorf("the corrupted blob left %s in the layout", p)
		}
		return nil
	})
}

// TestRegistryAuthInterop: a self-signed TLS registry with htpasswd
// authentication. TLS is refused unless verification is turned off;
// pull and push work with --creds and with an auth file, and without
// credentials the error names the registry and the files tried.
func TestRegistryAuthInterop(t *testing.T) {
	dir := t.TempDir()
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{Auth: true})
	creds := testutil.RegistryUser + ":" + testutil.RegistryPassword

	ctx := context.Background()
	src := t.TempDir()
	imgTestTreeA(t, filepath.Join(src, "tree"))
	layout := filepath.Join(src, "layout")
	if _, err := Build(ctx, layout, BuildOptions{Layers: []string{filepath.Join(src, "tree")}, Tag: "v1"}); err != nil {
		t.Fatal(err)
	}
	ref := reg.Host + "/private/app:v1"
	// No credential file anywhere the default keychain looks.
	env := func(k string) string {
		if k == "HOME" {
			return dir
		}
		return ""
	}

	// Verified TLS (the default) refuses the self-signed certificate.
	_, err := Push(ctx, ImageRef{Dir: layout, Tag: "v1"}, ref, PushOptions{Registry: registry.Options{Creds: creds, Env: env}})
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("push to a self-signed registry with verification: %v, want a certificate error", err)
	}
	// --creds and --tls-verify=false.
	if _, err := Push(ctx, ImageRef{Dir: layout, Tag: "v1"}, ref, PushOptions{Registry: registry.Options{Creds: creds, Insecure: true, Env: env}}); err != nil {
		t.Fatal(err)
	}
	// No credentials: refused, naming the registry and what was tried.
	_, err = Pull(ctx, ref, ImageRef{Dir: filepath.Join(dir, "none"), Tag: "v1"}, PullOptions{Registry: registry.Options{Insecure: true, Env: env}})
	if err == nil || !strings.Contains(err.Error(), reg.Host) || !strings.Contains(err.Error(), "tried") {
		t.Fatalf("pull without credentials: %v; want an error naming %s and the files tried", err, reg.Host)
	}
	if _, err := os.Stat(filepath.Join(dir, "none", "blobs")); err == nil {
		entries, _ := os.ReadDir(filepath.Join(dir, "none", "blobs", "sha256"))
		if len(entries) > 0 {
			t.Errorf("a refused pull kept %d blobs", len(entries))
		}
	}
	// Wrong password: refused.
	_, err = Pull(ctx, ref, ImageRef{Dir: filepath.Join(dir, "wrong"), Tag: "v1"}, PullOptions{Registry: registry.Options{Creds: testutil.RegistryUser + ":nope", Insecure: true, Env: env}})
	if err == nil || !strings.Contains(err.Error(), reg.Host) {
		t.Fatalf("pull with a wrong password: %v", err)
	}
	// An auth file, as podman and docker write it.
	auth := filepath.Join(dir, "auth.json")
	os.WriteFile(auth, []byte(fmt.Sprintf(`{"auths": {%q: {"auth": %q}}}`, reg.Host, base64.StdEncoding.EncodeToString([]byte(creds)))), 0o600)
	got := filepath.Join(dir, "pulled")
	if _, err := Pull(ctx, ref, ImageRef{Dir: got, Tag: "v1"}, PullOptions{Registry: registry.Options{AuthFile: auth, Insecure: true, Env: env}}); err != nil {
		t.Fatalf("pull with --authfile: %v", err)
	}
	if testutil.InteropRequired() || os.Geteuid() == 0 {
		sameTrees(t, imgTestOurUnpack(t, layout, "v1"), imgTestOurUnpack(t, got, "v1"))
	}
}

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
	img := empty.Image
	for _, size := range []int64{48 << 10, 200 << 10, 3 << 20} {
		l, err := random.Layer(size, types.OCILayer)
		if err != nil {
			t.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			t.Fatal(err)
		}
	}
	nr, err := name.ParseReference(reg.Host + "/vanish/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(nr, img); err != nil {
		t.Fatal(err)
	}
	m, _ := img.Manifest()
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
	_, err = Pull(ctx, ref, ImageRef{Dir: dir, Tag: "v1"}, PullOptions{Registry: ro})
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
