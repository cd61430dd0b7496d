package registry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	digest "github.com/opencontainers/go-digest"
)

// rangeServer is go-containerregistry's in-process registry behind a
// handler that records blob range requests and can misbehave.
type rangeServer struct {
	host string

	mode     atomic.Value           // "": honest; "norange": drop Range; "badrange": wrong Content-Range; "stall": hang blob GETs
	only     atomic.Pointer[string] // count only requests of paths ending so
	mu       sync.Mutex
	ranges   []string
	inflight int
	maxIn    int
	sent     int64
}

func startRangeServer(t *testing.T) *rangeServer {
	t.Helper()
	reg := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	s := &rangeServer{}
	s.mode.Store("")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/sha256:") {
			reg.ServeHTTP(w, r)
			return
		}
		if p := s.only.Load(); p != nil && !strings.HasSuffix(r.URL.Path, *p) {
			reg.ServeHTTP(w, r)
			return
		}
		s.mu.Lock()
		s.ranges = append(s.ranges, r.Header.Get("Range"))
		s.inflight++
		s.maxIn = max(s.maxIn, s.inflight)
		s.mu.Unlock()
		defer func() {
			s.mu.Lock()
			s.inflight--
			s.mu.Unlock()
		}()
		time.Sleep(2 * time.Millisecond) // let parallel requests overlap
		cw := &countingWriter{ResponseWriter: w}
		switch s.mode.Load().(string) {
		case "norange":
			r.Header.Del("Range")
		case "badrange":
			w.Header().Set("Content-Range", "bytes 0-0/1")
			w.WriteHeader(http.StatusPartialContent)
			return
		case "stall":
			<-r.Context().Done()
			return
		}
		reg.ServeHTTP(cw, r)
		s.mu.Lock()
		s.sent += cw.n
		s.mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	s.host = strings.TrimPrefix(srv.URL, "http://")
	return s
}

type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}

// stats waits (up to 5 s) for the handlers to finish, then returns the
// recorded ranges, the most requests in flight and the bytes sent.
func (s *rangeServer) stats() (reqs []string, maxIn int, sent int64) {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		s.mu.Lock()
		idle := s.inflight == 0
		s.mu.Unlock()
		if idle {
			break
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.ranges...), s.maxIn, s.sent
}

func (s *rangeServer) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ranges, s.maxIn, s.sent = nil, 0, 0
}

