// Package registry is the plumbing imgtool's registry operations share:
// options, credentials, the HTTP transport, reference parsing, blob
// fetching and progress reports. The operations themselves live where the
// data goes: layers.Pull and layers.Push copy images between a registry
// and an OCI layout, overlay.Store unpacks straight from a registry.
//
// It builds on go-containerregistry: a Client hands out remote.Options
// for its remote package and authenticated per-repository transports for
// what remote does not do (ranged, resumable blob reads that hash once).
package registry

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// Defaults of Options.
const (
	// DefaultJobs is how many blobs are moved at once.
	DefaultJobs = 4
	// DefaultTimeout is how long a request may wait for its response
	// headers, and how long a response body may stall without a byte.
	DefaultTimeout = 30 * time.Second
	// MaxManifestSize caps manifests and indexes (the distribution spec's
	// 4 MiB, which registries must accept and clients should enforce).
	MaxManifestSize = 4 << 20
)

// Options configure a Client. The zero value means: verified TLS (plain
// HTTP only for loopback and local registries, as go-containerregistry
// decides), credentials from the default files (see Keychain), 4 jobs, 30 s
// timeouts.
type Options struct {
	// Insecure allows plain HTTP and TLS without certificate
	// verification for every registry the client talks to
	// (--tls-verify=false).
	Insecure bool
	// Creds, "USER:PASS" or "USER" with an empty password, is used for
	// every registry, before any credential file (--creds).
	Creds string
	// AuthFile, when set, is the only credential file read (an auth.json
	// or Docker config.json; --authfile). Creds still come first.
	AuthFile string
	// Jobs is how many blobs are moved at once (default DefaultJobs).
	Jobs int
	// Timeout bounds waiting for response headers and any stall of a
	// response body (default DefaultTimeout).
	Timeout time.Duration
	// Transport is the base transport (default: a clone of
	// http.DefaultTransport). Tests inject one here.
	Transport http.RoundTripper
	// Env replaces the process environment for finding credential files
	// (tests; nil means os.Getenv).
	Env func(string) string
}

// ErrInvalidOptions: an Options field holds a value that cannot work.
var ErrInvalidOptions = errors.New("registry: invalid options")

// Validate checks o and returns it with defaults filled in.
func (o Options) Validate() (Options, error) {
	if o.Jobs < 0 {
		return o, fmt.Errorf("%w: jobs %d", ErrInvalidOptions, o.Jobs)
	}
	if o.Jobs == 0 {
		o.Jobs = DefaultJobs
	}
	if o.Timeout < 0 {
		return o, fmt.Errorf("%w: timeout %v", ErrInvalidOptions, o.Timeout)
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Creds != "" {
		if u, _, _ := strings.Cut(o.Creds, ":"); u == "" {
			return o, fmt.Errorf("%w: --creds wants USER[:PASS], the user is empty", ErrInvalidOptions)
		}
	}
	return o, nil
}
