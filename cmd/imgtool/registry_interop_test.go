package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/imgtool/imgtool/internal/testutil"
	"github.com/imgtool/imgtool/internal/treecmp"
	"github.com/imgtool/imgtool/layers"
	"github.com/imgtool/imgtool/overlay"
)

// registryUmociLayout builds with umoci a layout with tags v1 (two
// layers) and v2 (v1's layers plus one), and returns its directory.
func registryUmociLayout(t *testing.T) string {
	t.Helper()
	dir, step := testutil.UmociLayout(t)
	w := func(r, p, s string, mode os.FileMode, uid int) {
		t.Helper()
		p = filepath.Join(r, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(p, uid, uid); err != nil {
			t.Fatal(err)
		}
	}
	step("base", "l1", func(r string) {
		w(r, "etc/passwd", "root:x:0:0::/root:/bin/sh\n", 0o644, 0)
		w(r, "usr/bin/tool", strings.Repeat("binary ", 40000), 0o4755, 0)
		w(r, "home/user/notes", "notes\n", 0o640, 1000)
		if err := os.Symlink("../usr/bin/tool", filepath.Join(r, "etc/tool-link")); err != nil {
			t.Fatal(err)
		}
	})
	step("l1", "v1", func(r string) {
		w(r, "srv/data", strings.Repeat("data ", 100000), 0o600, 42)
		if err := os.Remove(filepath.Join(r, "home/user/notes")); err != nil {
			t.Fatal(err)
		}
	})
	step("v1", "v2", func(r string) {
		w(r, "var/log/app.log", strings.Repeat("log line\n", 50000), 0o644, 0)
		if err := os.RemoveAll(filepath.Join(r, "srv")); err != nil {
			t.Fatal(err)
		}
	})
	return dir
}

// registryCompare unpacks both layout refs with umoci raw unpack and
// compares the trees.
func registryCompare(t *testing.T, a, b string) {
	t.Helper()
	da, db := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	testutil.Run(t, "umoci", "raw", "unpack", "--image", a, da)
	testutil.Run(t, "umoci", "raw", "unpack", "--image", b, db)
	registryCompareDirs(t, da, db)
}

func registryCompareDirs(t *testing.T, want, got string) {
	t.Helper()
	registryCompareDirsOpts(t, want, got, treecmp.Options{})
}

func registryCompareDirsOpts(t *testing.T, want, got string, o treecmp.Options) {
	t.Helper()
	sa, err := treecmp.Snapshot(want, o)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := treecmp.Snapshot(got, o)
	if err != nil {
		t.Fatal(err)
	}
	if d := treecmp.Diff(sa, sb); len(d) > 0 {
		t.Errorf("%s and %s differ:\n%s", want, got, strings.Join(d, "\n"))
	}
	if len(sa) < 5 {
		t.Errorf("only %d entries in %s", len(sa), want)
	}
}

func registryRun(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errb := imageTestRun(t, args...)
	if code != 0 {
		t.Fatalf("imgtool %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errb)
	}
	return out
}

func registryFail(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errb := imageTestRun(t, args...)
	if code == 0 {
		t.Fatalf("imgtool %s succeeded, want a failure\n%s", strings.Join(args, " "), out)
	}
	return errb
}

// TestRegistryInterop: an umoci image pushed by skopeo to the real
// registry, pulled by imgtool; the second tag shares layers and moves only
// the new one (bytes counted by a proxy between imgtool and the registry,
// and in the registry's access log); imgtool's push (with a
// cross-repository mount) copied back by skopeo unpacks the same.
func TestRegistryInterop(t *testing.T) {
	testutil.NeedTool(t, "skopeo")
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	proxy := testutil.StartProxy(t, reg.Host)
	src := registryUmociLayout(t)
	for _, tag := range []string{"v1", "v2"} {
		testutil.Run(t, "skopeo", "copy", "--dest-tls-verify=false", "oci:"+src+":"+tag, "docker://"+reg.Host+"/test/app:"+tag)
	}
	dst := filepath.Join(t.TempDir(), "pulled")
	mark := len(reg.Log())
	registryRun(t, "image", "pull", "-p", "docker://"+proxy.Host+"/test/app:v1", dst+":v1")
	v1Bytes := reg.BlobBytesSent(mark)
	registryCompare(t, src+":v1", dst+":v1")
	if _, err := os.Stat(filepath.Join(dst, "blobs")); err != nil {
		t.Fatal(err)
	}

	// v2 shares v1's two layers: only its new layer and config move.
	l, err := layers.OpenLayout(src)
	if err != nil {
		t.Fatal(err)
	}
	img2, err := l.Resolve(t.Context(), "v2", layers.ResolveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	newLayer := img2.Manifest.Layers[len(img2.Manifest.Layers)-1]
	mark, pmark := len(reg.Log()), proxy.Mark()
	out := registryRun(t, "image", "pull", "--output", "json", proxy.Host+"/test/app:v2", dst+":v2")
	var res layers.PullResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatal(err)
	}
	got, want := reg.BlobBytesSent(mark), newLayer.Size+img2.Manifest.Config.Size
	moved := proxy.BlobBytes(pmark)
	if got != want || res.Fetched != 2 || res.Present != 2 || len(moved) != 2 || moved[newLayer.Digest.String()] != newLayer.Size || moved[img2.Manifest.Config.Digest.String()] != img2.Manifest.Config.Size {
		t.Errorf("second pull moved %d blob bytes by the log, %v through the proxy (%+v); want %d (the new layer and the config; v1 moved %d)", got, moved, res, want, v1Bytes)
	}
	registryCompare(t, src+":v2", dst+":v2")

	// Push to another repository of the same registry: the blobs are
	// mounted from test/app (recorded at pull), nothing uploaded.
	mark, pmark = len(reg.Log()), proxy.Mark()
	out = registryRun(t, "image", "push", "--output", "json", dst+":v2", "docker://"+proxy.Host+"/copy/app:v2")
	var pres layers.PushResult
	if err := json.Unmarshal([]byte(out), &pres); err != nil {
		t.Fatal(err)
	}
	log := reg.Log()[mark:]
	var sent int64
	for _, r := range proxy.Requests()[pmark:] {
		sent += r.In
	}
	if pres.Uploaded != 0 || pres.Skipped != 3 || strings.Count(log, "from=test") != 3 || sent > img2.Descriptor.Size+img2.Manifest.Config.Size {
		t.Errorf("push to copy/app: %+v, %d bytes sent; want 3 layers mounted from test/app, only config and manifest sent; log:\n%s", pres, sent, log)
	}
	// Push to a fresh registry: everything uploaded; skopeo copies it back.
	reg2 := testutil.StartRegistry(t, testutil.RegistryOptions{})
	out = registryRun(t, "image", "push", "--output", "json", dst+":v2", reg2.Host+"/pushed:v2")
	if err := json.Unmarshal([]byte(out), &pres); err != nil {
		t.Fatal(err)
	}
	if pres.Uploaded != 3 {
		t.Errorf("push to a new registry: %+v, want 3 uploads", pres)
	}
	back := filepath.Join(t.TempDir(), "back")
	testutil.Run(t, "skopeo", "copy", "--src-tls-verify=false", "docker://"+reg2.Host+"/pushed:v2", "oci:"+back+":v2")
	registryCompare(t, src+":v2", back+":v2")
	// Pushed by digest the same bytes: same manifest digest.
	if pres.Descriptor.Digest != img2.Descriptor.Digest {
		t.Errorf("pushed manifest %s, the layout's is %s", pres.Descriptor.Digest, img2.Descriptor.Digest)
	}
}

// TestRegistryInteropAuth: an htpasswd registry (TLS, self-signed).
func TestRegistryInteropAuth(t *testing.T) {
	testutil.NeedTool(t, "skopeo")
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{Auth: true})
	src := registryUmociLayout(t)
	creds := testutil.RegistryUser + ":" + testutil.RegistryPassword
	testutil.Run(t, "skopeo", "copy", "--dest-cert-dir", reg.CertDir, "--dest-creds", creds, "oci:"+src+":v1", "docker://"+reg.Host+"/sec/app:v1")
	ref := "docker://" + reg.Host + "/sec/app:v1"
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("XDG_RUNTIME_DIR", "")
	t.Setenv("XDG_CONFIG_HOME", "")
	t.Setenv("REGISTRY_AUTH_FILE", "")
	t.Setenv("DOCKER_CONFIG", "")

	// No credentials: refused, naming the registry and the files tried.
	msg := registryFail(t, "image", "pull", "--tls-verify=false", ref, filepath.Join(t.TempDir(), "x"))
	for _, want := range []string{reg.Host, "none were found", filepath.Join(home, ".docker", "config.json")} {
		if !strings.Contains(msg, want) {
			t.Errorf("no-credentials error %q does not say %q", msg, want)
		}
	}
	// Wrong password: refused, naming where it came from.
	msg = registryFail(t, "image", "pull", "--tls-verify=false", "--creds", "alice:wrong", ref, filepath.Join(t.TempDir(), "x"))
	if !strings.Contains(msg, "refused the credentials from --creds") || !strings.Contains(msg, reg.Host) {
		t.Errorf("wrong-credentials error: %q", msg)
	}
	// --creds.
	d1 := filepath.Join(t.TempDir(), "a")
	registryRun(t, "image", "pull", "--tls-verify=false", "--creds", creds, ref, d1+":v1")
	registryCompare(t, src+":v1", d1+":v1")
	// --authfile, and the same file found as $REGISTRY_AUTH_FILE.
	af := filepath.Join(t.TempDir(), "auth.json")
	b, _ := json.Marshal(map[string]any{"auths": map[string]any{reg.Host: map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte(creds))}}})
	if err := os.WriteFile(af, b, 0o600); err != nil {
		t.Fatal(err)
	}
	d2 := filepath.Join(t.TempDir(), "b")
	registryRun(t, "image", "pull", "--tls-verify=false", "--authfile", af, ref, d2+":v1")
	registryCompare(t, src+":v1", d2+":v1")
	// Push: refused without, done with credentials.
	msg = registryFail(t, "image", "push", "--tls-verify=false", d2+":v1", "docker://"+reg.Host+"/sec/copy:v1")
	if !strings.Contains(msg, reg.Host) || !strings.Contains(msg, "credentials") {
		t.Errorf("push without credentials: %q", msg)
	}
	t.Setenv("REGISTRY_AUTH_FILE", af)
	registryRun(t, "image", "push", "--tls-verify=false", d2+":v1", "docker://"+reg.Host+"/sec/copy:v1")
	back := filepath.Join(t.TempDir(), "back")
	testutil.Run(t, "skopeo", "copy", "--src-cert-dir", reg.CertDir, "--src-creds", creds, "docker://"+reg.Host+"/sec/copy:v1", "oci:"+back+":v1")
	registryCompare(t, src+":v1", back+":v1")
}

