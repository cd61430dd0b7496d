package overlay

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/imgtool/imgtool/internal/jsonfile"
	"github.com/imgtool/imgtool/layers"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Garbage collection.
//
// Roots, whose layers GC keeps:
//   - every container of the store (containers/NAME/container.json),
//     mounted or not: an unmounted container keeps its upper dir and may be
//     mounted or committed again, so it keeps its layers until
//     `rootfs umount --rm` removes it;
//   - image pins. Mounting an image writes images/HEX.json naming the image
//     (layout directory and tag), its manifest digest and its layers. A pin
//     keeps the layers while the tag still resolves to that manifest in that
//     layout; once the layout is gone or the tag moved (or was removed), the
//     pin is stale and GC drops it. So layers of images one still has stay
//     unpacked for the next mount, and layers of images one deleted or
//     retagged go. GCOptions.IgnorePins drops every pin and keeps only what
//     containers use.
// GC also clears tmp/ (unpacks interrupted by a crash), short links of
// removed layers, and container directories without a record.

// imagePin is images/HEX.json.
type imagePin struct {
	ImageDir string            `json:"image_dir"`
	Tag      string            `json:"tag"`
	Manifest digest.Digest     `json:"manifest"`
	Platform *ocispec.Platform `json:"platform,omitempty"`
	Layers   []digest.Digest   `json:"layers"`
	Pinned   time.Time         `json:"pinned"`
}

// pinKey names the pin of an image: one per layout, tag and asked-for
// platform.
func pinKey(dir, tag string, p *ocispec.Platform) string {
	k := dir + ":" + tag
	if p != nil {
		k += "@" + p.OS + "/" + p.Architecture + "/" + p.Variant
	}
	h := sha256.Sum256([]byte(k))
	return hex.EncodeToString(h[:])
}

// pinImage records that the store holds im's layers.
func (s *Store) pinImage(im *imageSpec, chain []digest.Digest) error {
	if im.Dir == "" {
		return nil // not from a layout (tests)
	}
	file := s.path("images", pinKey(im.Dir, im.Tag, im.Platform)+".json")
	var old imagePin
	if jsonfile.Read(file, &old) == nil && old.Manifest == im.Manifest.Digest {
		return nil // pinned already (the layers follow from the manifest)
	}
	p := imagePin{ImageDir: im.Dir, Tag: im.Tag, Manifest: im.Manifest.Digest, Platform: im.Platform, Layers: chain, Pinned: time.Now().UTC()}
	return jsonfile.Write(file, &p, 0o600)
}

// pins reads the image pins with their file paths.
func (s *Store) pins() ([]imagePin, []string, error) {
	ents, err := os.ReadDir(s.path("images"))
	if err != nil {
		return nil, nil, fmt.Errorf("overlay: %w", err)
	}
	var ps []imagePin
	var files []string
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		f := s.path("images", e.Name())
		var p imagePin
		if err := jsonfile.Read(f, &p); err != nil {
			return nil, nil, fmt.Errorf("overlay: image pin: %w", err)
		}
		ps = append(ps, p)
		files = append(files, f)
	}
	return ps, files, nil
}

// pinValid reports whether the pin's tag still resolves to its manifest.
func pinValid(ctx context.Context, p imagePin) bool {
	if isRemotePin(p.ImageDir) {
		return true // kept until gc --all (see remotePinPrefix)
	}
	l, err := layers.OpenLayout(p.ImageDir)
	if err != nil {
		return false
	}
	img, err := l.Resolve(ctx, p.Tag, layers.ResolveOptions{Platform: p.Platform})
	return err == nil && img.Descriptor.Digest == p.Manifest
}

// GCOptions configure GC. The zero value removes what no container and no
// valid image pin needs.
type GCOptions struct {
	// IgnorePins drops all image pins: only containers keep layers.
	IgnorePins bool
	// DryRun reports what would be removed without removing anything.
	DryRun bool
}

