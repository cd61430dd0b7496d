package layers

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/imgtool/imgtool/internal/registry"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// RemoteImage is one image of a registry: its manifest and config,
// fetched and verified against their digests, and the repository to read
// its layers from (Repo.FetchBlob; the caller verifies what it reads). It
// is a snapshot, safe for concurrent reads.
type RemoteImage struct {
	Reference   string // the reference, normalised
	Repo        *registry.Repo
	Descriptor  ocispec.Descriptor // the manifest's (with its platform when picked from an index)
	Manifest    ocispec.Manifest
	Config      ocispec.Image
	RawManifest []byte
	RawConfig   []byte
}

// RemoteResolveOptions pick an image of a registry reference. The zero
// value takes the only image, or the host's platform from an index.
type RemoteResolveOptions struct {
	// Platform picks from a multi-platform index (default: the host's).
	Platform *ocispec.Platform
}

// ResolveRemote fetches the image src names from the registry (one
// platform of an index, as Resolve picks in a layout), checks that it is
// an image (image config, layer media types this package reads, one
// diff_id per layer) and returns it. Errors name the reference; see Pull
// for the registry errors.
func ResolveRemote(ctx context.Context, c *registry.Client, src string, opts RemoteResolveOptions) (*RemoteImage, error) {
	ref, err := c.Reference(src)
	if err != nil {
		return nil, err
	}
	plan, _, err := pullResolve(ctx, c, ref, PullOptions{Platform: opts.Platform})
	if err != nil {
		return nil, err
	}
	repo, err := c.Repo(ctx, ref.Context(), false)
	if err != nil {
		return nil, err
	}
	img := &RemoteImage{Reference: ref.Name(), Repo: repo, Descriptor: plan.top}
	for _, m := range plan.manifests {
		if m.desc.Digest == plan.top.Digest {
			img.RawManifest = m.raw
		}
	}
	if err := json.Unmarshal(img.RawManifest, &img.Manifest); err != nil {
		return nil, fmt.Errorf("%w: %s: manifest: %v", ErrBlobCorrupt, ref, err)
	}
	cd := img.Manifest.Config
	if cd.Size > layoutMaxJSON {
		return nil, fmt.Errorf("%w: %s: config %s is %d bytes, more than %d", ErrBlobCorrupt, ref, cd.Digest, cd.Size, layoutMaxJSON)
	}
	rc, err := repo.FetchBlob(ctx, cd.Digest, cd.Size, 0)
	if err != nil {
		return nil, fmt.Errorf("%s: config: %w", ref, err)
	}
	defer rc.Close()
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, io.LimitReader(rc, cd.Size+1)); err != nil {
		return nil, fmt.Errorf("%s: config %s: %w", ref, cd.Digest, err)
	}
	img.RawConfig = buf.Bytes()
	if int64(len(img.RawConfig)) != cd.Size || cd.Digest.Algorithm().FromBytes(img.RawConfig) != cd.Digest {
		return nil, fmt.Errorf("%w: %s: config %s: the registry sent %d bytes with digest %s", ErrBlobCorrupt, ref, cd.Digest, len(img.RawConfig), digest.FromBytes(img.RawConfig))
	}
	if err := json.Unmarshal(img.RawConfig, &img.Config); err != nil {
		return nil, fmt.Errorf("%w: %s: config %s: %v", ErrBlobCorrupt, ref, cd.Digest, err)
	}
	if img.Config.RootFS.Type != "layers" {
		return nil, fmt.Errorf("%w: %s: config %s: rootfs.type %q, want \"layers\"", ErrBlobCorrupt, ref, cd.Digest, img.Config.RootFS.Type)
	}
	if n, k := len(img.Config.RootFS.DiffIDs), len(img.Manifest.Layers); n != k {
		return nil, fmt.Errorf("%w: %s: config %s: %d rootfs.diff_ids for %d layers", ErrBlobCorrupt, ref, cd.Digest, n, k)
	}
	for i, d := range img.Config.RootFS.DiffIDs {
		if err := d.Validate(); err != nil {
			return nil, fmt.Errorf("%w: %s: diff_id %d %q: %v", ErrBlobCorrupt, ref, i, d, err)
		}
	}
	if opts.Platform != nil && plan.top.Platform == nil && !MatchPlatform(*opts.Platform, img.Config.Platform) {
		return nil, fmt.Errorf("%w: %s is %s, want %s", ErrNoMatchingPlatform, ref, imagePlatformString(&img.Config.Platform), imagePlatformString(opts.Platform))
	}
	return img, nil
}
