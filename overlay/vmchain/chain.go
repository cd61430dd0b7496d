// Package vmchain manages VM base-image chains: a directory of qcow2
// images that build on each other (base OS -> +database -> +web server,
// with a thin image per VM), described by a manifest and guarded by a
// lock file.
package vmchain

// This file holds the directory model (names, manifest, scan, lock,
// permissions); ops.go the mutations, built on the qcow2 package
// (Create, Convert with a backing file for imports, Commit and
// unsafe Rebase for squash).

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/imgtool/imgtool/internal/jsonfile"
	"github.com/imgtool/imgtool/internal/lockfile"
	"github.com/imgtool/imgtool/qcow2"
)

// Sentinel errors of VM chains; returned errors wrap them with detail.
var (
	// ErrNotChain: the directory has no chain manifest (chain.json), or
	// the manifest is unreadable.
	ErrNotChain = errors.New("vmchain: not a VM chain directory")
	// ErrChainExists: an image of that name exists in the chain, or init
	// was asked for a directory that already holds a chain.
	ErrChainExists = errors.New("vmchain: chain image exists")
	// ErrChainNotFound: no image of that name is in the chain.
	ErrChainNotFound = errors.New("vmchain: no such chain image")
	// ErrChainDependents: the image has dependents (images whose backing
	// file it is), so it cannot be removed, or squashed into a parent
	// that has other children.
	ErrChainDependents = errors.New("vmchain: chain image has dependents")
	// ErrChainReadOnly: a writable open of a level that has dependents.
	ErrChainReadOnly = errors.New("vmchain: chain level has dependents and is read-only")
	// ErrChainInvalidName: an image name that is empty, longer than 128
	// bytes, starts with a dot or a dash, or has characters other than
	// [A-Za-z0-9_.+-] (so no slashes, no "..", no protocol colons).
	ErrChainInvalidName = errors.New("vmchain: invalid chain image name")
	// ErrChainKind: the operation needs a level but was given a VM image
	// (or an image the manifest does not know).
	ErrChainKind = errors.New("vmchain: wrong kind of chain image")
	// ErrChainBroken: an image of the directory has a backing file that
	// is not an image of the same directory (an absolute path, a
	// subdirectory, a missing file), so the chain cannot be managed.
	ErrChainBroken = errors.New("vmchain: chain directory is inconsistent")
)

// ChainKind says what an image of a chain is for.
type ChainKind string

const (
	// ChainLevel is a shared layer of the chain (base, +db, +web): other
	// levels and VMs build on it.
	ChainLevel ChainKind = "level"
	// ChainVM is a thin per-instance overlay that a VM writes to. Nothing
	// builds on a VM image through the chain API.
	ChainVM ChainKind = "vm"
	// ChainUnmanaged is a NAME.qcow2 in the directory that the manifest
	// does not list (made by hand with qemu-img, or left by a crash
	// between creating an image and recording it). It is shown and
	// protected like the others but nothing can be built on it; rm
	// removes it.
	ChainUnmanaged ChainKind = "unmanaged"
)

// Files of a chain directory.
const (
	chainManifest = "chain.json"  // {"format":1,"images":{"NAME":"level"|"vm"},"squash":{...}}
	chainLockFile = ".chain.lock" // flock: exclusive for mutations, shared for reads
	chainExt      = ".qcow2"
	chainTmpPref  = ".tmp-" // images being built; stale ones are removed by the next mutation
	chainFormat   = 1
)

// chainManifestData is chain.json. Parents are not recorded: the backing
// file names in the images are the only truth about what depends on what,
// so the directory stays consistent with what QEMU sees.
type chainManifestData struct {
	Format int                  `json:"format"`
	Images map[string]ChainKind `json:"images"`
	// Squash is the journal of a squash whose commit is done and whose
	// rebasing of children may not be (see Squash).
	Squash *chainSquashJournal `json:"squash,omitempty"`
}

// chainSquashJournal names a squash in progress: Name goes into Into.
type chainSquashJournal struct {
	Name string `json:"name"`
	Into string `json:"into"`
}

// ChainDir is a directory of qcow2 images that build on each other. Every
// image is DIR/NAME.qcow2; a child names its parent by the relative
// backing file name "PARENT.qcow2" (format qcow2), so the directory can be
// moved or copied and keeps working, with imgtool and with QEMU.
//
// On-disk layout:
//
//	chain.json     the manifest: the kind (level or vm) of each image
//	NAME.qcow2     one image per level or VM; no write bits while it has
//	               dependents, writable by its owner otherwise (read
//	               bits as created: 0666 masked by the umask)
//	.chain.lock    flock, exclusive while a mutation runs
//	.tmp-*         images being built, renamed into place when complete
//
// Levels that have dependents are kept read-only: their files have no
// write bits, and Open refuses to open them for writing (the mode alone does
// not stop root). Writing a level that others build on would silently
// change every dependent.
//
// Concurrency: a ChainDir is a name for the directory and holds no
// state; its methods are safe for concurrent use, by goroutines and by
// processes, through the lock file. Mutations (Add, AddVM, Remove,
// Squash) exclude each other and readers (Images, Open's checks).
// Mutations refuse to change an image another process has open in a way
// that conflicts (QEMU-compatible image locks), so a running VM's disk
// is not pulled from under it.
type ChainDir struct {
	dir string
}