// GCResult says what GC removed (or, with DryRun, would remove).
type GCResult struct {
	RemovedLayers []digest.Digest `json:"removed_layers"`
	FreedBytes    int64           `json:"freed_bytes"`
	KeptLayers    int             `json:"kept_layers"`
	DroppedPins   []string        `json:"dropped_pins"` // DIR:TAG of stale or ignored pins
}

// GC removes layers that no root needs (see the roots above). It holds
// the store lock exclusively, so it waits for mounts, unmounts and commits
// in progress and they wait for it.
func (s *Store) GC(ctx context.Context, opts GCOptions) (*GCResult, error) {
	lk, err := acquireLock(ctx, s.path("store.lock"), true)
	if err != nil {
		return nil, err
	}
	defer lk.Unlock()
	res := &GCResult{RemovedLayers: []digest.Digest{}, DroppedPins: []string{}}
	keep := map[digest.Digest]bool{}
	cs, err := s.Containers()
	if err != nil {
		return nil, err
	}
	for _, c := range cs {
		for _, id := range c.Layers {
			keep[id] = true
		}
	}
	ps, files, err := s.pins()
	if err != nil {
		return nil, err
	}
	for i, p := range ps {
		if !opts.IgnorePins && pinValid(ctx, p) {
			for _, id := range p.Layers {
				keep[id] = true
			}
			continue
		}
		res.DroppedPins = append(res.DroppedPins, p.ImageDir+":"+p.Tag)
		if !opts.DryRun {
			if err := os.Remove(files[i]); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("overlay: %w", err)
			}
		}
	}
	ls, err := s.Layers()
	if err != nil {
		return nil, err
	}
	for _, l := range ls {
		if keep[l.ChainID] {
			res.KeptLayers++
			continue
		}
		res.RemovedLayers = append(res.RemovedLayers, l.ChainID)
		res.FreedBytes += l.Size
		if opts.DryRun {
			continue
		}
		if err := s.removeLayer(l); err != nil {
			return nil, err
		}
	}
	if opts.DryRun {
		return res, nil
	}
	if err := s.sweep(cs); err != nil {
		return nil, err
	}
	return res, nil
}

// removeLayer deletes a layer: first renamed out of layers/ (so a crash
// midway leaves no half layer under its name), then removed.
func (s *Store) removeLayer(l *Layer) error {
	key, err := layerKey(l.ChainID)
	if err != nil {
		return err
	}
	gone, err := os.MkdirTemp(s.path("tmp"), "gc-")
	if err != nil {
		return fmt.Errorf("overlay: %w", err)
	}
	if err := os.Rename(s.path("layers", key), filepath.Join(gone, "layer")); err != nil {
		return fmt.Errorf("overlay: %w", err)
	}
	if l.Short != "" {
		os.Remove(s.path("l", filepath.Base(l.Short)))
	}
	os.Remove(s.path("locks", key+".lock"))
	return removeTree(gone)
}

