package registry

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// TestRepoHandshake: against a plain-HTTP loopback registry, a Repo's
// handshake opens two connections (the https ping, answered in plain
// HTTP, and the http ping: no third https probe of the scheme), and
// remote.Get with the Repo's RemoteOptions makes no ping of its own.
func TestRepoHandshake(t *testing.T) {
	var mu sync.Mutex
	var conns int
	var reqs []string
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		reqs = append(reqs, r.Method+" "+r.URL.Path)
		mu.Unlock()
		if r.URL.Path == "/v2/" {
			return
		}
		http.NotFound(w, r)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			mu.Lock()
			conns++
			mu.Unlock()
		}
	}
	srv.Start()
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	c, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	repo, err := name.NewRepository(host + "/vm")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	start := time.Now()
	r, err := c.Repo(ctx, repo, false)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	// go-containerregistry starts the http ping 300 ms after the https
	// one even when that has not failed yet: on a machine that slow the
	// probe may run first, and the count says nothing.
	if el := time.Since(start); conns != 2 && el < 250*time.Millisecond {
		t.Errorf("handshake opened %d connections, want 2 (https ping, http ping)", conns)
	}
	mu.Unlock()
	if _, err := remote.Get(repo.Tag("1"), r.RemoteOptions(ctx)...); err == nil {
		t.Fatal("remote.Get of a missing manifest succeeded")
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"GET /v2/", "GET /v2/vm/manifests/1"}; strings.Join(reqs, ",") != strings.Join(want, ",") {
		t.Errorf("requests %q, want %q", reqs, want)
	}
}
