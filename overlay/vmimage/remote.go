package vmimage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	digest "github.com/opencontainers/go-digest"

	"github.com/imgtool/imgtool/internal/registry"
	"github.com/imgtool/imgtool/qcow2"
)

// RemoteOptions configure OpenRemote.
type RemoteOptions struct {
	// Client talks to the registry; nil means a client with Registry's
	// options.
	Client *registry.Client
	// Registry are the options of the client OpenRemote makes when
	// Client is nil (--tls-verify, --creds, --authfile).
	Registry registry.Options
	// Cache holds the blocks of every level (shared by all levels, so
	// its cap bounds the whole chain); nil means a cache with Range's
	// options.
	Cache *registry.RangeCache
	// Range are the options of the cache OpenRemote makes when Cache is
	// nil.
	Range registry.RangeOptions
	// Qcow2 are the options the levels are opened with (Format,
	// OpenBacking, CheckReference and Writable are set by OpenRemote).
	Qcow2 qcow2.Options
}

// ErrNoRange: the registry does not serve byte ranges of blobs, so the
// chain cannot be read lazily (pull it instead).
var ErrNoRange = registry.ErrRangeUnsupported

// OpenRemote opens the chain image ref (docker://HOST/REPO:TAG or
// without the prefix) straight from the registry, without pulling it: it
// fetches and validates the manifest (Plan) and the config, checks each
// level's tar header and end-of-archive by range requests, and opens the
// top level with qcow2.OpenReaderAt over a range reader of its layer blob
// (the qcow2 starts at byte 512). Backing files resolve only to the
// parent level: each level's qcow2 must name exactly PARENT.qcow2
// (format qcow2) and the base none; anything else is refused. The image
// is read-only; closing it stops its readers. The levels are named
// docker://REF/NAME.qcow2 in messages and Info.
//
// Reads are not verified against the layer digests (a lazy reader never
// holds a whole blob); the registry's transport is trusted as for any
// lazy read, and every metadata structure is bounds-checked by qcow2.
func OpenRemote(ctx context.Context, ref string, o RemoteOptions) (*qcow2.Image, error) {
	c, r, err := registry.ClientRef(o.Client, o.Registry, ref)
	if err != nil {
		return nil, err
	}
	// One authentication handshake (ping, token) for the manifest, the
	// config and every range request.
	repo, err := c.Repo(ctx, r.Context(), false)
	if err != nil {
		return nil, c.WrapError(r.Context().Registry, fmt.Errorf("vmimage: %s: %w", r, err))
	}
	levels, cfgImg, err := remotePlan(ctx, c, repo, r)
	if err != nil {
		return nil, err
	}
	cache := o.Cache
	if cache == nil {
		ro := o.Range
		if ro.Jobs == 0 {
			ro.Jobs = c.Options().Jobs
		}
		if cache, err = registry.NewRangeCache(ro); err != nil {
			return nil, err
		}
	}
	prefix := registry.TransportPrefix + r.String() + "/"
	byPath := make(map[string]int, len(levels))
	for i, l := range levels {
		byPath[prefix+l.File()] = i
	}
	open := func(i int) (*registry.BlobRange, error) {
		l := levels[i]
		return repo.RangeReader(ctx, digest.Digest(l.Digest.String()), HeaderSize, l.Size, cache)
	}
	// The config and every level at once: each level's tar framing
	// checked and its qcow2 metadata read into the cache (one round trip
	// per structure for the whole chain instead of one per level in
	// turn), while the config is fetched and checked.
	var cfgErr error
	cfgDone := make(chan struct{})
	go func() {
		defer close(cfgDone)
		cfgErr = remoteConfig(c, r, cfgImg, levels)
	}()
	errs := make([]error, len(levels))
	var wg sync.WaitGroup
	budget := cache.Options().CacheSize / 4 / int64(len(levels))
	for i, l := range levels {
		wg.Add(1)
		go func() {
			defer wg.Done()
			br, err := open(i)
			if err != nil {
				errs[i] = err
				return
			}
			defer br.Close()
			if errs[i] = checkRemoteLayer(ctx, repo, r, l, br, cache.Options().BlockSize); errs[i] != nil {
				return
			}
			qcow2.PrefetchMetadata(br, l.Size, budget)
		}()
	}
	wg.Wait()
	<-cfgDone
	if cfgErr != nil {
		return nil, cfgErr
	}
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	qo := o.Qcow2
	qo.Format, qo.Writable, qo.CheckReference = qcow2.FormatQcow2, false, nil
	qo.OpenBacking = func(ref qcow2.Reference) (io.ReaderAt, int64, error) {
		i, ok := byPath[ref.Image]
		if !ok || i == 0 {
			return nil, 0, fmt.Errorf("%w: %s names backing file %q (the base of a chain image has none)", ErrBadBacking, ref.Image, ref.Name)
		}
		if want := levels[i].Backing(); ref.Name != want {
			return nil, 0, fmt.Errorf("%w: %s names backing file %q, want %q", ErrBadBacking, ref.Image, ref.Name, want)
		}
		br, err := open(i - 1)
		if err != nil {
			return nil, 0, err
		}
		return br, levels[i-1].Size, nil
	}
	if o.Qcow2.MaxChainDepth == 0 {
		qo.MaxChainDepth = max(qcow2.DefaultMaxChainDepth, len(levels))
	}
	topIdx := len(levels) - 1
	top, err := open(topIdx)
	if err != nil {
		return nil, err
	}
	img, err := qcow2.OpenReaderAt(prefix+levels[topIdx].File(), top, levels[topIdx].Size, qo)
	if err != nil {
		top.Close()
		return nil, remoteError(r, err)
	}
	// Each level's header against the manifest: the backing name (the
	// base names none) and format, and the virtual size.
	i := topIdx
	for l := img; l != nil && !qo.NoBacking; l, i = l.Backing(), i-1 {
		h := l.Header()
		if err := levels[i].CheckBacking(h.BackingFile, h.BackingFormat); err != nil {
			img.Close()
			return nil, fmt.Errorf("vmimage: %s: %w", r, err)
		}
		if l.Size() != levels[i].VirtualSize {
			img.Close()
			return nil, fmt.Errorf("%w: %s: level %s has virtual size %d, the manifest says %d", ErrBadLayer, r, levels[i].Name, l.Size(), levels[i].VirtualSize)
		}
	}
	return img, nil
}