// TestRegistryInteropTLS: a self-signed registry is refused by default and
// accepted with --tls-verify=false.
func TestRegistryInteropTLS(t *testing.T) {
	testutil.NeedTool(t, "skopeo")
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{TLS: true})
	src := registryUmociLayout(t)
	testutil.Run(t, "skopeo", "copy", "--dest-cert-dir", reg.CertDir, "oci:"+src+":v1", "docker://"+reg.Host+"/tls/app:v1")
	dst := filepath.Join(t.TempDir(), "d")
	msg := registryFail(t, "image", "pull", reg.Host+"/tls/app:v1", dst+":v1")
	if !strings.Contains(msg, "certificate") || !strings.Contains(msg, "--tls-verify=false") {
		t.Errorf("self-signed registry: error %q, want a certificate error with a hint", msg)
	}
	if _, err := os.Stat(dst); err == nil {
		t.Errorf("a refused pull created %s", dst)
	}
	registryRun(t, "image", "pull", "--tls-verify=false", reg.Host+"/tls/app:v1", dst+":v1")
	registryCompare(t, src+":v1", dst+":v1")
	// Push, the same.
	msg = registryFail(t, "image", "push", dst+":v1", reg.Host+"/tls/copy:v1")
	if !strings.Contains(msg, "certificate") || !strings.Contains(msg, "--tls-verify=false") {
		t.Errorf("push to a self-signed registry: error %q, want a certificate error with a hint", msg)
	}
	registryRun(t, "image", "push", "--tls-verify=false", dst+":v1", reg.Host+"/tls/copy:v1")
}

