package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	digest "github.com/opencontainers/go-digest"
)

// Errors a Client's operations wrap.
var (
	// ErrUnauthorized: the registry refused the credentials, or wants
	// some and none were found. The error is an *AuthError.
	ErrUnauthorized = errors.New("registry: unauthorized")
	// ErrNotFound: the registry has no such manifest or blob.
	ErrNotFound = errors.New("registry: not found")
	// ErrRangeUnsupported: the registry answered a ranged blob request
	// with something other than the range.
	ErrRangeUnsupported = errors.New("registry: ranged blob request not honoured")
)

// AuthError says which registry refused access and where credentials were
// looked for.
type AuthError struct {
	Registry string
	Source   string   // where the refused credentials came from; "" for none found
	Tried    []string // the credential sources, in order
	Err      error
}

func (e *AuthError) Error() string {
	tried := strings.Join(e.Tried, ", ")
	if tried == "" {
		tried = "none"
	}
	if e.Source == "" {
		return fmt.Sprintf("registry %s wants credentials and none were found (tried: %s; use --creds USER:PASS or --authfile FILE): %v", e.Registry, tried, e.Err)
	}
	return fmt.Sprintf("registry %s refused the credentials from %s (sources tried in order: %s): %v", e.Registry, e.Source, tried, e.Err)
}

func (e *AuthError) Unwrap() []error { return []error{ErrUnauthorized, e.Err} }

// Client holds what every registry operation of one command shares: the
// options, the keychain and the transport. It is safe for concurrent use
// and needs no Close.
type Client struct {
	opts Options
	keys *Keychain
	tr   http.RoundTripper

	mu    sync.Mutex
	repos map[string]*Repo // "repo|push" -> authenticated repo
}

// ClientRef returns c, or when c is nil a new Client for o, and s parsed
// as c.Reference parses it: the start of an operation whose options carry
// an optional shared Client next to the Options that make one.
func ClientRef(c *Client, o Options, s string) (*Client, name.Reference, error) {
	if c == nil {
		var err error
		if c, err = New(o); err != nil {
			return nil, nil, err
		}
	}
	ref, err := c.Reference(s)
	if err != nil {
		return nil, nil, err
	}
	return c, ref, nil
}

// New returns a Client for o (validated, defaults filled in).
func New(o Options) (*Client, error) {
	o, err := o.Validate()
	if err != nil {
		return nil, err
	}
	return &Client{opts: o, keys: NewKeychain(o), tr: newTransport(o), repos: map[string]*Repo{}}, nil
}

// Options returns the client's options with defaults filled in.
func (c *Client) Options() Options { return c.opts }

// Keychain returns the client's keychain.
func (c *Client) Keychain() *Keychain { return c.keys }

// Transport returns the client's unauthenticated transport (scheme
// upgrade, manifest cap, stall timeout), for go-containerregistry calls
// made outside RemoteOptions.
func (c *Client) Transport() http.RoundTripper { return c.tr }

// RemoteOptions returns the remote.Options for go-containerregistry's
// remote package: context, keychain, transport, jobs, and a short retry
// backoff (so a registry that went away fails within seconds).
func (c *Client) RemoteOptions(ctx context.Context) []remote.Option {
	return []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(c.keys),
		remote.WithTransport(c.tr),
		remote.WithJobs(c.opts.Jobs),
		remote.WithUserAgent("imgtool"),
		remote.WithRetryBackoff(remote.Backoff{Duration: 200 * time.Millisecond, Factor: 2, Jitter: 0.1, Steps: 3}),
	}
}

// Repo is an authenticated view of one repository: blob reads and
// existence checks over plain HTTP requests (remote's own fetches hash
// each blob, which the layout and store writers do again). Safe for
// concurrent use.
type Repo struct {
	c    *Client
	name name.Repository
	rt   http.RoundTripper // authenticated (*transport.Wrapper)
	http *http.Client
}

// Repo authenticates to repo (pull scope, plus push with push set) and
// returns it; repos are cached per client.
func (c *Client) Repo(ctx context.Context, repo name.Repository, push bool) (*Repo, error) {
	key := repo.Name() + "|" + strconv.FormatBool(push)
	c.mu.Lock()
	r, ok := c.repos[key]
	c.mu.Unlock()
	if ok {
		return r, nil
	}
	auth, err := c.keys.Resolve(repo)
	if err != nil {
		return nil, err
	}
	scopes := []string{repo.Scope(transport.PullScope)}
	if push {
		scopes = []string{repo.Scope(transport.PushScope)}
	}
	rt, err := transport.NewWithContext(ctx, repo.Registry, auth, c.tr, scopes)
	if err != nil {
		return nil, c.WrapError(repo.Registry, err)
	}
	r = &Repo{c: c, name: repo, rt: rt, http: &http.Client{Transport: rt}}
	c.mu.Lock()
	c.repos[key] = r
	c.mu.Unlock()
	return r, nil
}

