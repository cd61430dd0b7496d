package overlay

import (
	"context"
	"fmt"
	"strings"

	"github.com/imgtool/imgtool/internal/ioprogress"
	"github.com/imgtool/imgtool/internal/registry"
	"github.com/imgtool/imgtool/layers"
	digest "github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
)

// RemoteOptions say how UnpackRemote and MountRemote reach a registry.
// The zero value uses the registry package's defaults.
type RemoteOptions struct {
	// Registry configures credentials, TLS and timeouts (ignored when
	// Client is set).
	Registry registry.Options
	// Client, when set, is used instead of a new one from Registry.
	Client *registry.Client
	// Progress receives the bytes of each layer blob as it streams in.
	Progress registry.ProgressFunc
}

// remotePinPrefix marks image pins and container records of images that
// came from a registry: their ImageDir is docker://HOST/REPO and their Tag
// the tag or digest. GC keeps such pins until GCOptions.IgnorePins (a
// registry cannot be asked offline whether the tag moved).
const remotePinPrefix = registry.TransportPrefix

// resolveRemote describes the layers of a registry image as store jobs.
// Each job streams its blob from the registry straight into layers.Apply
// (one pass: download, decompress, hash both digests, write the tree into
// the job's temp directory); installLayer renames the directory into the
// store only after Apply has verified the blob's digest and its diffID.
func (s *Store) resolveRemote(ctx context.Context, ref string, opts ImageOptions, ropts RemoteOptions) (*imageSpec, error) {
	c := ropts.Client
	if c == nil {
		var err error
		if c, err = registry.New(ropts.Registry); err != nil {
			return nil, err
		}
	}
	img, err := layers.ResolveRemote(ctx, c, ref, layers.RemoteResolveOptions{Platform: opts.Platform})
	if err != nil {
		return nil, err
	}
	r, err := c.Reference(ref)
	if err != nil {
		return nil, err
	}
	diffIDs := append([]digest.Digest(nil), img.Config.RootFS.DiffIDs...)
	chain := identity.ChainIDs(append([]digest.Digest(nil), diffIDs...))
	im := &imageSpec{Dir: remotePinPrefix + r.Context().Name(), Tag: r.Identifier(), Manifest: img.Descriptor, Platform: opts.Platform}
	im.Manifest.Annotations = nil
	for i, desc := range img.Manifest.Layers {
		if !layers.IsLayerMediaType(desc.MediaType) {
			return nil, fmt.Errorf("%w: %s: layer %d has media type %q", layers.ErrUnsupportedMediaType, ref, i, desc.MediaType)
		}
		rec, ao := s.layerJobSpec(i, desc, chain, diffIDs, opts.Limits)
		rep := registry.Progress{Digest: desc.Digest, MediaType: desc.MediaType, Size: desc.Size}
		im.Jobs = append(im.Jobs, layerJob{rec: rec, fill: func(ctx context.Context, dir string) (int64, error) {
			rep.State = registry.BlobStarted
			ropts.Progress.Report(rep)
			rc, err := img.Repo.FetchBlob(ctx, desc.Digest, desc.Size, 0)
			if err != nil {
				return 0, err
			}
			defer rc.Close()
			// body counts the bytes and keeps the first read error
			// (io.ErrUnexpectedEOF for a connection closed early,
			// registry.ErrStalled, ...).
			body := &ioprogress.Reader{R: rc}
			d, err := layers.Apply(ctx, ropts.Progress.Reader(body, rep), dir, ao)
			if err != nil && body.Err != nil && ctx.Err() == nil {
				// The registry went away: say so, not what the
				// truncated stream looked like to the tar reader.
				return 0, fmt.Errorf("blob %s from %s: after %d of %d bytes: %w", desc.Digest, img.Repo.Name(), body.N, desc.Size, body.Err)
			}
			if err != nil {
				return 0, fmt.Errorf("blob %s from %s: %w", desc.Digest, img.Repo.Name(), err)
			}
			rep.Done, rep.State = desc.Size, registry.BlobDone
			ropts.Progress.Report(rep)
			return d.UncompressedSize, nil
		}})
	}
	return im, nil
}

// UnpackRemote makes every layer of the registry image ref (with or
// without docker://) available in the store, fetching only the layers the
// store lacks, concurrently, each streamed straight into its directory
// (see resolveRemote), and pins the image.
func (s *Store) UnpackRemote(ctx context.Context, ref string, opts ImageOptions, ropts RemoteOptions) (UnpackStats, error) {
	im, err := s.resolveRemote(ctx, ref, opts, ropts)
	if err != nil {
		return UnpackStats{}, err
	}
	return s.unpackImage(ctx, im, opts.Progress)
}

// MountRemote is Mount for a registry image: the layers the store lacks
// are streamed in as UnpackRemote does, then the container is mounted.
func (s *Store) MountRemote(ctx context.Context, ref, target string, opts MountOptions, iopts ImageOptions, ropts RemoteOptions) (*Container, UnpackStats, error) {
	im, err := s.resolveRemote(ctx, ref, iopts, ropts)
	if err != nil {
		return nil, UnpackStats{}, err
	}
	return s.mountNamed(ctx, im, ref, target, opts, iopts.Progress)
}

// isRemotePin reports whether a pin or container names a registry image.
func isRemotePin(imageDir string) bool { return strings.HasPrefix(imageDir, remotePinPrefix) }
