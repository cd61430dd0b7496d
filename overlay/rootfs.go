package overlay

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/imgtool/imgtool/internal/jsonfile"
	"github.com/imgtool/imgtool/internal/syncfs"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Container modes.
const (
	// ModeOverlay: an overlayfs mount of the store's layers with a private
	// upper dir in the store.
	ModeOverlay = "overlay"
	// ModeCopy: a flattened copy of the layers in the target directory
	// (see copy.go), for hosts that cannot mount overlayfs.
	ModeCopy = "copy"
)

// Container is the record of one container (containers/NAME/container.json).
type Container struct {
	Name string `json:"name"`
	// ImageDir and Tag name the image the container was made from;
	// ImageDir is absolute.
	ImageDir string `json:"image_dir"`
	Tag      string `json:"tag"`
	// Manifest is the descriptor of the image's manifest.
	Manifest ocispec.Descriptor `json:"manifest"`
	// Platform is the platform asked for when the tag is an index (nil:
	// the default choice), so that the tag resolves the same way again.
	Platform *ocispec.Platform `json:"platform,omitempty"`
	// Layers are the ChainIDs of the image's layers, bottom first;
	// DiffIDs the matching diff IDs.
	Layers  []digest.Digest `json:"layers"`
	DiffIDs []digest.Digest `json:"diff_ids"`
	// Target is the absolute directory it is (or was last) mounted on.
	Target   string `json:"target"`
	Mode     string `json:"mode"`
	ReadOnly bool   `json:"readonly"`
	Mounted  bool   `json:"mounted"`
	// CopyDone: the copy of a copy-mode container is complete.
	CopyDone bool `json:"copy_done,omitempty"`
	// MadeTarget: Mount created the target directory (it did not exist),
	// so Unmount removes it again, as mount --mkdir and umount would
	// leave things.
	MadeTarget bool      `json:"made_target,omitempty"`
	Created    time.Time `json:"created"`
	Updated    time.Time `json:"updated"`
	// Dir is the container's directory in the store (not stored).
	Dir string `json:"-"`
}

// UpperDir returns the container's overlay upper directory.
func (c *Container) UpperDir() string { return filepath.Join(c.Dir, "upper") }

// WorkDir returns the container's overlay work directory.
func (c *Container) WorkDir() string { return filepath.Join(c.Dir, "work") }

// Progress reports one step of unpacking an image's layers.
type Progress struct {
	Index   int           // layer index, 0 is the bottom
	Total   int           // number of layers of the image
	ChainID digest.Digest // the layer
	// Present is true when the layer was already in the store, false when
	// it has just been unpacked.
	Present bool
}

// MountOptions configure Mount. The zero value mounts read-write with
// overlayfs under a generated name.
type MountOptions struct {
	// Name of the container (default: "c" and 12 random hex digits).
	// Mounting a name that exists and is not mounted mounts that
	// container again, with its upper dir, if it belongs to the same image.
	Name string
	// ReadOnly mounts without an upper dir (an existing container's upper
	// dir becomes the top lower layer, read-only). In copy mode it makes
	// the copy of hardlinks into the store (see copy.go): never write it.
	ReadOnly bool
	// Copy makes a flattened copy instead of an overlay mount (see copy.go).
	Copy bool
	// Method picks the mount system call interface (default MountAuto).
	Method MountMethod
}

// UnpackStats counts what making an image's layers available did.
type UnpackStats struct {
	Layers   int   `json:"layers"`   // layers of the image
	Unpacked int   `json:"unpacked"` // layers unpacked now
	Present  int   `json:"present"`  // layers found in the store
	Bytes    int64 `json:"bytes"`    // disk usage of the layers unpacked now
}

// layerFill fills dir (an empty directory) with one layer in overlay
// format and returns the layer's uncompressed tar size.
type layerFill func(ctx context.Context, dir string) (int64, error)

// layerJob is one layer an image needs.
type layerJob struct {
	rec  Layer // ChainID, DiffID, Parent, Blob, MediaType
	fill layerFill
}

