package layers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/imgtool/imgtool/internal/jobs"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/imgtool/imgtool/internal/atomicfile"
	"github.com/imgtool/imgtool/internal/registry"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
)

// PullOptions configure Pull. The zero value pulls the host's platform
// (or the only image) with the registry package's defaults.
type PullOptions struct {
	// Registry configures credentials, TLS, timeouts and parallelism
	// (ignored when Client is set).
	Registry registry.Options
	// Client, when set, is used instead of a new one from Registry (to
	// share authentication across operations).
	Client *registry.Client
	// Platform picks one image of a multi-platform index (default: the
	// host's). Ignored with AllPlatforms.
	Platform *ocispec.Platform
	// AllPlatforms keeps a whole index: every manifest it lists, with
	// all their blobs, whatever their media types.
	AllPlatforms bool
	// AcceptMediaTypes lists config and layer media types accepted besides
	// the image ones (ParseMediaType's layers, OCI and Docker configs),
	// for artifacts. Without it, another media type fails with
	// ErrUnsupportedMediaType naming it.
	AcceptMediaTypes []string
	// Progress receives a report per blob step (see registry.Progress).
	Progress registry.ProgressFunc
}

// PullResult says what Pull did.
type PullResult struct {
	Reference string `json:"reference"` // the registry reference, normalised
	Tag       string `json:"tag"`
	// Descriptor is what the tag now points at: an image manifest, or
	// with AllPlatforms possibly an index.
	Descriptor ocispec.Descriptor `json:"descriptor"`
	Blobs      int                `json:"blobs"`   // config and layer blobs of the image(s)
	Fetched    int                `json:"fetched"` // blobs fetched now
	Present    int                `json:"present"` // blobs the layout had
	Bytes      int64              `json:"bytes"`   // bytes fetched now (blobs and manifests)
}

// pullPlan is what a pull writes: blobs to fetch, then the manifests and
// indexes (children before parents) whose bytes are in hand.
type pullPlan struct {
	blobs     []ocispec.Descriptor
	seen      map[digest.Digest]bool
	manifests []pullManifest
	top       ocispec.Descriptor
}

type pullManifest struct {
	desc ocispec.Descriptor
	raw  []byte
}

// Pull copies the image src (a registry reference, with or without
// docker://) into the OCI layout dst.Dir (created if missing) and tags it
// dst.Tag. From a multi-platform index it takes one image (see
// PullOptions.Platform) unless AllPlatforms.
//
// Blobs the layout holds already are not fetched. The others are fetched
// Jobs at a time, each into a partial file under blobs/ALG that a later
// Pull resumes (HTTP range request) if this one is interrupted; a blob is
// renamed into place only once its size and digest match its descriptor,
// else the partial file is removed and the error wraps ErrBlobCorrupt and
// names the digest. Manifests are written after every blob they reference,
// and index.json last, so an interrupted pull leaves no tag pointing at an
// incomplete image.
func Pull(ctx context.Context, src string, dst ImageRef, opts PullOptions) (*PullResult, error) {
	if err := ValidateTag(dst.Tag); err != nil {
		return nil, err
	}
	c, ref, err := registry.ClientRef(opts.Client, opts.Registry, src)
	if err != nil {
		return nil, err
	}
	plan, fetched, err := pullResolve(ctx, c, ref, opts)
	if err != nil {
		return nil, err
	}
	l, err := InitLayout(dst.Dir)
	if err != nil {
		return nil, err
	}
	res := &PullResult{Reference: ref.Name(), Tag: dst.Tag, Descriptor: plan.top, Blobs: len(plan.blobs), Bytes: fetched}
	repo, err := c.Repo(ctx, ref.Context(), false)
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex
	err = jobs.ForEach(ctx, c.Options().Jobs, len(plan.blobs), func(ctx context.Context, i int) error {
		n, err := l.pullBlob(ctx, repo, plan.blobs[i], opts.Progress)
		mu.Lock()
		defer mu.Unlock()
		if err == nil && n < 0 {
			res.Present++
		} else if err == nil {
			res.Fetched++
			res.Bytes += n
		}
		return err
	})
	if err != nil {
		return res, fmt.Errorf("pull %s: %w", ref.Name(), err)
	}
	for _, m := range plan.manifests {
		if _, err := l.WriteBlobBytes(ctx, m.desc.MediaType, m.raw); err != nil {
			return res, err
		}
	}
	tagged := plan.top
	tagged.Annotations = map[string]string{AnnotationSource: ref.Context().Name()}
	for k, v := range plan.top.Annotations {
		tagged.Annotations[k] = v
	}
	if err := l.SetTag(ctx, dst.Tag, tagged); err != nil {
		return res, err
	}
	return res, nil
}