// OpenChainDir returns the chain in dir, which InitChain made.
func OpenChainDir(dir string) (*ChainDir, error) {
	c := &ChainDir{dir: dir}
	if _, err := c.readManifest(); err != nil {
		return nil, err
	}
	return c, nil
}

// Dir returns the chain's directory.
func (c *ChainDir) Dir() string { return c.dir }

// ImagePath returns the path of image name (DIR/NAME.qcow2), whether or
// not it exists.
func (c *ChainDir) ImagePath(name string) (string, error) {
	if err := validChainName(name); err != nil {
		return "", err
	}
	return filepath.Join(c.dir, name+chainExt), nil
}

// validChainName checks an image name: it becomes a file name and a
// backing file reference, so it must not escape the directory, hide, look
// like an option, or look like a QEMU protocol prefix.
func validChainName(name string) error {
	if name == "" || len(name) > 128 {
		return fmt.Errorf("%w: %q (1 to 128 bytes)", ErrChainInvalidName, name)
	}
	if name[0] == '.' || name[0] == '-' {
		return fmt.Errorf("%w: %q starts with %q", ErrChainInvalidName, name, name[0])
	}
	if strings.Contains(name, "..") {
		return fmt.Errorf("%w: %q contains \"..\"", ErrChainInvalidName, name)
	}
	for i := 0; i < len(name); i++ {
		ch := name[i]
		if !(ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '_' || ch == '.' || ch == '-' || ch == '+') {
			return fmt.Errorf("%w: %q has character %q (allowed: letters, digits, _ . + -)", ErrChainInvalidName, name, ch)
		}
	}
	return nil
}

func (c *ChainDir) manifestPath() string { return filepath.Join(c.dir, chainManifest) }

func (c *ChainDir) readManifest() (*chainManifestData, error) {
	var m chainManifestData
	if err := jsonfile.Read(c.manifestPath(), &m); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s has no %s (create one with chain init)", ErrNotChain, c.dir, chainManifest)
		}
		return nil, fmt.Errorf("%w: %s: %w", ErrNotChain, c.manifestPath(), err)
	}
	if m.Format != chainFormat {
		return nil, fmt.Errorf("%w: %s has format %d (this imgtool knows %d)", ErrNotChain, c.manifestPath(), m.Format, chainFormat)
	}
	if m.Images == nil {
		m.Images = map[string]ChainKind{}
	}
	if j := m.Squash; j != nil && (validChainName(j.Name) != nil || validChainName(j.Into) != nil) {
		return nil, fmt.Errorf("%w: %s: squash journal names %q and %q", ErrNotChain, c.manifestPath(), j.Name, j.Into)
	}
	for name, k := range m.Images {
		if err := validChainName(name); err != nil {
			return nil, fmt.Errorf("%w: %s lists %w", ErrNotChain, c.manifestPath(), err)
		}
		if k != ChainLevel && k != ChainVM {
			return nil, fmt.Errorf("%w: %s: image %q has kind %q (want level or vm)", ErrNotChain, c.manifestPath(), name, k)
		}
	}
	return &m, nil
}

func (c *ChainDir) writeManifest(m *chainManifestData) error {
	m.Format = chainFormat
	if err := jsonfile.Write(c.manifestPath(), m, 0o644); err != nil {
		return fmt.Errorf("vmchain: chain %s: writing manifest: %w", c.dir, err)
	}
	return nil
}

// lock takes the chain's lock file, exclusive for mutations.
func (c *ChainDir) lock(ctx context.Context, exclusive bool) (*lockfile.Lock, error) {
	l, err := lockfile.Acquire(ctx, filepath.Join(c.dir, chainLockFile), exclusive)
	if err != nil {
		return nil, fmt.Errorf("vmchain: %w", err)
	}
	return l, nil
}

// scanShared takes the chain's lock shared and scans the directory. The
// caller unlocks.
func (c *ChainDir) scanShared(ctx context.Context) (*lockfile.Lock, *chainGraph, error) {
	l, err := c.lock(ctx, false)
	if err != nil {
		return nil, nil, err
	}
	g, err := c.scan()
	if err != nil {
		l.Unlock()
		return nil, nil, err
	}
	return l, g, nil
}

// chainNode is one image found by scan.
type chainNode struct {
	name     string
	kind     ChainKind
	parent   string // "" for a root
	children []string
	depth    int
}

