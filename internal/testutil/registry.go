package testutil

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"
)

// RegistryUser and RegistryPassword are the credentials of a registry
// started with RegistryOptions.Auth; RegistryHtpasswd is their bcrypt
// htpasswd line (made once with 'htpasswd -Bbn -C 5').
const (
	RegistryUser     = "alice"
	RegistryPassword = "s3cret-pw"
	RegistryHtpasswd = "alice:$2y$05$Da8Gs/F1DEx9ThtOyH0z9eg9v5rMRritL0SpDBKKQ7zfs0meX/MBe"
)

// RegistryOptions configure StartRegistry.
type RegistryOptions struct {
	// TLS serves HTTPS with a self-signed certificate for 127.0.0.1
	// (Registry.CertDir holds it as skopeo's --cert-dir wants).
	TLS bool
	// Auth requires RegistryUser/RegistryPassword (htpasswd; implies TLS,
	// which distribution needs for basic auth).
	Auth bool
}

// Registry is a running 'docker-registry serve' (distribution 2.x).
type Registry struct {
	Host    string // 127.0.0.1:PORT
	Root    string // storage root directory
	CertDir string // with TLS: ca.crt (the self-signed certificate)
	cmd     *exec.Cmd

	mu  sync.Mutex
	log bytes.Buffer
}

// StartRegistry starts the real registry on a free loopback port with
// filesystem storage in a temp dir, waits for GET /v2/ to answer, and
// kills it at cleanup. It skips (or fails under IMGTOOL_INTEROP=require)
// when docker-registry is not installed.
func StartRegistry(tb testing.TB, opts RegistryOptions) *Registry {
	tb.Helper()
	bin := NeedTool(tb, "docker-registry")
	dir := tb.TempDir()
	r := &Registry{Root: filepath.Join(dir, "data")}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	r.Host = ln.Addr().String()
	ln.Close()
	cfg := fmt.Sprintf("version: 0.1\nlog: {level: error, accesslog: {disabled: false}}\nstorage:\n  filesystem: {rootdirectory: %s}\n  delete: {enabled: true}\n", r.Root)
	scheme := "http"
	tlsCfg := ""
	if opts.TLS || opts.Auth {
		scheme = "https"
		r.CertDir = filepath.Join(dir, "certs")
		crt, key := writeSelfSigned(tb, r.CertDir)
		tlsCfg = fmt.Sprintf(", tls: {certificate: %s, key: %s}", crt, key)
	}
	cfg += fmt.Sprintf("http: {addr: %s%s}\n", r.Host, tlsCfg)
	if opts.Auth {
		hp := filepath.Join(dir, "htpasswd")
		if err := os.WriteFile(hp, []byte(RegistryHtpasswd+"\n"), 0o600); err != nil {
			tb.Fatal(err)
		}
		cfg += fmt.Sprintf("auth: {htpasswd: {realm: test, path: %s}}\n", hp)
	}
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		tb.Fatal(err)
	}
	r.cmd = exec.Command(bin, "serve", cfgPath)
	stdout, err := r.cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	r.cmd.Stderr = r.cmd.Stdout
	if err := r.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			r.mu.Lock()
			r.log.Write(sc.Bytes())
			r.log.WriteByte('\n')
			r.mu.Unlock()
		}
		io.Copy(io.Discard, stdout)
	}()
	tb.Cleanup(func() {
		r.cmd.Process.Kill()
		r.cmd.Wait()
		<-done
	})
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // the test's own self-signed registry
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := client.Get(scheme + "://" + r.Host + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || (opts.Auth && resp.StatusCode == http.StatusUnauthorized) {
				return r
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("docker-registry on %s did not answer GET /v2/ within 15s (last error %v); log:\n%s", r.Host, err, r.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Log returns the registry's output so far (its access log).
func (r *Registry) Log() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.log.String()
}

var accessLine = regexp.MustCompile(`"(GET|HEAD|PUT|PATCH|POST) ([^ ]+) HTTP/[0-9.]+" (\d+) (\d+)`)

// BlobBytesSent sums the bytes of the successful blob GETs in the access
// log (what clients downloaded), from byte offset from of the log.
func (r *Registry) BlobBytesSent(from int) int64 {
	var n int64
	for _, m := range accessLine.FindAllStringSubmatch(r.Log()[from:], -1) {
		if m[1] == "GET" && regexp.MustCompile(`/blobs/sha256:`).MatchString(m[2]) && (m[3] == "200" || m[3] == "206") {
			v, _ := strconv.ParseInt(m[4], 10, 64)
			n += v
		}
	}
	return n
}

// BlobPath is the file holding a blob (sha256:HEX) in the storage root.
func (r *Registry) BlobPath(digest string) string {
	hex := digest[len("sha256:"):]
	return filepath.Join(r.Root, "docker", "registry", "v2", "blobs", "sha256", hex[:2], hex, "data")
}

// writeSelfSigned writes a self-signed certificate for 127.0.0.1 and
// localhost into dir as ca.crt (skopeo's --cert-dir trusts *.crt there as
// CAs) and, next to dir, as server.pem and server-key.pem, and returns
// the latter two paths.
func writeSelfSigned(tb testing.TB, dir string) (string, string) {
	tb.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "imgtool test registry"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:              []string{"localhost"},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	crt := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	// The server's pair lives outside dir: skopeo would take a *.cert and
	// *.key in its --cert-dir for a client certificate.
	crtPath, keyPath := filepath.Join(dir, "..", "server.pem"), filepath.Join(dir, "..", "server-key.pem")
	for p, b := range map[string][]byte{
		crtPath:                      crt,
		filepath.Join(dir, "ca.crt"): crt,
		keyPath:                      pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}),
	} {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			tb.Fatal(err)
		}
	}
	return crtPath, keyPath
}