// pushBlob uploads data as a layer blob of host/lazy/blob and returns
// the repo handle and digest.
func pushBlob(t *testing.T, host string, data []byte, o Options) (*Repo, digest.Digest) {
	t.Helper()
	repo, err := name.NewRepository(host + "/lazy/blob")
	if err != nil {
		t.Fatal(err)
	}
	l := static.NewLayer(data, types.OCIUncompressedLayer)
	if err := remote.WriteLayer(repo, l); err != nil {
		t.Fatal(err)
	}
	h, _ := l.Digest()
	cl, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	r, err := cl.Repo(context.Background(), repo, false)
	if err != nil {
		t.Fatal(err)
	}
	return r, digest.Digest(h.String())
}

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed+1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// TestBlobRange reads a window of a blob by range, at random offsets from
// several goroutines and then sequentially, and checks the bytes, the
// request pattern (one request per block at most, coalesced and parallel
// when sequential) and the cache cap.
func TestBlobRange(t *testing.T) {
	s := startRangeServer(t)
	data := randomBytes(3<<20+777, 1)
	repo, d := pushBlob(t, s.host, data, Options{})
	const off = 512
	win := data[off : len(data)-1024]
	const bs = 64 << 10
	cache, err := NewRangeCache(RangeOptions{BlockSize: bs, CacheSize: 16 * bs, ReadAhead: 8 * bs, Jobs: 3})
	if err != nil {
		t.Fatal(err)
	}
	br, err := repo.RangeReader(context.Background(), d, off, int64(len(win)), cache)
	if err != nil {
		t.Fatal(err)
	}
	defer br.Close()

	// Random reads from 4 goroutines.
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 9))
			for range 50 {
				o := r.Int64N(int64(len(win)))
				n := r.IntN(200 << 10)
				buf := make([]byte, n)
				k, err := br.ReadAt(buf, o)
				wantN := min(int64(n), int64(len(win))-o)
				if int64(k) != wantN || (int64(n) > wantN) != errors.Is(err, io.EOF) || err != nil && !errors.Is(err, io.EOF) {
					errs <- fmt.Errorf("ReadAt(%d bytes at %d) = %d, %v; want %d", n, o, k, err, wantN)
					return
				}
				if !bytes.Equal(buf[:k], win[o:o+int64(k)]) {
					errs <- fmt.Errorf("ReadAt(%d bytes at %d): wrong bytes", n, o)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if u := cache.Used(); u > 16*bs {
		t.Errorf("cache holds %d bytes, cap %d", u, 16*bs)
	}
	reqs, maxIn, _ := s.stats()
	if maxIn > 3 {
		t.Errorf("%d range requests in flight, jobs 3", maxIn)
	}
	for _, r := range reqs {
		if !strings.HasPrefix(r, "bytes=") {
			t.Fatalf("blob GET without a range: %q", r)
		}
	}

	// Sequential reads of 16 KiB: read-ahead coalesces blocks into
	// requests of several blocks and runs them in parallel.
	cache2, _ := NewRangeCache(RangeOptions{BlockSize: bs, CacheSize: 64 * bs, ReadAhead: 16 * bs, Jobs: 4})
	// Another blob: br's read-ahead may still be running.
	data = randomBytes(len(data), 3)
	win = data[off : len(data)-1024]
	_, d2 := pushBlob(t, s.host, data, Options{})
	ds := d2.String()
	s.only.Store(&ds)
	br2, _ := repo.RangeReader(context.Background(), d2, off, int64(len(win)), cache2)
	defer br2.Close()
	s.reset()
	got := make([]byte, 0, len(win))
	buf := make([]byte, 16<<10)
	for o := int64(0); ; o += int64(len(buf)) {
		n, err := br2.ReadAt(buf, o)
		got = append(got, buf[:n]...)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, win) {
		t.Fatal("sequential read differs")
	}
	reqs, maxIn, sent := s.stats()
	blocks := (len(win) + bs - 1) / bs
	if len(reqs) >= blocks/2 {
		t.Errorf("sequential read of %d blocks took %d requests, want them coalesced", blocks, len(reqs))
	}
	if maxIn < 2 {
		t.Errorf("sequential read ran at most %d requests at once, want read-ahead in parallel", maxIn)
	}
	if sent != int64(len(win)) {
		t.Errorf("the server sent %d bytes for a window of %d", sent, len(win))
	}
	t.Logf("sequential: %d requests for %d blocks, %d in flight at most", len(reqs), blocks, maxIn)

	// Readers of one block at once share one request.
	cache3, _ := NewRangeCache(RangeOptions{BlockSize: bs, ReadAhead: -1})
	br3, _ := repo.RangeReader(context.Background(), d2, off, int64(len(win)), cache3)
	defer br3.Close()
	s.reset()
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := make([]byte, 100)
			if _, err := br3.ReadAt(b, 5*bs+10); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if reqs, _, _ := s.stats(); len(reqs) != 1 || reqs[0] != fmt.Sprintf("bytes=%d-%d", off+5*bs, off+6*bs-1) {
		t.Errorf("8 readers of one block made requests %q, want one for the block", reqs)
	}

	// Seeded blocks are read without a request; partial blocks at the
	// ends of the seed are not kept.
	s.reset()
	br3.Seed(100, win[100:3*bs+100])
	b := make([]byte, bs)
	if _, err := br3.ReadAt(b, bs); err != nil || !bytes.Equal(b, win[bs:2*bs]) {
		t.Errorf("seeded block: %v", err)
	}
	if reqs, _, _ := s.stats(); len(reqs) != 0 {
		t.Errorf("reading a seeded block made requests %q", reqs)
	}
	if _, err := br3.ReadAt(b, 0); err != nil || !bytes.Equal(b, win[:bs]) {
		t.Errorf("block 0: %v", err)
	}
	if reqs, _, _ := s.stats(); len(reqs) != 1 {
		t.Errorf("block 0, only partly seeded, made requests %q, want one", reqs)
	}

	// Close cancels: a later read of an uncached block fails.
	br3.Close()
	if _, err := br3.ReadAt(make([]byte, 10), 40*bs); !errors.Is(err, context.Canceled) {
		t.Errorf("read after Close: %v, want context.Canceled", err)
	}
}

// TestBlobRangeRefused: a registry that ignores Range (or answers with
// another range) fails lazy reads with ErrRangeUnsupported saying to
// pull instead; one that stalls fails with ErrStalled.
func TestBlobRangeRefused(t *testing.T) {
	s := startRangeServer(t)
	data := randomBytes(1<<20, 2)
	repo, d := pushBlob(t, s.host, data, Options{Timeout: 300 * time.Millisecond})
	for _, mode := range []string{"norange", "badrange"} {
		s.mode.Store(mode)
		br, _ := repo.RangeReader(context.Background(), d, 512, 4096, nil)
		_, err := br.ReadAt(make([]byte, 100), 0)
		if !errors.Is(err, ErrRangeUnsupported) || !strings.Contains(err.Error(), "imgtool pull") {
			t.Errorf("%s: %v, want ErrRangeUnsupported saying to pull", mode, err)
		}
		if _, err := repo.ReadRange(context.Background(), d, 0, 512); !errors.Is(err, ErrRangeUnsupported) {
			t.Errorf("%s: ReadRange: %v, want ErrRangeUnsupported", mode, err)
		}
		br.Close()
	}
	s.mode.Store("stall")
	br, _ := repo.RangeReader(context.Background(), d, 512, 4096, nil)
	defer br.Close()
	start := time.Now()
	// The stall timer or the transport's response header timeout,
	// whichever fires first.
	if _, err := br.ReadAt(make([]byte, 100), 0); !errors.Is(err, ErrStalled) && !strings.Contains(fmt.Sprint(err), "timeout awaiting response headers") {
		t.Errorf("stalled registry: %v, want ErrStalled", err)
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Errorf("stall noticed after %v", el)
	}
	s.mode.Store("")
	if b, err := repo.ReadRange(context.Background(), d, 100, 512); err != nil || !bytes.Equal(b, data[100:612]) {
		t.Errorf("ReadRange: %v", err)
	}
}