// sweep clears tmp/, dangling short links, lock files of absent layers and
// container directories without a record. The caller holds the store lock
// exclusively, so nothing is being unpacked or created.
func (s *Store) sweep(cs []*Container) error {
	ents, err := os.ReadDir(s.path("tmp"))
	if err != nil {
		return fmt.Errorf("overlay: %w", err)
	}
	for _, e := range ents {
		if err := removeTree(s.path("tmp", e.Name())); err != nil {
			return err
		}
	}
	if ents, err = os.ReadDir(s.path("l")); err != nil {
		return fmt.Errorf("overlay: %w", err)
	}
	for _, e := range ents {
		p := s.path("l", e.Name())
		if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
			os.Remove(p)
		}
	}
	if ents, err = os.ReadDir(s.path("locks")); err != nil {
		return fmt.Errorf("overlay: %w", err)
	}
	for _, e := range ents {
		key := strings.TrimSuffix(e.Name(), ".lock")
		if _, err := os.Stat(s.path("layers", key)); errors.Is(err, fs.ErrNotExist) {
			os.Remove(s.path("locks", e.Name()))
		}
	}
	named := map[string]bool{}
	for _, c := range cs {
		named[c.Name] = true
	}
	if ents, err = os.ReadDir(s.path("containers")); err != nil {
		return fmt.Errorf("overlay: %w", err)
	}
	for _, e := range ents {
		if !named[e.Name()] {
			if err := removeTree(s.path("containers", e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

// LayerUsage is one layer in a store listing.
type LayerUsage struct {
	ChainID    digest.Digest `json:"chain_id"`
	DiffID     digest.Digest `json:"diff_id"`
	Size       int64         `json:"size"`
	Containers []string      `json:"containers"` // names of containers using it
	Images     []string      `json:"images"`     // DIR:TAG of pins naming it
}

// ContainerUsage is one container in a store listing.
type ContainerUsage struct {
	Name     string `json:"name"`
	Image    string `json:"image"` // DIR:TAG
	Target   string `json:"target"`
	Mode     string `json:"mode"`
	ReadOnly bool   `json:"readonly"`
	Mounted  bool   `json:"mounted"` // checked against the mount table
	Layers   int    `json:"layers"`
	// UpperDir is where the container's changes live (overlay mode; ""
	// for a copy, whose changes are in Target itself).
	UpperDir string `json:"upper_dir"`
	// Size is the disk usage of its upper dir (overlay) or of its copy.
	Size int64 `json:"size"`
}

// Usage lists a store's layers and containers with their sizes.
type Usage struct {
	Dir        string           `json:"dir"`
	Layers     []LayerUsage     `json:"layers"`
	Containers []ContainerUsage `json:"containers"`
	LayerBytes int64            `json:"layer_bytes"`
}

// Usage lists the layers and containers of the store with their sizes.
func (s *Store) Usage(ctx context.Context) (*Usage, error) {
	lk, err := acquireLock(ctx, s.path("store.lock"), false)
	if err != nil {
		return nil, err
	}
	defer lk.Unlock()
	u := &Usage{Dir: s.dir, Layers: []LayerUsage{}, Containers: []ContainerUsage{}}
	ls, err := s.Layers()
	if err != nil {
		return nil, err
	}
	byID := map[digest.Digest]*LayerUsage{}
	for _, l := range ls {
		u.Layers = append(u.Layers, LayerUsage{ChainID: l.ChainID, DiffID: l.DiffID, Size: l.Size, Containers: []string{}, Images: []string{}})
		u.LayerBytes += l.Size
	}
	for i := range u.Layers {
		byID[u.Layers[i].ChainID] = &u.Layers[i]
	}
	cs, err := s.Containers()
	if err != nil {
		return nil, err
	}
	for _, c := range cs {
		cu := ContainerUsage{Name: c.Name, Image: c.ImageDir + ":" + c.Tag, Target: c.Target, Mode: c.Mode, ReadOnly: c.ReadOnly, Layers: len(c.Layers)}
		cu.Mounted = c.Mounted && s.stillMounted(c)
		dir := c.UpperDir()
		if c.Mode == ModeCopy {
			dir = c.Target
		} else {
			cu.UpperDir = dir
		}
		if cu.Size, err = diskUsage(dir); err != nil {
			return nil, err
		}
		u.Containers = append(u.Containers, cu)
		for _, id := range c.Layers {
			if lu := byID[id]; lu != nil {
				lu.Containers = append(lu.Containers, c.Name)
			}
		}
	}
	ps, _, err := s.pins()
	if err != nil {
		return nil, err
	}
	for _, p := range ps {
		for _, id := range p.Layers {
			if lu := byID[id]; lu != nil {
				lu.Images = append(lu.Images, p.ImageDir+":"+p.Tag)
			}
		}
	}
	for i := range u.Layers {
		sort.Strings(u.Layers[i].Images)
	}
	return u, nil
}