func defaultConcurrency() int { return runtime.GOMAXPROCS(0) }

// ensureLayers makes every job's layer present, unpacking missing ones
// concurrently (s.concurrency at a time): in overlay format a layer does
// not depend on the layers below it. The caller holds the store lock
// (shared).
func (s *Store) ensureLayers(ctx context.Context, jobs []layerJob, progress func(Progress)) (UnpackStats, error) {
	st := UnpackStats{Layers: len(jobs)}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
	)
	sem := make(chan struct{}, s.concurrency)
	for i, j := range jobs {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			created, size, err := s.installLayer(ctx, j.rec, j.fill)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = fmt.Errorf("layer %d (%s): %w", i, j.rec.ChainID, err)
				}
				cancel()
				return
			}
			if created {
				st.Unpacked++
				st.Bytes += size
			} else {
				st.Present++
			}
			if progress != nil {
				progress(Progress{Index: i, Total: len(jobs), ChainID: j.rec.ChainID, Present: !created})
			}
		}()
	}
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		firstErr = ctx.Err()
	}
	return st, firstErr
}

// installLayer unpacks one layer into the store unless it is there:
// under the layer's lock, into a fresh directory in tmp/ that is synced
// and renamed to layers/HEX only when complete. It returns whether it
// unpacked the layer and the layer's disk usage.
func (s *Store) installLayer(ctx context.Context, rec Layer, fill layerFill) (bool, int64, error) {
	key, err := layerKey(rec.ChainID)
	if err != nil {
		return false, 0, err
	}
	lk, err := acquireLock(ctx, s.path("locks", key+".lock"), true)
	if err != nil {
		return false, 0, err
	}
	defer lk.Unlock()
	final := s.path("layers", key)
	if _, err := os.Stat(filepath.Join(final, "layer.json")); err == nil {
		return false, 0, nil
	}
	tmp, err := os.MkdirTemp(s.path("tmp"), "layer-"+key[:12]+"-")
	if err != nil {
		return false, 0, fmt.Errorf("overlay: %w", err)
	}
	done := false
	defer func() {
		if !done {
			os.RemoveAll(tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o700); err != nil {
		return false, 0, fmt.Errorf("overlay: %w", err)
	}
	diff := filepath.Join(tmp, "diff")
	if err := os.Mkdir(diff, 0o755); err != nil {
		return false, 0, fmt.Errorf("overlay: %w", err)
	}
	usize, err := fill(ctx, diff)
	if err != nil {
		return false, 0, err
	}
	size, err := diskUsage(diff)
	if err != nil {
		return false, 0, fmt.Errorf("overlay: %w", err)
	}
	short, err := s.linkShort(key)
	if err != nil {
		return false, 0, err
	}
	rec.Short = short
	rec.Size = size
	rec.UncompressedSize = usize
	rec.Unpacked = time.Now().UTC()
	if err := jsonfile.Write(filepath.Join(tmp, "layer.json"), &rec, 0o600); err != nil {
		return false, 0, err
	}
	if err := syncfs.Sync(tmp); err != nil {
		return false, 0, fmt.Errorf("overlay: %w", err)
	}
	// A leftover layers/HEX without layer.json cannot come from this code
	// (the rename is atomic), but clear it rather than fail forever.
	if _, err := os.Lstat(final); err == nil {
		if err := os.RemoveAll(final); err != nil {
			return false, 0, fmt.Errorf("overlay: %w", err)
		}
	}
	if err := os.Rename(tmp, final); err != nil {
		return false, 0, fmt.Errorf("overlay: %w", err)
	}
	done = true
	return true, size, nil
}

// linkShort creates l/SHORT -> ../layers/KEY/diff, SHORT being the
// shortest prefix of KEY (12 hex digits at least) not taken by another
// layer, and returns SHORT. The link may dangle until the layer is renamed
// into place.
func (s *Store) linkShort(key string) (string, error) {
	want := filepath.Join("..", "layers", key, "diff")
	for n := 12; n <= len(key); n += 4 {
		short := key[:n]
		p := s.path("l", short)
		err := os.Symlink(want, p)
		if err == nil {
			return short, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return "", fmt.Errorf("overlay: %w", err)
		}
		if got, err := os.Readlink(p); err == nil && got == want {
			return short, nil
		}
	}
	return "", fmt.Errorf("overlay: no free short name for layer %s", key)
}

// validName checks a container name.
func validName(name string) error {
	if name == "" || len(name) > 128 || name == "." || name == ".." {
		return fmt.Errorf("%w: %q", ErrInvalidName, name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return fmt.Errorf("%w: %q has character %q", ErrInvalidName, name, c)
		}
	}
	return nil
}

func newName() (string, error) {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return "c" + hex.EncodeToString(b[:]), nil
}

// readContainer reads the record of container name.
func (s *Store) readContainer(name string) (*Container, error) {
	if err := validName(name); err != nil {
		return nil, err
	}
	dir := s.path("containers", name)
	var c Container
	if err := jsonfile.Read(filepath.Join(dir, "container.json"), &c); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %q", ErrContainerNotFound, name)
		}
		return nil, fmt.Errorf("overlay: container %q: %w", name, err)
	}
	c.Dir = dir
	return &c, nil
}

