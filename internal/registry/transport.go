package registry

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Errors of the transport.
var (
	// ErrManifestTooLarge: a manifest or index response is larger than
	// MaxManifestSize.
	ErrManifestTooLarge = errors.New("registry: manifest too large")
	// ErrStalled: a registry stopped sending (or never answered) for
	// longer than Options.Timeout.
	ErrStalled = errors.New("registry: no data from the registry")
	// ErrTLSUntrusted: a registry's TLS certificate did not verify.
	ErrTLSUntrusted = errors.New("registry: TLS certificate not trusted")
)

// newTransport builds the transport stack under go-containerregistry's
// auth and retry layers:
//
//	schemeTransport (http -> https for loopback registries that speak TLS)
//	manifestCapTransport (4 MiB cap on manifests)
//	stallTransport (header and body timeouts)
//	base (http.Transport: TLS verification off with Insecure)
func newTransport(o Options) http.RoundTripper {
	base := o.Transport
	if base == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.DialContext = (&net.Dialer{Timeout: o.Timeout, KeepAlive: 30 * time.Second}).DialContext
		t.TLSHandshakeTimeout = o.Timeout
		t.ResponseHeaderTimeout = o.Timeout
		t.MaxIdleConnsPerHost = 2 * o.Jobs
		t.ReadBufferSize = 256 << 10
		t.WriteBufferSize = 256 << 10
		// Layers are compressed already; ask for them as they are.
		t.DisableCompression = true
		if o.Insecure {
			t.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // --tls-verify=false
		}
		base = t
	}
	var rt http.RoundTripper = &stallTransport{inner: base, timeout: o.Timeout}
	rt = &manifestCapTransport{inner: rt}
	return &schemeTransport{inner: rt, insecure: o.Insecure, scheme: map[string]string{}}
}

// schemeTransport settles, once per host, whether a registry that
// go-containerregistry addresses over plain HTTP (loopback and local
// registries, or every registry with Insecure) speaks TLS, and then sends
// its requests over https. go-containerregistry pings both schemes but
// builds every URL with name.Registry.Scheme, which is http for 127.0.0.1
// even when the registry only speaks TLS.
//
// A TLS registry whose certificate does not verify is refused (unless
// Insecure) rather than retried over plain HTTP.
type schemeTransport struct {
	inner    http.RoundTripper
	insecure bool

	mu     sync.Mutex
	scheme map[string]string // host -> "https" or "http"
}

func (t *schemeTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "http" {
		resp, err := t.inner.RoundTrip(req)
		if err != nil && answeredPlain(err) {
			// go-containerregistry's https ping of a plain-HTTP
			// registry: remember the answer, so that the http ping
			// that follows needs no probe of its own.
			t.mu.Lock()
			if _, ok := t.scheme[req.URL.Host]; !ok {
				t.scheme[req.URL.Host] = "http"
			}
			t.mu.Unlock()
		}
		return resp, err
	}
	scheme, err := t.schemeOf(req.Context(), req.URL.Host)
	if err != nil {
		return nil, err
	}
	if scheme == "https" {
		r := req.Clone(req.Context())
		r.URL.Scheme = "https"
		return t.inner.RoundTrip(r)
	}
	return t.inner.RoundTrip(req)
}

func (t *schemeTransport) schemeOf(ctx context.Context, host string) (string, error) {
	t.mu.Lock()
	if s, ok := t.scheme[host]; ok {
		t.mu.Unlock()
		return s, nil
	}
	t.mu.Unlock()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+host+"/v2/", nil)
	if err != nil {
		return "", err
	}
	resp, err := t.inner.RoundTrip(req)
	scheme := "https"
	switch {
	case err == nil:
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
	case isCertError(err):
		return "", fmt.Errorf("%w: https://%s: %v (use --tls-verify=false to skip verification)", ErrTLSUntrusted, host, err)
	case ctx.Err() != nil:
		return "", ctx.Err()
	case isNotTLS(err):
		scheme = "http"
	default:
		// Not reachable at all: let the real request report it.
		return "http", nil
	}
	t.mu.Lock()
	t.scheme[host] = scheme
	t.mu.Unlock()
	return scheme, nil
}

