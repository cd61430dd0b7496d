package registry

import (
	"context"
	"encoding/base64"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

func writeAuth(t *testing.T, path, key, user, pass string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	b := `{"auths":{"` + key + `":{"auth":"` + base64.StdEncoding.EncodeToString([]byte(user+":"+pass)) + `"}}}`
	if err := os.WriteFile(path, []byte(b), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestKeychainOrder(t *testing.T) {
	dir := t.TempDir()
	env := map[string]string{
		"HOME":               filepath.Join(dir, "home"),
		"XDG_RUNTIME_DIR":    filepath.Join(dir, "run"),
		"REGISTRY_AUTH_FILE": filepath.Join(dir, "reg.json"),
	}
	o := Options{Env: func(k string) string { return env[k] }}
	repo, _ := name.NewRepository("reg.example:5000/team/app")
	other, _ := name.NewRepository("other.example/x")
	writeAuth(t, filepath.Join(dir, "home", ".docker", "config.json"), "https://reg.example:5000/v1/", "docker", "d")
	writeAuth(t, filepath.Join(dir, "home", ".docker", "config.json"), "other.example", "docker", "d")
	writeAuth(t, filepath.Join(dir, "run", "containers", "auth.json"), "reg.example:5000/team", "podman", "p")
	check := func(k *Keychain, r name.Repository, user, src string) {
		t.Helper()
		a, err := k.Resolve(r)
		if err != nil {
			t.Fatal(err)
		}
		cfg, _ := a.Authorization()
		if cfg.Username != user || k.SourceFor(r.RegistryStr()) != src {
			t.Errorf("%s: user %q from %q, want %q from %q", r, cfg.Username, k.SourceFor(r.RegistryStr()), user, src)
		}
	}
	k := NewKeychain(o)
	check(k, repo, "podman", filepath.Join(dir, "run", "containers", "auth.json"))
	check(k, other, "docker", filepath.Join(dir, "home", ".docker", "config.json"))
	writeAuth(t, env["REGISTRY_AUTH_FILE"], "reg.example:5000", "regfile", "r")
	check(NewKeychain(o), repo, "regfile", env["REGISTRY_AUTH_FILE"])
	o.Creds = "cli:pw"
	check(NewKeychain(o), repo, "cli", "--creds")
	o.Creds, o.AuthFile = "", filepath.Join(dir, "only.json")
	k = NewKeychain(o)
	a, _ := k.Resolve(repo)
	if a != authn.Anonymous {
		t.Errorf("--authfile of a missing file should give anonymous, got %v", a)
	}
	if got := k.Sources(); len(got) != 1 || got[0] != o.AuthFile {
		t.Errorf("sources %v", got)
	}
}

func TestAuthError(t *testing.T) {
	reg := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "alice" || p != "secret" {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	img, _ := random.Image(100, 1)
	ref, _ := name.ParseReference(host + "/a:b")
	if err := remote.Write(ref, img, remote.WithAuth(&authn.Basic{Username: "alice", Password: "secret"})); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	env := func(k string) string {
		if k == "HOME" {
			return dir
		}
		return ""
	}
	for _, c := range []struct {
		creds string
		want  string // "" for success
	}{
		{"", "wants credentials and none were found"},
		{"alice:wrong", "refused the credentials from --creds"},
		{"alice:secret", ""},
	} {
		cl, err := New(Options{Creds: c.creds, Env: env})
		if err != nil {
			t.Fatal(err)
		}
		r, _ := cl.Reference("docker://" + host + "/a:b")
		_, err = remote.Get(r, cl.RemoteOptions(context.Background())...)
		err = cl.WrapError(r.Context().Registry, err)
		if c.want == "" {
			if err != nil {
				t.Errorf("creds %q: %v", c.creds, err)
			}
			continue
		}
		var ae *AuthError
		if !errors.As(err, &ae) || !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), host) || !strings.Contains(err.Error(), filepath.Join(dir, ".docker", "config.json")) && c.creds == "" {
			t.Errorf("creds %q: err = %v, want an AuthError saying %q and naming %s", c.creds, err, c.want, host)
		}
	}
}

func TestParseReference(t *testing.T) {
	for _, s := range []string{"", "docker://", "http://x/y", "docker:///abs", "Bad/UPPER", "a/b:c:d"} {
		if _, err := ParseReference(s); !errors.Is(err, ErrInvalidReference) {
			t.Errorf("%q: %v, want ErrInvalidReference", s, err)
		}
	}
	r, err := ParseReference("docker://127.0.0.1:5000/x/y@sha256:" + strings.Repeat("a", 64))
	if err != nil || r.Context().RegistryStr() != "127.0.0.1:5000" {
		t.Errorf("%v %v", r, err)
	}
}

func TestClientRef(t *testing.T) {
	c, ref, err := ClientRef(nil, Options{Insecure: true}, "docker://127.0.0.1:5000/a/b:t")
	if err != nil {
		t.Fatal(err)
	}
	if c == nil || ref.String() != "127.0.0.1:5000/a/b:t" || ref.Context().Scheme() != "http" {
		t.Fatalf("ClientRef(nil, insecure) = %v, %v (scheme %s)", c, ref, ref.Context().Scheme())
	}
	c2, _, err := ClientRef(c, Options{}, "127.0.0.1:5000/a/b")
	if err != nil || c2 != c {
		t.Fatalf("ClientRef(c) = %p, %v; want the given client %p", c2, err, c)
	}
	if _, _, err := ClientRef(c, Options{}, "http://x/y"); !errors.Is(err, ErrInvalidReference) {
		t.Errorf("ClientRef with a URL: %v, want ErrInvalidReference", err)
	}
}