// TestRegistryInteropCorrupt: a blob corrupted in the registry's storage
// is caught by pull and by store unpack, and nothing of it is kept.
func TestRegistryInteropCorrupt(t *testing.T) {
	testutil.NeedTool(t, "skopeo")
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	src := registryUmociLayout(t)
	testutil.Run(t, "skopeo", "copy", "--dest-tls-verify=false", "oci:"+src+":v1", "docker://"+reg.Host+"/bad/app:v1")
	l, _ := layers.OpenLayout(src)
	img, err := l.Resolve(t.Context(), "v1", layers.ResolveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	bad := img.Manifest.Layers[1].Digest
	p := reg.BlobPath(bad.String())
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x55
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "d")
	msg := registryFail(t, "image", "pull", reg.Host+"/bad/app:v1", dst+":v1")
	if !strings.Contains(msg, bad.String()) {
		t.Errorf("error %q does not name %s", msg, bad)
	}
	ents, _ := os.ReadDir(filepath.Join(dst, "blobs", "sha256"))
	for _, e := range ents {
		if strings.Contains(e.Name(), bad.Encoded()) {
			t.Errorf("kept %s", e.Name())
		}
	}
	if idx, _ := os.ReadFile(filepath.Join(dst, "index.json")); strings.Contains(string(idx), `"org.opencontainers.image.ref.name":"v1"`) {
		t.Errorf("index.json tags the broken image: %s", idx)
	}
	// store unpack: the layer is not committed.
	store := filepath.Join(t.TempDir(), "store")
	msg = registryFail(t, "store", "unpack", "--store", store, "docker://"+reg.Host+"/bad/app:v1")
	if !strings.Contains(msg, bad.String()) {
		t.Errorf("store unpack error %q does not name %s", msg, bad)
	}
	out := registryRun(t, "store", "ls", "--store", store, "--output", "json")
	if strings.Count(out, "chain_id") > 1 {
		t.Errorf("store holds more than the one good layer:\n%s", out)
	}
}