// chainGraph is the dependency graph of a chain directory.
type chainGraph struct {
	manifest *chainManifestData
	nodes    map[string]*chainNode
	order    []string // depth first from the roots, children by name
}

// scan reads the manifest and the header of every DIR/NAME.qcow2 and
// builds the graph. A manifest entry whose file is missing (a crash
// after removing it) is ignored; a file the manifest does not list is
// ChainUnmanaged. A backing file that is not "PARENT.qcow2" of an image
// in the directory is ErrChainBroken.
func (c *ChainDir) scan() (*chainGraph, error) {
	m, err := c.readManifest()
	if err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(c.dir)
	if err != nil {
		return nil, fmt.Errorf("vmchain: chain %s: %w", c.dir, err)
	}
	g := &chainGraph{manifest: m, nodes: map[string]*chainNode{}}
	for _, e := range ents {
		fn := e.Name()
		if !strings.HasSuffix(fn, chainExt) || !e.Type().IsRegular() {
			continue
		}
		name := strings.TrimSuffix(fn, chainExt)
		if validChainName(name) != nil {
			continue // dot files (temporaries) and names the chain never makes
		}
		kind, ok := m.Images[name]
		if !ok {
			kind = ChainUnmanaged
		}
		g.nodes[name] = &chainNode{name: name, kind: kind}
	}
	for name, n := range g.nodes {
		img, err := qcow2.Open(filepath.Join(c.dir, name+chainExt), qcow2.Options{Format: qcow2.FormatQcow2, NoBacking: true, ForceShare: true})
		if err != nil {
			return nil, fmt.Errorf("vmchain: chain %s: image %s: %w", c.dir, name, err)
		}
		bf := img.Header().BackingFile
		img.Close()
		if bf == "" {
			continue
		}
		p, ok := strings.CutSuffix(bf, chainExt)
		if !ok || validChainName(p) != nil || g.nodes[p] == nil {
			return nil, fmt.Errorf("%w: %s: %s%s has backing file %q, which is not an image of the chain directory", ErrChainBroken, c.dir, name, chainExt, bf)
		}
		n.parent = p
	}
	for name, n := range g.nodes {
		if n.parent != "" {
			g.nodes[n.parent].children = append(g.nodes[n.parent].children, name)
		}
	}
	var roots []string
	for name, n := range g.nodes {
		sort.Strings(n.children)
		if n.parent == "" {
			roots = append(roots, name)
		}
	}
	sort.Strings(roots)
	var walk func(name string, depth int)
	walk = func(name string, depth int) {
		n := g.nodes[name]
		n.depth = depth
		g.order = append(g.order, name)
		for _, ch := range n.children {
			walk(ch, depth+1)
		}
	}
	for _, r := range roots {
		walk(r, 0)
	}
	if len(g.order) != len(g.nodes) {
		// Images not reachable from a root form a backing loop.
		var loop []string
		for name := range g.nodes {
			if !slices.Contains(g.order, name) {
				loop = append(loop, name)
			}
		}
		sort.Strings(loop)
		return nil, fmt.Errorf("%w: %s: backing loop among %s", ErrChainBroken, c.dir, strings.Join(loop, ", "))
	}
	return g, nil
}

// fixModes makes every image with dependents read-only (its write bits
// cleared: 0444 under umask 022, 0400 under 077) and every other image
// writable by its owner. Read bits are the ones the image was created with
// (0666 masked by the umask, as qemu-img creates), so a private chain
// stays private.
func (c *ChainDir) fixModes(g *chainGraph) error {
	for name, n := range g.nodes {
		p := filepath.Join(c.dir, name+chainExt)
		if err := SetWritable(p, len(n.children) == 0); err != nil {
			return fmt.Errorf("vmchain: chain %s: %w", c.dir, err)
		}
	}
	return nil
}

// SetWritable clears every write bit of the file at path, or sets its
// owner's, leaving the rest of its mode as it is: the read bits stay as
// the file was created (0666 masked by the umask). Chain directories keep
// levels with dependents read-only this way, and vmimage pulls do too.
func SetWritable(path string, writable bool) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	mode := fi.Mode().Perm() &^ 0o222
	if writable {
		mode = fi.Mode().Perm() | 0o200
	}
	if mode == fi.Mode().Perm() {
		return nil
	}
	return os.Chmod(path, mode)
}

// removeStale deletes temporaries left by an interrupted mutation. The
// caller holds the exclusive lock, so no temporary is in use.
func (c *ChainDir) removeStale() {
	ents, err := os.ReadDir(c.dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, chainTmpPref) || strings.HasPrefix(n, "."+chainTmpPref) || strings.HasPrefix(n, "."+chainManifest+".tmp-") {
			os.Remove(filepath.Join(c.dir, n))
		}
	}
}