func (s *Store) writeContainer(c *Container) error {
	c.Updated = time.Now().UTC()
	return jsonfile.Write(filepath.Join(c.Dir, "container.json"), c, 0o600)
}

// Container returns the record of the named container.
func (s *Store) Container(name string) (*Container, error) { return s.readContainer(name) }

// Containers lists the containers of the store, by name.
func (s *Store) Containers() ([]*Container, error) {
	ents, err := os.ReadDir(s.path("containers"))
	if err != nil {
		return nil, fmt.Errorf("overlay: %w", err)
	}
	var out []*Container
	for _, e := range ents {
		if !e.IsDir() || validName(e.Name()) != nil {
			continue
		}
		c, err := s.readContainer(e.Name())
		if errors.Is(err, ErrContainerNotFound) {
			continue // being created or removed
		}
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// cleanTarget makes target absolute with symlinks resolved, as the kernel
// records mount points.
func cleanTarget(target string) (string, error) {
	abs, err := filepath.Abs(target)
	if err != nil {
		return "", err
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		abs = r
	}
	return abs, nil
}

// lockContainer finds the container mounted on target and locks it: the
// store lock shared, the container's lock exclusive. It returns the
// container's record as reread under the lock, and unlock, which releases
// both; on error nothing stays locked.
func (s *Store) lockContainer(ctx context.Context, target string) (*Container, func(), error) {
	slk, err := acquireLock(ctx, s.path("store.lock"), false)
	if err != nil {
		return nil, nil, err
	}
	c, err := s.ContainerByTarget(target)
	if err != nil {
		slk.Unlock()
		return nil, nil, err
	}
	clk, err := acquireLock(ctx, filepath.Join(c.Dir, "lock"), true)
	if err != nil {
		slk.Unlock()
		return nil, nil, err
	}
	unlock := func() {
		clk.Unlock()
		slk.Unlock()
	}
	if c, err = s.readContainer(c.Name); err != nil {
		unlock()
		return nil, nil, err
	}
	return c, unlock, nil
}

// ContainerByTarget finds the container mounted on target, or if none is,
// the one most recently mounted there.
func (s *Store) ContainerByTarget(target string) (*Container, error) {
	abs, err := cleanTarget(target)
	if err != nil {
		return nil, err
	}
	cs, err := s.Containers()
	if err != nil {
		return nil, err
	}
	var best *Container
	for _, c := range cs {
		if c.Target != abs {
			continue
		}
		switch {
		case best == nil,
			c.Mounted && !best.Mounted,
			c.Mounted == best.Mounted && c.Updated.After(best.Updated):
			best = c
		}
	}
	if best == nil {
		return nil, fmt.Errorf("%w: nothing of store %s was mounted on %s", ErrContainerNotFound, s.dir, abs)
	}
	return best, nil
}

// imageSpec is what mounting needs to know of an image.
type imageSpec struct {
	Dir, Tag string
	Manifest ocispec.Descriptor
	Platform *ocispec.Platform // as asked for, nil for the default
	Jobs     []layerJob        // bottom first
}

// chainOf returns the ChainIDs and DiffIDs of an image's jobs.
func (im *imageSpec) chainOf() (chain, diffIDs []digest.Digest) {
	for _, j := range im.Jobs {
		chain = append(chain, j.rec.ChainID)
		diffIDs = append(diffIDs, j.rec.DiffID)
	}
	return chain, diffIDs
}

// mountImage is Mount for an image described by im.
func (s *Store) mountImage(ctx context.Context, im *imageSpec, target string, opts MountOptions, progress func(Progress)) (*Container, UnpackStats, error) {
	var st UnpackStats
	if opts.Copy {
		// Created now, so that the recorded path is the one a later
		// lookup resolves (symlinks in its parents included).
		if err := os.Mkdir(target, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, st, fmt.Errorf("overlay: copy target: %w", err)
		}
	}
	abs, err := cleanTarget(target)
	if err != nil {
		return nil, st, err
	}
	madeTarget := false
	if !opts.Copy {
		fi, err := os.Stat(abs)
		if errors.Is(err, fs.ErrNotExist) {
			// Like mount --mkdir: create the mount point (and its
			// parents), and remove it again if the mount fails, or at
			// Unmount.
			if err := os.MkdirAll(abs, 0o755); err != nil {
				return nil, st, fmt.Errorf("overlay: mount target: %w", err)
			}
			madeTarget = true
			defer func() {
				if madeTarget {
					os.Remove(abs)
				}
			}()
			if abs, err = cleanTarget(abs); err != nil {
				return nil, st, err
			}
		} else if err != nil {
			return nil, st, fmt.Errorf("overlay: mount target: %w", err)
		} else if !fi.IsDir() {
			return nil, st, fmt.Errorf("overlay: mount target %s is not a directory", abs)
		}
	}
	name := opts.Name
	if name == "" {
		if name, err = newName(); err != nil {
			return nil, st, err
		}
	}
	if err := validName(name); err != nil {
		return nil, st, err
	}
	slk, err := acquireLock(ctx, s.path("store.lock"), false)
	if err != nil {
		return nil, st, err
	}
	defer slk.Unlock()

	cdir := s.path("containers", name)
	if err := os.Mkdir(cdir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, st, fmt.Errorf("overlay: %w", err)
	}
	clk, err := acquireLock(ctx, filepath.Join(cdir, "lock"), true)
	if err != nil {
		return nil, st, err
	}
	defer clk.Unlock()

	chain, diffIDs := im.chainOf()
	c, err := s.readContainer(name)
	switch {
	case errors.Is(err, ErrContainerNotFound):
		c = &Container{Name: name, Dir: cdir, Created: time.Now().UTC()}
		// A container that never got mounted leaves nothing behind.
		defer func() {
			if !c.Mounted {
				removeTree(cdir)
			}
		}()
	case err != nil:
		return nil, st, err
	default:
		if err := s.checkReuse(c, chain, opts); err != nil {
			return nil, st, err
		}
		if c.Mode == ModeCopy && c.Target != abs {
			return nil, st, fmt.Errorf("%w: the copy of %q is in %s", ErrContainerExists, c.Name, c.Target)
		}
	}
	others, err := s.Containers()
	if err != nil {
		return nil, st, err
	}
	for _, o := range others {
		if o.Name != name && o.Mounted && o.Target == abs && s.stillMounted(o) {
			return nil, st, fmt.Errorf("%w: container %q is mounted on %s", ErrContainerExists, o.Name, abs)
		}
	}
	c.ImageDir, c.Tag, c.Manifest, c.Platform = im.Dir, im.Tag, im.Manifest, im.Platform
	c.Layers, c.DiffIDs = chain, diffIDs
	c.Target, c.ReadOnly, c.Mounted = abs, opts.ReadOnly, false
	c.MadeTarget = madeTarget
	c.Mode = ModeOverlay
	if opts.Copy {
		c.Mode = ModeCopy
	}
	// Record the container before touching anything, so that a crash
	// leaves a record that umount --rm and gc can find.
	if err := s.writeContainer(c); err != nil {
		return nil, st, err
	}
	st, err = s.ensureLayers(ctx, im.Jobs, progress)
	if err != nil {
		return nil, st, err
	}
	if err := s.pinImage(im, chain); err != nil {
		return nil, st, err
	}
	if opts.Copy {
		if !c.CopyDone {
			err = s.copyRootfs(ctx, c)
			c.CopyDone = err == nil
		}
	} else {
		err = s.mountContainer(c, opts.Method)
	}
	if err != nil {
		return nil, st, err
	}
	c.Mounted = true
	if err := s.writeContainer(c); err != nil {
		if c.Mode == ModeOverlay {
			unmount(abs)
		}
		return nil, st, err
	}
	madeTarget = false // mounted: Unmount removes it
	return c, st, nil
}

// checkReuse decides whether an existing container record may be mounted
// again with the given chain.
func (s *Store) checkReuse(c *Container, chain []digest.Digest, opts MountOptions) error {
	if c.Mounted && s.stillMounted(c) {
		return fmt.Errorf("%w: %q is mounted on %s", ErrContainerExists, c.Name, c.Target)
	}
	same := len(c.Layers) == len(chain)
	for i := 0; same && i < len(chain); i++ {
		same = c.Layers[i] == chain[i]
	}
	if !same {
		return fmt.Errorf("%w: %q belongs to image %s:%s (umount --rm it first)", ErrContainerExists, c.Name, c.ImageDir, c.Tag)
	}
	want := ModeOverlay
	if opts.Copy {
		want = ModeCopy
	}
	if c.Mode != want {
		return fmt.Errorf("%w: %q is a %s container", ErrContainerExists, c.Name, c.Mode)
	}
	// A read-only copy is made of hardlinks into the store: it must never
	// become writable (and a writable one holds changes a read-only
	// remount would not show as such).
	if c.Mode == ModeCopy && c.ReadOnly != opts.ReadOnly {
		return fmt.Errorf("%w: %q is a copy made with readonly=%v", ErrContainerExists, c.Name, c.ReadOnly)
	}
	return nil
}

// stillMounted reports whether a container recorded as mounted is
// mounted: a copy always is; an overlay when its target holds an overlay
// mount (a reboot unmounts everything but leaves the records).
func (s *Store) stillMounted(c *Container) bool {
	if c.Mode == ModeCopy {
		return c.Mounted
	}
	t, err := mountFSType(c.Target)
	return err == nil && t == "overlay"
}

// lowerDirs returns the mount's lower dirs, top first, absolute and
// relative to the store.
func (s *Store) lowerDirs(chain []digest.Digest) (abs, rel []string, err error) {
	for i := len(chain) - 1; i >= 0; i-- {
		l, err := s.Layer(chain[i])
		if err != nil {
			return nil, nil, err
		}
		abs = append(abs, l.Dir)
		rel = append(rel, filepath.Join("l", l.Short))
	}
	return abs, rel, nil
}

// mountContainer mounts container c (mode overlay) on c.Target.
func (s *Store) mountContainer(c *Container, method MountMethod) error {
	lower, lowerRel, err := s.lowerDirs(c.Layers)
	if err != nil {
		return err
	}
	sp := &mountSpec{Target: c.Target, Dir: s.dir, ReadOnly: c.ReadOnly, UserXattr: s.userXattr}
	rel := func(p string) string {
		r, err := filepath.Rel(s.dir, p)
		if err != nil {
			return p
		}
		return r
	}
	if c.ReadOnly {
		// A kept upper dir shows, read-only, as the top lower layer.
		if ents, err := os.ReadDir(c.UpperDir()); err == nil && len(ents) > 0 {
			lower = append([]string{c.UpperDir()}, lower...)
			lowerRel = append([]string{rel(c.UpperDir())}, lowerRel...)
		}
		lower, lowerRel = s.padLower(lower, lowerRel, 2)
	} else {
		lower, lowerRel = s.padLower(lower, lowerRel, 1)
		for _, d := range []string{c.UpperDir(), c.WorkDir()} {
			if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("overlay: %w", err)
			}
		}
		sp.Upper, sp.Work = c.UpperDir(), c.WorkDir()
		sp.UpperRel, sp.WorkRel = rel(sp.Upper), rel(sp.Work)
	}
	sp.Lower, sp.LowerRel = lower, lowerRel
	return mountOverlay(sp, method)
}

// padLower appends empty directories to a stack of lower dirs until it
// has n: overlayfs needs a lower dir, and two when there is no upper dir
// (an image of no layers or one layer). The same directory cannot appear
// twice (the layers would overlap), hence empty/ and empty2/.
func (s *Store) padLower(lower, rel []string, n int) ([]string, []string) {
	for _, name := range []string{"empty", "empty2"} {
		if len(lower) >= n {
			break
		}
		os.Mkdir(s.path(name), 0o700) // empty2 is made on first use
		lower, rel = append(lower, s.path(name)), append(rel, name)
	}
	return lower, rel
}

// UnmountOptions configure Unmount. The zero value unmounts and keeps the
// container's upper dir, so the container can be mounted or committed
// again.
type UnmountOptions struct {
	// Remove deletes the container: its upper and work dirs (overlay) or
	// the copied tree in the target (copy mode), and its record.
	Remove bool
}

// Unmount unmounts the container mounted on target (found by its record)
// and returns its record.
func (s *Store) Unmount(ctx context.Context, target string, opts UnmountOptions) (*Container, error) {
	c, unlock, err := s.lockContainer(ctx, target)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if c.Mode == ModeOverlay {
		m, err := mountAt(c.Target)
		if err != nil {
			return nil, err
		}
		if m.fstype == "overlay" {
			// Do not unmount an overlay that is not this container's.
			match, ok := mountedUpper(m.superOpts, c.UpperDir())
			hasUpper := strings.Contains(m.superOpts, "upperdir=")
			if ok && (c.ReadOnly && hasUpper || !c.ReadOnly && !match) {
				return nil, fmt.Errorf("%w: the overlay mounted on %s is not container %q's", ErrContainerNotFound, c.Target, c.Name)
			}
			if err := unmount(c.Target); err != nil {
				return nil, err
			}
		}
		if c.MadeTarget {
			// Mount made the mount point: remove it, if still empty.
			if err := os.Remove(c.Target); err == nil || errors.Is(err, fs.ErrNotExist) {
				c.MadeTarget = false
			}
		}
	}
	if opts.Remove {
		if c.Mode == ModeCopy {
			if err := removeTree(c.Target); err != nil {
				return nil, err
			}
		}
		if err := removeTree(c.Dir); err != nil {
			return nil, err
		}
		c.Mounted = false
		return c, nil
	}
	c.Mounted = false
	if err := s.writeContainer(c); err != nil {
		return nil, err
	}
	return c, nil
}

// removeTree removes a directory tree, first making directories writable
// (overlayfs leaves a mode-000 work/work dir; a copy may hold read-only
// dirs, which stop even root only when on a read-only filesystem).
func removeTree(dir string) error {
	err := os.RemoveAll(dir)
	if err == nil {
		return nil
	}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(p, 0o700)
		}
		return nil
	})
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("overlay: %w", err)
	}
	return nil
}