// Name returns the repository.
func (r *Repo) Name() name.Repository { return r.name }

// RemoteOptions returns remote.Options that reuse the repository's
// authenticated transport: go-containerregistry takes a
// *transport.Wrapper as it is, so remote.Get and the blob fetches of the
// image it returns make no ping or token request of their own (one
// round trip fewer each). Without remote's retry layer: a failed request
// fails, as the Repo's own requests do. Only for reads of this
// repository.
func (r *Repo) RemoteOptions(ctx context.Context) []remote.Option {
	return []remote.Option{
		remote.WithContext(ctx),
		remote.WithTransport(r.rt),
		remote.WithJobs(r.c.opts.Jobs),
	}
}

func (r *Repo) blobURL(d digest.Digest) string {
	u := url.URL{Scheme: r.name.Scheme(), Host: r.name.RegistryStr(), Path: "/v2/" + r.name.RepositoryStr() + "/blobs/" + d.String()}
	return u.String()
}

// FetchBlob opens the blob d for reading from byte offset (0 for all of
// it). size, when not negative, is checked against the response's length.
// A ranged request that the registry answers without the range fails with
// ErrRangeUnsupported. The bytes are not verified: the caller hashes them.
// The caller closes the reader.
func (r *Repo) FetchBlob(ctx context.Context, d digest.Digest, size, offset int64) (io.ReadCloser, error) {
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("registry: blob digest %q: %w", d, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.blobURL(d), nil)
	if err != nil {
		return nil, err
	}
	want := http.StatusOK
	if offset > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(offset, 10)+"-")
		want = http.StatusPartialContent
	}
	resp, err := r.http.Do(req)
	if err != nil {
		return nil, r.c.WrapError(r.name.Registry, fmt.Errorf("blob %s: %w", d, err))
	}
	if resp.StatusCode != want {
		defer resp.Body.Close()
		if offset > 0 && resp.StatusCode == http.StatusOK {
			return nil, fmt.Errorf("%w: blob %s from byte %d: status 200", ErrRangeUnsupported, d, offset)
		}
		err := transport.CheckError(resp, want)
		if resp.StatusCode == http.StatusNotFound {
			err = fmt.Errorf("%w: blob %s in %s: %v", ErrNotFound, d, r.name, err)
		}
		return nil, r.c.WrapError(r.name.Registry, fmt.Errorf("blob %s: %w", d, err))
	}
	if offset > 0 {
		cr := resp.Header.Get("Content-Range")
		if !strings.HasPrefix(cr, "bytes "+strconv.FormatInt(offset, 10)+"-") {
			resp.Body.Close()
			return nil, fmt.Errorf("%w: blob %s from byte %d: Content-Range %q", ErrRangeUnsupported, d, offset, cr)
		}
	}
	if size >= 0 && resp.ContentLength >= 0 && resp.ContentLength != size-offset {
		resp.Body.Close()
		return nil, fmt.Errorf("registry: blob %s: the registry sends %d bytes, the descriptor says %d", d, resp.ContentLength+offset, size)
	}
	return resp.Body, nil
}

// HasBlob reports whether the registry holds the blob d (a HEAD request).
func (r *Repo) HasBlob(ctx context.Context, d digest.Digest) (bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, r.blobURL(d), nil)
	if err != nil {
		return false, err
	}
	resp, err := r.http.Do(req)
	if err != nil {
		return false, r.c.WrapError(r.name.Registry, err)
	}
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		return true, nil
	case http.StatusNotFound:
		return false, nil
	}
	return false, r.c.WrapError(r.name.Registry, transport.CheckError(resp, http.StatusOK))
}

// WrapError turns an authentication failure from reg into an *AuthError
// naming the registry and the credential sources; other errors are
// returned as they are.
func (c *Client) WrapError(reg name.Registry, err error) error {
	if err == nil || errors.Is(err, ErrUnauthorized) {
		return err
	}
	var te *transport.Error
	if !errors.As(err, &te) {
		return err
	}
	auth := te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden
	for _, d := range te.Errors {
		if d.Code == transport.UnauthorizedErrorCode || d.Code == transport.DeniedErrorCode {
			auth = true
		}
	}
	if !auth {
		return err
	}
	return &AuthError{Registry: reg.RegistryStr(), Source: c.keys.SourceFor(reg.RegistryStr()), Tried: c.keys.Sources(), Err: err}
}

var _ authn.Keychain = (*Keychain)(nil)