// pullResolve fetches the manifests below ref and plans the pull; it
// returns the bytes of manifests fetched.
func pullResolve(ctx context.Context, c *registry.Client, ref name.Reference, opts PullOptions) (*pullPlan, int64, error) {
	plan := &pullPlan{seen: map[digest.Digest]bool{}}
	ropts := c.RemoteOptions(ctx)
	var fetched int64
	get := func(r name.Reference, want *ocispec.Descriptor) (ocispec.Descriptor, []byte, error) {
		d, err := remote.Get(r, ropts...)
		if err != nil {
			return ocispec.Descriptor{}, nil, pullWrapErr(c, r, err)
		}
		if len(d.Manifest) > registry.MaxManifestSize {
			return ocispec.Descriptor{}, nil, fmt.Errorf("%w: %s is %d bytes, more than %d", registry.ErrManifestTooLarge, r, len(d.Manifest), registry.MaxManifestSize)
		}
		fetched += int64(len(d.Manifest))
		desc := ocispec.Descriptor{MediaType: string(d.MediaType), Digest: digest.FromBytes(d.Manifest), Size: int64(len(d.Manifest))}
		if want != nil {
			if desc.Digest != want.Digest || desc.Size != want.Size {
				return desc, nil, fmt.Errorf("%w: manifest %s from %s has digest %s and %d bytes, the index says %d", ErrBlobCorrupt, want.Digest, r.Context(), desc.Digest, desc.Size, want.Size)
			}
			desc.Platform, desc.Annotations, desc.ArtifactType = want.Platform, want.Annotations, want.ArtifactType
		}
		return desc, d.Manifest, nil
	}
	top, raw, err := get(ref, nil)
	if err != nil {
		return nil, 0, err
	}
	switch {
	case imageIsIndex(top.MediaType) && !opts.AllPlatforms:
		idx, err := pullParseIndex(ref, top, raw)
		if err != nil {
			return nil, 0, err
		}
		var ms []ocispec.Descriptor
		for _, d := range idx.Manifests {
			if imageIsManifest(d.MediaType) {
				ms = append(ms, d)
			}
		}
		pick, err := imagePickPlatform(ms, opts.Platform)
		if err != nil {
			return nil, 0, fmt.Errorf("%s: %w", ref, err)
		}
		child, craw, err := get(ref.Context().Digest(pick.Digest.String()), &pick)
		if err != nil {
			return nil, 0, err
		}
		if err := plan.addManifest(ref, child, craw, opts, true); err != nil {
			return nil, 0, err
		}
		plan.top = child
	case imageIsIndex(top.MediaType):
		if err := plan.addIndex(ref, top, raw, opts, get, 0); err != nil {
			return nil, 0, err
		}
		plan.top = top
	case imageIsManifest(top.MediaType):
		if err := plan.addManifest(ref, top, raw, opts, !opts.AllPlatforms); err != nil {
			return nil, 0, err
		}
		plan.top = top
	default:
		return nil, 0, fmt.Errorf("%w: %s is %q, not an OCI or Docker v2 image manifest or index", ErrUnsupportedMediaType, ref, top.MediaType)
	}
	return plan, fetched, nil
}

func pullParseIndex(ref name.Reference, desc ocispec.Descriptor, raw []byte) (*ocispec.Index, error) {
	idx, err := layoutParseIndex(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: index %s: %w", ref.Context(), desc.Digest, err)
	}
	return idx, nil
}

