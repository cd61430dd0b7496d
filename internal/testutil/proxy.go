package testutil

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// ProxyRequest is one request that went through a Proxy.
type ProxyRequest struct {
	Method string
	Path   string // URL path, without the query
	Query  string
	Range  string // the request's Range header
	Status int    // the upstream's status (0 when the request failed)
	In     int64  // request body bytes forwarded upstream
	Out    int64  // response body bytes sent to the client
}

// ProxyFault is what a broken Proxy does to a response body once it has
// sent the fault's byte budget (see Proxy.Break).
type ProxyFault int

const (
	// ProxyStall stops sending and holds the connection open, as a
	// registry behind a dead network path does, until the client gives
	// up (or Heal or the test's cleanup).
	ProxyStall ProxyFault = iota + 1
	// ProxyCut closes the connection, as a registry that is killed does.
	ProxyCut
)

// Proxy is a counting reverse proxy in front of a registry (or any HTTP
// server) on a free loopback port, for tests that count what a client
// moves per request or that make the registry go away mid-transfer. It
// forwards the client's Host header, so a registry builds its upload
// Locations with the proxy's address.
type Proxy struct {
	Host string // 127.0.0.1:PORT

	target    string // scheme://host of the upstream
	transport *http.Transport
	srv       *http.Server

	mu      sync.Mutex
	reqs    []*ProxyRequest
	fault   ProxyFault
	match   string
	budget  int64
	healed  chan struct{}
	stalled int
}

// StartProxy starts a Proxy forwarding to upstream ("host:port" over
// plain HTTP, or "https://host:port", whose certificate is not checked)
// and stops it at cleanup.
func StartProxy(tb testing.TB, upstream string) *Proxy {
	tb.Helper()
	if !strings.Contains(upstream, "://") {
		upstream = "http://" + upstream
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	p := &Proxy{
		Host:      ln.Addr().String(),
		target:    upstream,
		transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableCompression: true, MaxIdleConnsPerHost: 16}, //nolint:gosec // the test's own registry
		healed:    make(chan struct{}),
	}
	p.srv = &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	go p.srv.Serve(ln)
	tb.Cleanup(func() {
		p.Heal()
		p.srv.Close()
		p.transport.CloseIdleConnections()
	})
	return p
}

// Break makes the proxy fail responses whose path contains match (""
// for all): once budget body bytes of such responses have been sent in
// all (counted from this call), it stalls or cuts each of them, and every
// later one before its first byte.
func (p *Proxy) Break(fault ProxyFault, match string, budget int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fault, p.match, p.budget = fault, match, budget
}

// Heal undoes Break: stalled responses are cut (their clients have
// usually given up already) and new ones go through.
func (p *Proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fault == ProxyStall {
		close(p.healed)
		p.healed = make(chan struct{})
	}
	p.fault = 0
}

// Stalled returns how many responses a ProxyStall has held so far.
func (p *Proxy) Stalled() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stalled
}

// Requests returns the requests so far, in the order they came, with
// the bytes moved until now (a request still running may move more).
func (p *Proxy) Requests() []ProxyRequest {
	p.mu.Lock()
	defer p.mu.Unlock()
	rs := make([]ProxyRequest, len(p.reqs))
	for i, r := range p.reqs {
		rs[i] = *r
	}
	return rs
}

// Mark is the number of requests so far, for BlobBytes(from): requests
// that came before it count before it, however long they run.
func (p *Proxy) Mark() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.reqs)
}

// BlobBytes sums the response bytes of blob GETs by digest
// ("sha256:HEX"), over the requests from index from on (see Mark).
func (p *Proxy) BlobBytes(from int) map[string]int64 {
	got := map[string]int64{}
	for _, r := range p.Requests()[from:] {
		if d := BlobDigestOf(r.Path); d != "" && r.Method == http.MethodGet {
			got[d] += r.Out
		}
	}
	return got
}

// BlobDigestOf returns the digest a /v2/NAME/blobs/DIGEST path names, or
// "" for any other path.
func BlobDigestOf(path string) string {
	i := strings.LastIndex(path, "/blobs/")
	if i < 0 || strings.HasPrefix(path[i:], "/blobs/uploads") {
		return ""
	}
	return path[i+len("/blobs/"):]
}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := &ProxyRequest{Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Range: r.Header.Get("Range")}
	p.mu.Lock()
	p.reqs = append(p.reqs, rec)
	p.mu.Unlock()
	out, err := http.NewRequestWithContext(r.Context(), r.Method, p.target+r.URL.RequestURI(), &countReader{p: p, r: r.Body, n: &rec.In})
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	out.Header = r.Header.Clone()
	out.Host = r.Host
	out.ContentLength = r.ContentLength
	if r.ContentLength == 0 {
		out.Body = nil
	}
	resp, err := p.transport.RoundTrip(out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	p.mu.Lock()
	rec.Status = resp.StatusCode
	p.mu.Unlock()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	fl, _ := w.(http.Flusher)
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			send, fail := p.allow(r.URL.Path, n)
			if send > 0 {
				m, werr := w.Write(buf[:send])
				p.mu.Lock()
				rec.Out += int64(m)
				p.mu.Unlock()
				if werr != nil {
					return
				}
				if fl != nil {
					fl.Flush()
				}
			}
			if fail {
				p.failNow(r)
			}
		}
		if err != nil {
			return
		}
	}
}

// allow returns how many of the next n body bytes of a response for path
// may be sent, and whether the fault hits the response after them.
func (p *Proxy) allow(path string, n int) (int, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fault == 0 || !strings.Contains(path, p.match) {
		return n, false
	}
	if int64(n) >= p.budget {
		n = int(p.budget)
		p.budget = 0
		return n, true
	}
	p.budget -= int64(n)
	return n, false
}

// failNow applies the current fault to the response being served: it
// holds a stalled one until the client goes or Heal, then drops the
// connection.
func (p *Proxy) failNow(r *http.Request) {
	p.mu.Lock()
	fault, healed := p.fault, p.healed
	if fault == ProxyStall {
		p.stalled++
	}
	p.mu.Unlock()
	if fault == ProxyStall {
		select {
		case <-healed:
		case <-r.Context().Done():
		}
	}
	panic(http.ErrAbortHandler)
}

type countReader struct {
	p *Proxy
	r io.Reader
	n *int64
}

func (c *countReader) Read(b []byte) (int, error) {
	k, err := c.r.Read(b)
	c.p.mu.Lock()
	*c.n += int64(k)
	c.p.mu.Unlock()
	return k, err
}