// TestRegistryInteropRootfs: rootfs mount docker://REF from an empty
// store gives umoci's tree; a second image sharing layers fetches only the
// new layer.
func TestRegistryInteropRootfs(t *testing.T) {
	testutil.NeedRoot(t)
	testutil.NeedTool(t, "skopeo")
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	src := registryUmociLayout(t)
	for _, tag := range []string{"v1", "v2"} {
		testutil.Run(t, "skopeo", "copy", "--dest-tls-verify=false", "oci:"+src+":"+tag, "docker://"+reg.Host+"/fs/app:"+tag)
	}
	store := filepath.Join(t.TempDir(), "store")
	for i, tag := range []string{"v1", "v2"} {
		target := t.TempDir()
		mark := len(reg.Log())
		code, out, errb := imageTestRun(t, "rootfs", "mount", "-p", "--store", store, "docker://"+reg.Host+"/fs/app:"+tag, target)
		if code != 0 {
			if strings.Contains(errb, "cannot mount overlayfs") {
				t.Skip(errb)
			}
			t.Fatalf("rootfs mount: %d %s%s", code, out, errb)
		}
		t.Cleanup(func() { imageTestRun(t, "rootfs", "umount", "--store", store, "--rm", target) })
		// umoci's tree, directory mtimes aside: a directory that a layer
		// creates only implicitly (as the parent of a whiteout) gets the
		// unpack time in the store, and overlayfs shows the top one. That
		// is layer extraction's doing (a rootfs mount of the layout shows
		// it too), not the registry path's.
		want := filepath.Join(t.TempDir(), "umoci")
		testutil.Run(t, "umoci", "raw", "unpack", "--image", src+":"+tag, want)
		registryCompareDirsOpts(t, want, target, treecmp.Options{NoDirMtime: true})
		if i == 1 {
			l, _ := layers.OpenLayout(src)
			img, _ := l.Resolve(t.Context(), tag, layers.ResolveOptions{})
			newLayer := img.Manifest.Layers[len(img.Manifest.Layers)-1]
			if got, want := reg.BlobBytesSent(mark), newLayer.Size+img.Manifest.Config.Size; got != want {
				t.Errorf("mount of %s moved %d blob bytes, want %d (new layer and config)", tag, got, want)
			}
			registryCommitRemote(t, reg, src, tag, target)
		}
	}
}

