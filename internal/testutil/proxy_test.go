package testutil

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestProxy(t *testing.T) {
	body := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		in, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Host", r.Host)
		if len(in) > 0 {
			w.Write(in[:10])
			return
		}
		w.Write(body)
	}))
	t.Cleanup(up.Close)
	p := StartProxy(t, strings.TrimPrefix(up.URL, "http://"))
	c := &http.Client{Timeout: 10 * time.Second}
	get := func(path string) ([]byte, error) {
		resp, err := c.Get("http://" + p.Host + path)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		if h := resp.Header.Get("X-Host"); h != p.Host {
			t.Errorf("upstream saw Host %q, want the proxy's %q", h, p.Host)
		}
		return io.ReadAll(resp.Body)
	}
	b, err := get("/v2/x/blobs/sha256:aa")
	if err != nil || !bytes.Equal(b, body) {
		t.Fatalf("through the proxy: %d bytes, %v", len(b), err)
	}
	resp, err := c.Post("http://"+p.Host+"/v2/x/blobs/uploads/", "application/octet-stream", strings.NewReader(strings.Repeat("u", 1000)))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	// Cut after 100000 bytes of blob responses; other paths pass.
	mark := p.Mark()
	p.Break(ProxyCut, "/blobs/sha256:", 100000)
	if b, err := get("/v2/x/blobs/sha256:bb"); err == nil || len(b) != 100000 {
		t.Errorf("cut: got %d bytes, err %v; want 100000 and an error", len(b), err)
	}
	if b, err := get("/v2/x/manifests/latest"); err != nil || len(b) != len(body) {
		t.Errorf("an unmatched path under a fault: %d bytes, %v", len(b), err)
	}
	// A stall: the client's own timeout ends it.
	p.Break(ProxyStall, "/blobs/", 5000)
	sc := &http.Client{Timeout: 300 * time.Millisecond}
	if resp, err := sc.Get("http://" + p.Host + "/v2/x/blobs/sha256:cc"); err == nil {
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			t.Error("a stalled response ended without an error")
		}
	}
	if p.Stalled() != 1 {
		t.Errorf("Stalled() = %d", p.Stalled())
	}
	p.Heal()
	if b, err := get("/v2/x/blobs/sha256:dd"); err != nil || len(b) != len(body) {
		t.Errorf("after Heal: %d bytes, %v", len(b), err)
	}
	got := p.BlobBytes(mark)
	want := map[string]int64{"sha256:bb": 100000, "sha256:cc": 5000, "sha256:dd": int64(len(body))}
	for d, n := range want {
		if got[d] != n {
			t.Errorf("BlobBytes[%s] = %d, want %d (all: %v)", d, got[d], n, got)
		}
	}
	if rs := p.Requests(); rs[1].Method != http.MethodPost || rs[1].In != 1000 || rs[1].Out != 10 || BlobDigestOf(rs[1].Path) != "" {
		t.Errorf("upload request recorded as %+v", rs[1])
	}
}