// addIndex plans an index and everything below it (all platforms).
func (p *pullPlan) addIndex(ref name.Reference, desc ocispec.Descriptor, raw []byte, opts PullOptions, get func(name.Reference, *ocispec.Descriptor) (ocispec.Descriptor, []byte, error), depth int) error {
	if depth >= layoutMaxIndexDepth {
		return fmt.Errorf("%w: %s: indexes nested more than %d deep", ErrBlobCorrupt, ref, layoutMaxIndexDepth)
	}
	idx, err := pullParseIndex(ref, desc, raw)
	if err != nil {
		return err
	}
	if len(idx.Manifests) > layoutMaxDescriptors {
		return fmt.Errorf("%w: %s: index %s lists %d manifests", ErrBlobCorrupt, ref, desc.Digest, len(idx.Manifests))
	}
	for _, d := range idx.Manifests {
		if p.seen[d.Digest] {
			continue
		}
		if !imageIsIndex(d.MediaType) && !imageIsManifest(d.MediaType) {
			return fmt.Errorf("%w: %s: index %s lists %s of media type %q", ErrUnsupportedMediaType, ref, desc.Digest, d.Digest, d.MediaType)
		}
		child, craw, err := get(ref.Context().Digest(d.Digest.String()), &d)
		if err != nil {
			return err
		}
		if imageIsIndex(d.MediaType) {
			err = p.addIndex(ref, child, craw, opts, get, depth+1)
		} else {
			err = p.addManifest(ref, child, craw, opts, false)
		}
		if err != nil {
			return err
		}
	}
	p.seen[desc.Digest] = true
	p.manifests = append(p.manifests, pullManifest{desc, raw})
	return nil
}

// addManifest plans an image manifest: its config and layers. With strict,
// their media types must be image ones (or accepted by opts).
func (p *pullPlan) addManifest(ref name.Reference, desc ocispec.Descriptor, raw []byte, opts PullOptions, strict bool) error {
	var m ocispec.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return fmt.Errorf("%w: %s: manifest %s: %v", ErrBlobCorrupt, ref, desc.Digest, err)
	}
	if m.SchemaVersion != 2 {
		return fmt.Errorf("%w: %s: manifest %s has schemaVersion %d, want 2", ErrUnsupportedMediaType, ref, desc.Digest, m.SchemaVersion)
	}
	accepted := func(mt string) bool {
		for _, a := range opts.AcceptMediaTypes {
			if a == mt {
				return true
			}
		}
		return false
	}
	if strict && !imageIsConfig(m.Config.MediaType) && !accepted(m.Config.MediaType) {
		return fmt.Errorf("%w: %s: config media type %q is not an image config", ErrUnsupportedMediaType, ref, m.Config.MediaType)
	}
	if len(m.Layers) > layoutMaxDescriptors {
		return fmt.Errorf("%w: %s: manifest %s lists %d layers", ErrBlobCorrupt, ref, desc.Digest, len(m.Layers))
	}
	for i, ld := range m.Layers {
		if strict && !IsLayerMediaType(ld.MediaType) && !accepted(ld.MediaType) {
			return fmt.Errorf("%w: %s: layer %d (%s) has media type %q", ErrUnsupportedMediaType, ref, i, ld.Digest, ld.MediaType)
		}
	}
	for _, d := range append([]ocispec.Descriptor{m.Config}, m.Layers...) {
		if err := d.Digest.Validate(); err != nil {
			return fmt.Errorf("%w: %s: manifest %s: digest %q: %v", ErrBlobCorrupt, ref, desc.Digest, d.Digest, err)
		}
		if d.Size < 0 {
			return fmt.Errorf("%w: %s: manifest %s: blob %s has negative size", ErrBlobCorrupt, ref, desc.Digest, d.Digest)
		}
		if !p.seen[d.Digest] {
			p.seen[d.Digest] = true
			p.blobs = append(p.blobs, ocispec.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size})
		}
	}
	if !p.seen[desc.Digest] {
		p.seen[desc.Digest] = true
		p.manifests = append(p.manifests, pullManifest{desc, raw})
	}
	return nil
}

// pullWrapErr names the registry in authentication errors and marks
// missing manifests.
func pullWrapErr(c *registry.Client, ref name.Reference, err error) error {
	err = c.WrapError(ref.Context().Registry, err)
	var ae *registry.AuthError
	if errors.As(err, &ae) {
		return err
	}
	return fmt.Errorf("%s: %w", ref, err)
}

// pullBufSize is the copy buffer of a blob download.
const pullBufSize = 1 << 20