// registryCommitRemote: rootfs commit of a container mounted from
// docker://REF writes the base image (fetched by the digest it was
// mounted from, its blobs unchanged) plus the container's changes as a
// new layer; umoci unpacks it to the container's tree. A second commit
// into the same layout fetches no base layer again.
func registryCommitRemote(t *testing.T, reg *testutil.Registry, src, tag, target string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(target, "etc", "committed"), []byte("changed in the container\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(target, "etc", "passwd")); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "out")
	mark := len(reg.Log())
	registryRun(t, "rootfs", "commit", "-p", target, out+":c1")
	baseBytes := reg.BlobBytesSent(mark)
	t.Logf("commit of %s fetched %d blob bytes of the base", tag, baseBytes)
	l, err := layers.OpenLayout(src)
	if err != nil {
		t.Fatal(err)
	}
	base, err := l.Resolve(t.Context(), tag, layers.ResolveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ol, err := layers.OpenLayout(out)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ol.Resolve(t.Context(), "c1", layers.ResolveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(base.Manifest.Layers); len(got.Manifest.Layers) != n+1 {
		t.Fatalf("committed image has %d layers, want the base's %d and one", len(got.Manifest.Layers), n)
	}
	var want int64 = base.Manifest.Config.Size
	for i, ld := range base.Manifest.Layers {
		want += ld.Size
		if got.Manifest.Layers[i].Digest != ld.Digest {
			t.Errorf("committed layer %d is %s, the base's is %s", i, got.Manifest.Layers[i].Digest, ld.Digest)
		}
	}
	if baseBytes != want {
		t.Errorf("commit fetched %d blob bytes, want the base's %d", baseBytes, want)
	}
	if _, err := ol.Verify(t.Context(), layers.Limits{}); err != nil {
		t.Fatal(err)
	}
	unpacked := filepath.Join(t.TempDir(), "unpacked")
	testutil.Run(t, "umoci", "raw", "unpack", "--image", out+":c1", unpacked)
	registryCompareDirsOpts(t, target, unpacked, treecmp.Options{NoDirMtime: true})

	// Again into the same layout: only the config moves.
	mark = len(reg.Log())
	registryRun(t, "rootfs", "commit", target, out+":c2")
	if n := reg.BlobBytesSent(mark); n != base.Manifest.Config.Size {
		t.Errorf("second commit into the same layout fetched %d blob bytes, want only the config's %d", n, base.Manifest.Config.Size)
	}
	// To the registry: the base layers are mounted from the container's
	// repository, only the new layer and the config are uploaded; skopeo
	// copies it back and umoci unpacks the container's tree.
	mark = len(reg.Log())
	pushed := "docker://" + reg.Host + "/committed/app:c3"
	outJSON := registryRun(t, "rootfs", "commit", "-p", "--output", "json", target, pushed)
	var res struct {
		Layer layers.Descriptor  `json:"layer"`
		Push  *layers.PushResult `json:"push"`
	}
	if err := json.Unmarshal([]byte(outJSON), &res); err != nil {
		t.Fatalf("%v: %s", err, outJSON)
	}
	log := reg.Log()[mark:]
	if res.Push == nil || res.Push.Uploaded != 1 || res.Push.Skipped != len(base.Manifest.Layers) || len(regexp.MustCompile(`POST /v2/committed/app/blobs/uploads/\?from=fs%2Fapp&mount=[^ ]+ HTTP/[0-9.]+" 201 `).FindAllString(log, -1)) != len(base.Manifest.Layers) {
		t.Errorf("commit to %s: %s; want the new layer uploaded, %d base layers mounted from fs/app; log:\n%s", pushed, outJSON, len(base.Manifest.Layers), log)
	}
	back := filepath.Join(t.TempDir(), "back")
	testutil.Run(t, "skopeo", "copy", "--src-tls-verify=false", pushed, "oci:"+back+":c3")
	unpacked = filepath.Join(t.TempDir(), "unpacked-pushed")
	testutil.Run(t, "umoci", "raw", "unpack", "--image", back+":c3", unpacked)
	registryCompareDirsOpts(t, target, unpacked, treecmp.Options{NoDirMtime: true})
}

// TestRegistryInteropVanish: the real registry is cut off (the
// connection dropped) half-way through a layer of store unpack
// docker://REF, once the other layers are in. The
// command fails naming the blob and commits nothing of it; the same
// command run again once the registry is back fetches only the layers the
// store lacks: no layer committed by the first run crosses the wire again.
// (The layout pull's resumption from partial blobs after a stall is
// layers.TestRegistryVanishInterop.)
func TestRegistryInteropVanish(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	proxy := testutil.StartProxy(t, reg.Host)
	m := testutil.PushRandomImage(t, reg.Host+"/vanish/app:v1", types.DockerLayer, 40<<10, 120<<10, 160<<10, 2<<20)
	big := m.Layers[len(m.Layers)-1]
	store := filepath.Join(t.TempDir(), "store")
	args := []string{"store", "unpack", "--store", store, "--output", "json", "docker://" + proxy.Host + "/vanish/app:v1"}

	// The big layer's response stops half-way until the store holds the
	// others; then its connection is dropped, as when the registry dies.
	proxy.Break(testutil.ProxyStall, big.Digest.String(), big.Size/2)
	type result struct {
		code      int
		out, errb string
	}
	done := make(chan result, 1)
	go func() {
		code, out, errb := imageTestRun(t, args...)
		done <- result{code, out, errb}
	}()
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		committed, _ := filepath.Glob(filepath.Join(store, "layers", "*", "layer.json"))
		if proxy.Stalled() == 1 && len(committed) == len(m.Layers)-1 {
			break
		}
		if time.Now().After(deadline) {
			proxy.Heal()
			t.Fatalf("after 60 s the store holds %d layers and the proxy stalled %d responses; want %d and 1", len(committed), proxy.Stalled(), len(m.Layers)-1)
		}
	}
	proxy.Heal() // cuts the stalled response
	r := <-done
	if r.code == 0 {
		t.Fatalf("store unpack succeeded with the registry gone:\n%s", r.out)
	}
	msg := r.errb
	t.Logf("first run: %s", msg)
	if !strings.Contains(msg, big.Digest.String()) || !strings.Contains(msg, fmt.Sprintf(" of %d bytes", big.Size)) {
		t.Errorf("error %q does not name the layer being fetched, %s, and where it broke off (about %d of %d bytes)", msg, big.Digest, big.Size/2, big.Size)
	}
	s, err := overlay.OpenStore(store, overlay.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kept := map[string]bool{}
	ls, err := s.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		kept[l.Blob.String()] = true
	}
	if kept[big.Digest.String()] || len(kept) != len(m.Layers)-1 {
		t.Fatalf("after the failure the store holds the layers of %v; want all but %s", kept, big.Digest)
	}

	proxy.Heal()
	mark := proxy.Mark()
	out := registryRun(t, args...)
	var st overlay.UnpackStats
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	again := proxy.BlobBytes(mark)
	t.Logf("kept after the failure: %v; second run fetched %v; %+v", kept, again, st)
	for _, l := range m.Layers {
		d := l.Digest.String()
		switch {
		case kept[d] && again[d] != 0:
			t.Errorf("layer %s, committed by the first run, was fetched again (%d bytes)", d, again[d])
		case !kept[d] && again[d] != l.Size:
			t.Errorf("layer %s, missing after the first run, moved %d bytes, want %d", d, again[d], l.Size)
		}
	}
	if st.Present != len(kept) || st.Unpacked != len(m.Layers)-len(kept) {
		t.Errorf("second run %+v; want %d present, %d unpacked", st, len(kept), len(m.Layers)-len(kept))
	}
}
