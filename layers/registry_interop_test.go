package layers

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imgtool/imgtool/internal/registry"
	"github.com/imgtool/imgtool/internal/testutil"
	"github.com/imgtool/imgtool/internal/treecmp"
)

// realRegistry is a docker-registry (distribution) process serving plain
// HTTP on 127.0.0.1, with its storage in a temp dir and its access log
// kept for counting bytes.
type realRegistry struct {
	Host string // 127.0.0.1:PORT
	Data string // storage root directory
	mu   sync.Mutex
	log  []string
}

// startRegistry starts `docker-registry serve CONFIG` and waits until
// GET /v2/ answers.
func startRegistry(t *testing.T) *realRegistry {
	t.Helper()
	return startRegistryWith(t, "", nil)
}

// startRegistryWith starts it with extra YAML under http: (tls) and at the
// top level (auth); client is what waits for it (nil: plain HTTP).
func startRegistryWith(t *testing.T, extra string, client *http.Client) *realRegistry {
	t.Helper()
	bin := testutil.NeedTool(t, "docker-registry")
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	host := l.Addr().String()
	l.Close()
	r := &realRegistry{Host: host, Data: filepath.Join(dir, "data")}
	cfg := filepath.Join(dir, "config.yml")
	conf := fmt.Sprintf("version: 0.1\nlog: {level: error, accesslog: {disabled: false}}\nstorage:\n  filesystem: {rootdirectory: %s}\n  delete: {enabled: true}\nhttp:\n  addr: %s\n%s", r.Data, host, extra)
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", cfg)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			r.mu.Lock()
			r.log = append(r.log, sc.Text())
			r.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		<-done
	})
	url := "http://" + host + "/v2/"
	if client == nil {
		client = http.DefaultClient
	} else {
		url = "https://" + host + "/v2/"
	}
	for deadline := time.Now().Add(20 * time.Second); ; {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			// 401: up, and asking for credentials.
			if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized {
				return r
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("docker-registry on %s did not answer: %v\n%s", host, err, strings.Join(r.lines(), "\n"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (r *realRegistry) lines() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.log...)
}

var blobGet = regexp.MustCompile(`"GET /v2/[^ ]+/blobs/(sha256:[0-9a-f]{64}) HTTP/[0-9.]+" (200|206) ([0-9]+)`)

// blobBytes sums the bytes of blob GETs logged from line from on, by
// digest.
func (r *realRegistry) blobBytes(from int) (map[string]int64, int) {
	lines := r.lines()
	got := map[string]int64{}
	for _, l := range lines[min(from, len(lines)):] {
		if m := blobGet.FindStringSubmatch(l); m != nil {
			n, _ := strconv.ParseInt(m[3], 10, 64)
			got[m[1]] += n
		}
	}
	return got, len(lines)
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
	reg := startRegistry(t)
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
	_, mark := reg.blobBytes(0)
	if _, err := Pull(ctx, reg.Host+"/umoci/app:v1", ImageRef{Dir: got, Tag: "v1"}, PullOptions{Registry: ro}); err != nil {
		t.Fatal(err)
	}
	sameTrees(t, imgTestUmociRawUnpack(t, src+":v1"), imgTestUmociRawUnpack(t, got+":v1"))
	first, mark := reg.blobBytes(mark)
	if len(first) < 2 {
		t.Fatalf("the access log shows %d blob GETs for the first pull; want the layer and config:\n%s", len(first), strings.Join(reg.lines(), "\n"))
	}

	// Pull v2 into the same layout: only v2's new layer (and config).
	res, err := Pull(ctx, "docker://"+reg.Host+"/umoci/app:v2", ImageRef{Dir: got, Tag: "v2"}, PullOptions{Registry: ro})
	if err != nil {
		t.Fatal(err)
	}
	second, _ := reg.blobBytes(mark)
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
	data := filepath.Join(reg.Data, "docker/registry/v2/blobs/sha256", hex[:2], hex, "data")
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

// selfSigned writes a certificate for 127.0.0.1 and its key into dir.
func selfSigned(t *testing.T, dir string) (crt, key string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	crt, key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(crt, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return crt, key
}

// TestRegistryAuthInterop: a self-signed TLS registry with htpasswd
// authentication. TLS is refused unless verification is turned off;
// pull and push work with --creds and with an auth file, and without
// credentials the error names the registry and the files tried.
func TestRegistryAuthInterop(t *testing.T) {
	htpasswd := testutil.NeedTool(t, "htpasswd")
	dir := t.TempDir()
	crt, key := selfSigned(t, dir)
	users := filepath.Join(dir, "htpasswd")
	out, err := exec.Command(htpasswd, "-Bbn", "alice", "s3cret").Output()
	if err != nil {
		t.Fatalf("htpasswd: %v", err)
	}
	os.WriteFile(users, out, 0o600)
	insecure := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	reg := startRegistryWith(t, fmt.Sprintf("  tls: {certificate: %s, key: %s}\nauth:\n  htpasswd: {realm: test, path: %s}\n", crt, key, users), insecure)

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
	_, err = Push(ctx, ImageRef{Dir: layout, Tag: "v1"}, ref, PushOptions{Registry: registry.Options{Creds: "alice:s3cret", Env: env}})
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("push to a self-signed registry with verification: %v, want a certificate error", err)
	}
	// --creds and --tls-verify=false.
	if _, err := Push(ctx, ImageRef{Dir: layout, Tag: "v1"}, ref, PushOptions{Registry: registry.Options{Creds: "alice:s3cret", Insecure: true, Env: env}}); err != nil {
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
	_, err = Pull(ctx, ref, ImageRef{Dir: filepath.Join(dir, "wrong"), Tag: "v1"}, PullOptions{Registry: registry.Options{Creds: "alice:nope", Insecure: true, Env: env}})
	if err == nil || !strings.Contains(err.Error(), reg.Host) {
		t.Fatalf("pull with a wrong password: %v", err)
	}
	// An auth file, as podman and docker write it.
	auth := filepath.Join(dir, "auth.json")
	os.WriteFile(auth, []byte(fmt.Sprintf(`{"auths": {%q: {"auth": %q}}}`, reg.Host, base64.StdEncoding.EncodeToString([]byte("alice:s3cret")))), 0o600)
	got := filepath.Join(dir, "pulled")
	if _, err := Pull(ctx, ref, ImageRef{Dir: got, Tag: "v1"}, PullOptions{Registry: registry.Options{AuthFile: auth, Insecure: true, Env: env}}); err != nil {
		t.Fatalf("pull with --authfile: %v", err)
	}
	if testutil.InteropRequired() || os.Geteuid() == 0 {
		sameTrees(t, imgTestOurUnpack(t, layout, "v1"), imgTestOurUnpack(t, got, "v1"))
	}
}