// checkReference confines backing files opened through the chain to
// images of the chain directory.
func (c *ChainDir) checkReference(r qcow2.Reference) error {
	p, ok := strings.CutSuffix(r.Name, chainExt)
	if !ok || validChainName(p) != nil {
		return fmt.Errorf("%w: backing file %q of %s is not an image of chain %s", ErrChainBroken, r.Name, r.Image, c.dir)
	}
	return nil
}

// Open opens image name with its backing chain. Backing files outside
// the chain directory are refused (opts.CheckReference, if set, is asked
// too). Opening for writing (opts.Writable) a level that has dependents
// fails with ErrChainReadOnly. The caller closes the image.
//
// The check runs under the chain's lock, but the returned image outlives
// it; a level opened for writing holds QEMU's writer lock, so Add and
// AddVM refuse to build on it while it stays open.
func (c *ChainDir) Open(ctx context.Context, name string, opts qcow2.Options) (*qcow2.Image, error) {
	path, err := c.ImagePath(name)
	if err != nil {
		return nil, err
	}
	l, g, err := c.scanShared(ctx)
	if err != nil {
		return nil, err
	}
	defer l.Unlock()
	n := g.nodes[name]
	if n == nil {
		return nil, fmt.Errorf("%w: %s in %s", ErrChainNotFound, name, c.dir)
	}
	if opts.Writable && len(n.children) > 0 {
		return nil, fmt.Errorf("%w: %s (used by %s)", ErrChainReadOnly, name, strings.Join(n.children, ", "))
	}
	user := opts.CheckReference
	opts.CheckReference = func(r qcow2.Reference) error {
		if err := c.checkReference(r); err != nil {
			return err
		}
		if user != nil {
			return user(r)
		}
		return nil
	}
	if opts.Format == "" {
		opts.Format = qcow2.FormatQcow2
	}
	return qcow2.Open(path, opts)
}

// ChainImage describes one image of a chain, as Images reports it.
type ChainImage struct {
	Name     string    // NAME
	File     string    // NAME.qcow2, relative to the chain directory
	Kind     ChainKind // level, vm or unmanaged
	Parent   string    // name of the backing image, "" for a base
	Children []string  // names of the images built directly on this one, sorted
	Depth    int       // 0 for a base, parent's depth + 1 otherwise
	// VirtualSize is the guest size in bytes.
	VirtualSize int64
	// PrivateBytes is the guest data stored in this image's own file
	// (data and compressed clusters, in guest bytes).
	PrivateBytes int64
	// SharedBytes is the guest data this image shows from its backing
	// levels (ranges it does not allocate that a level below does).
	SharedBytes int64
	// FileBytes is the space the file takes on disk (allocated blocks).
	FileBytes int64
	// ReadOnly: the image has dependents, so it is kept read-only.
	ReadOnly bool
}

// Images lists the images of the chain depth first from the bases,
// children in name order, with their sizes. It opens each image with its
// backing chain without taking image locks, so it works while VMs run.
func (c *ChainDir) Images(ctx context.Context) ([]ChainImage, error) {
	l, g, err := c.scanShared(ctx)
	if err != nil {
		return nil, err
	}
	defer l.Unlock()
	out := make([]ChainImage, 0, len(g.order))
	for _, name := range g.order {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		n := g.nodes[name]
		ci := ChainImage{
			Name: name, File: name + chainExt, Kind: n.kind, Parent: n.parent,
			Children: append([]string{}, n.children...), Depth: n.depth, ReadOnly: len(n.children) > 0,
		}
		if err := c.measure(&ci); err != nil {
			return nil, err
		}
		out = append(out, ci)
	}
	return out, nil
}

// measure fills the size fields of ci.
func (c *ChainDir) measure(ci *ChainImage) error {
	path := filepath.Join(c.dir, ci.File)
	img, err := qcow2.Open(path, qcow2.Options{Format: qcow2.FormatQcow2, ForceShare: true, CheckReference: c.checkReference})
	if err != nil {
		return fmt.Errorf("vmchain: chain %s: image %s: %w", c.dir, ci.Name, err)
	}
	defer img.Close()
	ci.VirtualSize = img.Size()
	err = img.WalkExtents(0, img.Size(), func(e qcow2.Extent) error {
		switch {
		case e.Depth == 0 && (e.Kind == qcow2.KindData || e.Kind == qcow2.KindCompressed):
			ci.PrivateBytes += e.Length
		case e.Depth > 0 && e.Present():
			ci.SharedBytes += e.Length
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("vmchain: chain %s: image %s: %w", c.dir, ci.Name, err)
	}
	ci.FileBytes, err = fileAllocated(path)
	if err != nil {
		return fmt.Errorf("vmchain: chain %s: %w", c.dir, err)
	}
	return nil
}