// pullBlob makes the blob of desc present in the layout, fetching it from
// repo, resuming a partial file left by an earlier pull. It returns the
// bytes fetched, or -1 when the layout had the blob.
func (l *Layout) pullBlob(ctx context.Context, repo *registry.Repo, desc ocispec.Descriptor, progress registry.ProgressFunc) (int64, error) {
	rep := registry.Progress{Digest: desc.Digest, MediaType: desc.MediaType, Size: desc.Size}
	if ok, err := l.HasBlob(desc); err != nil {
		return 0, err
	} else if ok {
		rep.Done, rep.State = desc.Size, registry.BlobSkipped
		progress.Report(rep)
		return -1, nil
	}
	final := l.blobPath(desc.Digest)
	dir := filepath.Dir(final)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	partial := filepath.Join(dir, ".partial-"+desc.Digest.Encoded())
	f, err := os.OpenFile(partial, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	// One writer per partial file, across processes; the loser waits
	// and then finds the blob in place.
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return 0, fmt.Errorf("layers: locking %s: %w", partial, err)
	}
	if ok, err := l.HasBlob(desc); err != nil || ok {
		if ok {
			rep.Done, rep.State = desc.Size, registry.BlobSkipped
			progress.Report(rep)
			return -1, nil
		}
		return 0, err
	}
	h := desc.Digest.Algorithm().Hash()
	off, err := pullResumeHash(f, h, desc.Size)
	if err != nil {
		return 0, err
	}
	var got int64
	if off < desc.Size {
		rep.Done, rep.State = off, registry.BlobStarted
		progress.Report(rep)
		rc, err := repo.FetchBlob(ctx, desc.Digest, desc.Size, off)
		if errors.Is(err, registry.ErrRangeUnsupported) && off > 0 {
			// Start over.
			if off, err = 0, f.Truncate(0); err == nil {
				h.Reset()
				if _, err = f.Seek(0, io.SeekStart); err == nil {
					rc, err = repo.FetchBlob(ctx, desc.Digest, desc.Size, 0)
				}
			}
		}
		if err != nil {
			return 0, err
		}
		rep.Done = off
		n, err := io.CopyBuffer(io.MultiWriter(f, h), progress.Reader(io.LimitReader(rc, desc.Size-off+1), rep), make([]byte, pullBufSize))
		rc.Close()
		got = n
		if err != nil {
			if ctx.Err() != nil {
				return got, ctx.Err()
			}
			return got, fmt.Errorf("blob %s: after %d of %d bytes: %w", desc.Digest, off+n, desc.Size, err)
		}
		off += n
	}
	if off != desc.Size || digest.NewDigest(desc.Digest.Algorithm(), h) != desc.Digest {
		what := fmt.Sprintf("%d bytes with digest %s", off, digest.NewDigest(desc.Digest.Algorithm(), h))
		if off > desc.Size {
			what = fmt.Sprintf("more than its %d bytes", desc.Size)
		}
		os.Remove(partial)
		return got, fmt.Errorf("%w: blob %s from %s: the registry sent %s; nothing was kept", ErrBlobCorrupt, desc.Digest, repo.Name(), what)
	}
	if err := f.Chmod(0o644); err != nil {
		return got, err
	}
	if !l.noSync {
		if err := f.Sync(); err != nil {
			return got, err
		}
	}
	if err := os.Rename(partial, final); err != nil {
		return got, err
	}
	if !l.noSync {
		if err := atomicfile.SyncDir(dir); err != nil {
			return got, err
		}
	}
	rep.Done, rep.State = desc.Size, registry.BlobDone
	progress.Report(rep)
	return got, nil
}

// pullResumeHash hashes what a partial file holds, leaves the offset at
// its end and returns its length; a file longer than size is emptied.
func pullResumeHash(f *os.File, h hash.Hash, size int64) (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if fi.Size() > size {
		if err := f.Truncate(0); err != nil {
			return 0, err
		}
		_, err := f.Seek(0, io.SeekStart)
		return 0, err
	}
	n, err := io.CopyBuffer(h, f, make([]byte, pullBufSize))
	if err != nil {
		return 0, fmt.Errorf("layers: reading partial blob %s: %w", f.Name(), err)
	}
	return n, nil
}