func isCertError(err error) bool {
	var (
		ua  x509.UnknownAuthorityError
		ci  x509.CertificateInvalidError
		he  x509.HostnameError
		cve *tls.CertificateVerificationError
	)
	return errors.As(err, &ua) || errors.As(err, &ci) || errors.As(err, &he) || errors.As(err, &cve)
}

// isNotTLS reports whether a TLS handshake failed because the server
// answered in plain HTTP (or hung up on the ClientHello).
func isNotTLS(err error) bool {
	var rh tls.RecordHeaderError
	if errors.As(err, &rh) {
		return true
	}
	s := err.Error()
	return errors.Is(err, io.EOF) || strings.Contains(s, "server gave HTTP response to HTTPS client") || strings.Contains(s, "connection reset") || strings.Contains(s, "first record does not look like a TLS handshake")
}

// answeredPlain reports whether a TLS handshake failed because the
// server answered in plain HTTP: the unambiguous cases of isNotTLS (not
// a reset or EOF, which a TLS server under load may also cause).
func answeredPlain(err error) bool {
	var rh tls.RecordHeaderError
	return errors.As(err, &rh) || strings.Contains(err.Error(), "server gave HTTP response to HTTPS client")
}

// manifestCapTransport refuses manifest responses larger than
// MaxManifestSize, by Content-Length or by counting.
type manifestCapTransport struct{ inner http.RoundTripper }

func (t *manifestCapTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.inner.RoundTrip(req)
	if err != nil || req.Method != http.MethodGet || !strings.Contains(req.URL.Path, "/manifests/") || resp.StatusCode != http.StatusOK {
		return resp, err
	}
	if resp.ContentLength > MaxManifestSize {
		resp.Body.Close()
		return nil, fmt.Errorf("%w: %s is %d bytes, more than %d", ErrManifestTooLarge, req.URL.Redacted(), resp.ContentLength, MaxManifestSize)
	}
	resp.Body = &capBody{rc: resp.Body, left: MaxManifestSize, what: req.URL.Redacted()}
	return resp, nil
}

type capBody struct {
	rc   io.ReadCloser
	left int64
	what string
}

func (b *capBody) Read(p []byte) (int, error) {
	if b.left < 0 {
		return 0, fmt.Errorf("%w: %s is more than %d bytes", ErrManifestTooLarge, b.what, MaxManifestSize)
	}
	if int64(len(p)) > b.left+1 {
		p = p[:b.left+1]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	if b.left < 0 {
		return 0, fmt.Errorf("%w: %s is more than %d bytes", ErrManifestTooLarge, b.what, MaxManifestSize)
	}
	return n, err
}

func (b *capBody) Close() error { return b.rc.Close() }

// stallTransport cancels a request whose body sends nothing for timeout,
// so that a registry that goes away mid-transfer (without closing the
// connection) fails the read with ErrStalled instead of hanging.
type stallTransport struct {
	inner   http.RoundTripper
	timeout time.Duration
}

func (t *stallTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx, cancel := context.WithCancelCause(req.Context())
	host := req.URL.Host
	stalled := fmt.Errorf("%w: %s sent nothing for %v", ErrStalled, host, t.timeout)
	timer := time.AfterFunc(t.timeout, func() { cancel(stalled) })
	resp, err := t.inner.RoundTrip(req.WithContext(ctx))
	if err != nil {
		timer.Stop()
		if context.Cause(ctx) == stalled {
			err = stalled
		}
		cancel(nil)
		return nil, err
	}
	timer.Reset(t.timeout)
	resp.Body = &stallBody{rc: resp.Body, timer: timer, timeout: t.timeout, ctx: ctx, cancel: cancel, stalled: stalled}
	return resp, nil
}

type stallBody struct {
	rc      io.ReadCloser
	timer   *time.Timer
	timeout time.Duration
	ctx     context.Context
	cancel  context.CancelCauseFunc
	stalled error
}

func (b *stallBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if n > 0 {
		b.timer.Reset(b.timeout)
	}
	if err != nil && err != io.EOF && context.Cause(b.ctx) == b.stalled {
		err = b.stalled
	}
	return n, err
}

func (b *stallBody) Close() error {
	b.timer.Stop()
	err := b.rc.Close()
	b.cancel(nil)
	return err
}