// remoteError makes a failure of the lazy open say what to do when the
// registry does not serve ranges.
func remoteError(r name.Reference, err error) error {
	if errors.Is(err, registry.ErrRangeUnsupported) && !strings.Contains(err.Error(), "pull") {
		return fmt.Errorf("vmimage: %s: %w (pull the image instead: imgtool pull)", r, err)
	}
	return err
}

// remotePlan fetches ref's manifest through repo's transport and
// returns its validated levels and the image (whose config remoteConfig
// checks).
func remotePlan(ctx context.Context, c *registry.Client, repo *registry.Repo, r name.Reference) ([]Level, v1.Image, error) {
	desc, err := remote.Get(r, repo.RemoteOptions(ctx)...)
	if err != nil {
		return nil, nil, c.WrapError(r.Context().Registry, fmt.Errorf("vmimage: %s: %w", r, err))
	}
	if desc.MediaType.IsIndex() {
		return nil, nil, fmt.Errorf("%w: %s is an image index (%s), not a VM chain image", ErrNotChain, r, desc.MediaType)
	}
	m, err := v1.ParseManifest(bytes.NewReader(desc.Manifest))
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s: manifest: %v", ErrNotChain, r, err)
	}
	if m.MediaType == "" {
		m.MediaType = desc.MediaType
	}
	levels, err := Plan(m)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", r, err) // err says "vmimage:" already
	}
	img, err := desc.Image()
	if err != nil {
		return nil, nil, fmt.Errorf("vmimage: %s: %w", r, err)
	}
	return levels, img, nil
}

// remoteConfig fetches img's config (verified against its digest by
// remote) and checks it against levels.
func remoteConfig(c *registry.Client, r name.Reference, img v1.Image, levels []Level) error {
	raw, err := img.RawConfigFile()
	if err != nil {
		return c.WrapError(r.Context().Registry, fmt.Errorf("vmimage: %s: config: %w", r, err))
	}
	if err := CheckConfig(raw, levels); err != nil {
		return fmt.Errorf("vmimage: %s: %w", r, err)
	}
	return nil
}

// checkRemoteLayer reads level l's tar header and what follows its file
// by range requests and checks both are exactly what the format writes:
// one regular file disk/NAME.qcow2 of the annotated size, then padding and
// the end-of-archive.
//
// The header is read with the file's first block (bs bytes), which goes
// into br's cache: the qcow2 header is read next anyway.
func checkRemoteLayer(ctx context.Context, repo *registry.Repo, r name.Reference, l Level, br *registry.BlobRange, bs int64) error {
	d := digest.Digest(l.Digest.String())
	// The trailer's place is known from the manifest: read it while the
	// header is read.
	var (
		t    []byte
		tErr error
		done = make(chan struct{})
	)
	go func() {
		defer close(done)
		tail := l.BlobSize - HeaderSize - l.Size
		t, tErr = repo.ReadRange(ctx, d, HeaderSize+l.Size, int(tail))
	}()
	h, err := repo.ReadRange(ctx, d, 0, int(HeaderSize+min(l.Size, bs)))
	<-done
	if err != nil {
		return remoteError(r, fmt.Errorf("vmimage: %s: level %s: %w", r, l.Name, err))
	}
	size, err := ParseHeader(h[:HeaderSize], l.Name)
	if err != nil {
		return fmt.Errorf("vmimage: %s: %w", r, err)
	}
	if size != l.Size {
		return fmt.Errorf("%w: %s: level %s: the tar header says %d bytes, the manifest %d", ErrBadLayer, r, l.Name, size, l.Size)
	}
	br.Seed(0, h[HeaderSize:])
	if tErr != nil {
		return remoteError(r, fmt.Errorf("vmimage: %s: level %s: %w", r, l.Name, tErr))
	}
	if err := CheckTrailer(bytes.NewReader(t), l.Name, l.Size); err != nil {
		return fmt.Errorf("vmimage: %s: %w", r, err)
	}
	return nil
}
