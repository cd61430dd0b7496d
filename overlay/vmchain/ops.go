package vmchain

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/imgtool/imgtool/internal/imagelock"
	"github.com/imgtool/imgtool/internal/lockfile"
	"github.com/imgtool/imgtool/internal/syncfs"
	"github.com/imgtool/imgtool/qcow2"
)

// DefaultChainBase is the name InitChain gives the base level when
// InitChainOptions.Name is empty.
const DefaultChainBase = "base"

// InitChainOptions configures InitChain. The zero value imports a probed
// (qcow2 or raw) base as level "base" in 64 KiB clusters, without
// progress reports.
type InitChainOptions struct {
	// Name of the base level; "" means DefaultChainBase ("base").
	Name string
	// Format of the base image file: "" probes, or qcow2 or raw.
	Format qcow2.Format
	// ClusterSize of the chain's images; 0 means 64 KiB. Every image the
	// chain makes later (levels, VMs) uses the base's cluster size.
	ClusterSize int64
	// Progress, if set, gets the guest bytes copied so far and the total.
	// Calls are serialised but may come from worker goroutines.
	Progress func(done, total int64)
}

// InitChain makes dir (created if missing) a chain directory whose base
// level is a copy of the image at base: a qcow2 image (with its backing
// chain, flattened) or a raw one. Only the data the base stores is
// copied; zeros stay unallocated. The copy is built under a temporary
// name in dir and renamed into place. It fails with ErrChainExists when
// dir already holds a chain.
func InitChain(ctx context.Context, dir, base string, opts InitChainOptions) (*ChainDir, error) {
	if opts.Name == "" {
		opts.Name = DefaultChainBase
	}
	if err := validChainName(opts.Name); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("vmchain: chain init: %w", err)
	}
	c := &ChainDir{dir: dir}
	l, err := c.lock(ctx, true)
	if err != nil {
		return nil, err
	}
	defer l.Unlock()
	if _, err := os.Lstat(c.manifestPath()); err == nil {
		return nil, fmt.Errorf("%w: %s already holds a chain", ErrChainExists, dir)
	}
	c.removeStale()
	src, err := qcow2.Open(base, qcow2.Options{Format: opts.Format})
	if err != nil {
		return nil, fmt.Errorf("vmchain: chain init: %w", err)
	}
	defer src.Close()
	err = c.build(opts.Name, func(tmp string) error {
		return qcow2.Convert(ctx, src, tmp, qcow2.ConvertOptions{
			Create:   qcow2.CreateOptions{ClusterSize: opts.ClusterSize},
			Progress: opts.Progress,
		})
	})
	if err != nil {
		return nil, err
	}
	m := &chainManifestData{Images: map[string]ChainKind{opts.Name: ChainLevel}}
	if err := c.writeManifest(m); err != nil {
		return nil, err
	}
	return c, nil
}

// build creates image name: mk writes a complete image at the
// temporary path it is given (in the chain directory, so that relative
// backing names resolve), which is then linked to NAME.qcow2 (never
// replacing an existing file). The caller holds the exclusive lock.
func (c *ChainDir) build(name string, mk func(tmp string) error) error {
	final := filepath.Join(c.dir, name+chainExt)
	if _, err := os.Lstat(final); err == nil {
		return fmt.Errorf("%w: %s", ErrChainExists, final)
	}
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return fmt.Errorf("vmchain: %w", err)
	}
	tmp := filepath.Join(c.dir, chainTmpPref+name+"-"+hex.EncodeToString(rnd[:])+chainExt)
	defer os.Remove(tmp)
	if err := mk(tmp); err != nil {
		return fmt.Errorf("vmchain: creating %s: %w", final, err)
	}
	if err := SetWritable(tmp, true); err != nil {
		return fmt.Errorf("vmchain: creating %s: %w", final, err)
	}
	if err := os.Link(tmp, final); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%w: %s", ErrChainExists, final)
		}
		return fmt.Errorf("vmchain: creating %s: %w", final, err)
	}
	if err := syncfs.Sync(c.dir); err != nil {
		return fmt.Errorf("vmchain: %w", err)
	}
	return nil
}

// AddLevelOptions configures AddLevel. The zero value adds an empty
// level (an overlay that shows its parent) without progress reports.
type AddLevelOptions struct {
	// Import is a standalone disk image (qcow2, with its backing chain,
	// or raw): the new level stores only the clusters where its content
	// differs from the parent, so the level shows exactly that disk.
	// "" adds an empty level.
	Import string
	// ImportFormat is the format of Import: "" probes, or qcow2 or raw.
	ImportFormat qcow2.Format
	// Progress, if set, gets the guest bytes compared so far and the
	// total (only with Import). Calls are serialised but may come from
	// worker goroutines.
	Progress func(done, total int64)
}

// AddLevel adds level name on the level parent: NAME.qcow2 with backing
// file PARENT.qcow2. With opts.Import the level's size is the imported
// disk's; otherwise the parent's. The parent becomes read-only.
func (c *ChainDir) AddLevel(ctx context.Context, name, parent string, opts AddLevelOptions) error {
	return c.add(ctx, name, parent, ChainLevel, opts)
}

// AddVM adds the thin per-instance image name on the level: an empty
// overlay a VM writes to, which nothing else builds on. The level
// becomes read-only.
func (c *ChainDir) AddVM(ctx context.Context, name, level string) error {
	return c.add(ctx, name, level, ChainVM, AddLevelOptions{})
}

func (c *ChainDir) add(ctx context.Context, name, parent string, kind ChainKind, opts AddLevelOptions) error {
	if err := validChainName(name); err != nil {
		return err
	}
	if err := validChainName(parent); err != nil {
		return err
	}
	l, g, err := c.prepare(ctx)
	if err != nil {
		return err
	}
	defer l.Unlock()
	if g.nodes[name] != nil {
		return fmt.Errorf("%w: %s in %s", ErrChainExists, name, c.dir)
	}
	p := g.nodes[parent]
	if p == nil {
		return fmt.Errorf("%w: %s in %s", ErrChainNotFound, parent, c.dir)
	}
	if p.kind != ChainLevel {
		return fmt.Errorf("%w: %s is a %s image, not a level; build on levels only", ErrChainKind, parent, p.kind)
	}
	// Hold a reader lock on the parent while building on it: it fails if
	// someone has the parent open for writing (a VM booted on the level,
	// or Open(..., Writable)), and keeps them out until we are done.
	ppath := filepath.Join(c.dir, parent+chainExt)
	pl, err := lockImage(ppath, imagelock.Reader, false)
	if err != nil {
		return fmt.Errorf("vmchain: cannot build on %s: %w", parent, err)
	}
	defer pl.Close()
	pinfo, err := qcow2.Open(ppath, qcow2.Options{Format: qcow2.FormatQcow2, NoBacking: true, ForceShare: true})
	if err != nil {
		return err
	}
	create := qcow2.CreateOptions{
		ClusterSize:   pinfo.ClusterSize(),
		BackingFile:   parent + chainExt,
		BackingFormat: qcow2.FormatQcow2,
	}
	pinfo.Close()
	mk := func(tmp string) error { return qcow2.Create(tmp, create) }
	if opts.Import != "" {
		src, err := qcow2.Open(opts.Import, qcow2.Options{Format: opts.ImportFormat})
		if err != nil {
			return fmt.Errorf("vmchain: chain add %s --import: %w", name, err)
		}
		defer src.Close()
		// qemu-img convert -B: only clusters whose content differs from
		// what the parent shows are written.
		mk = func(tmp string) error {
			return qcow2.Convert(ctx, src, tmp, qcow2.ConvertOptions{Create: create, Progress: opts.Progress})
		}
	}
	if err := c.build(name, mk); err != nil {
		return err
	}
	g.manifest.Images[name] = kind
	if err := c.writeManifest(g.manifest); err != nil {
		return err
	}
	return c.refreshModes()
}

// refreshModes rescans the directory and fixes the image modes.
func (c *ChainDir) refreshModes() error {
	g, err := c.scan()
	if err != nil {
		return err
	}
	return c.fixModes(g)
}

// RemoveOptions configures Remove. The zero value refuses to remove an
// image that another process has open.
type RemoveOptions struct {
	// Force removes the image even when another process (a running VM)
	// has it open. It never removes an image that others depend on:
	// nothing in the chain is ever orphaned.
	Force bool
}

// Remove deletes image name (a level or a VM) from the chain. It fails
// with ErrChainDependents when other images build on it (remove those
// first, or squash), and, unless opts.Force, with an error matching
// imagelock.ErrLocked when a process has the image open. Removing the
// last child of a level makes the level writable again.
func (c *ChainDir) Remove(ctx context.Context, name string, opts RemoveOptions) error {
	path, l, g, n, err := c.prepareImage(ctx, name)
	if err != nil {
		return err
	}
	defer l.Unlock()
	if len(n.children) > 0 {
		return fmt.Errorf("%w: %s is the backing file of %s", ErrChainDependents, name, strings.Join(n.children, ", "))
	}
	if !opts.Force {
		f, err := lockImage(path, imagelock.Writer, false)
		if err != nil {
			return fmt.Errorf("vmchain: not removing %s (use force to remove it anyway): %w", name, err)
		}
		defer f.Close()
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("vmchain: %w", err)
	}
	if _, ok := g.manifest.Images[name]; ok {
		delete(g.manifest.Images, name)
		if err := c.writeManifest(g.manifest); err != nil {
			return err
		}
	}
	return c.refreshModes()
}

// SquashOptions configures Squash. The zero value reports no progress.
type SquashOptions struct {
	// Progress, if set, gets the guest bytes processed so far and the
	// total (the image's virtual size) while its data is committed.
	// Calls are serialised but may come from worker goroutines.
	Progress func(done, total int64)
}

// Squash merges image name into its parent level, which must have no
// other child: the data name stores is committed into the parent
// (qcow2.Commit, as qemu-img commit -d), the children of name are rebased
// onto the parent (qcow2.Rebase unsafe, as qemu-img rebase -u: only their
// backing reference changes, since the parent now shows what name
// showed), and name is removed. The merged
// level keeps the parent's name. Every dependent shows the same content
// before and after.
//
// It refuses (imagelock.ErrLocked) when a process has name, its parent or
// one of name's children open, before changing anything. An interruption
// leaves a consistent chain: while committing, the parent is seen only
// through name, which still covers every range being written; then a
// journal in the manifest records the squash before the first child is
// rebased (a child sees the same content through either reference), and
// the next mutation of the chain (Add, AddVM, Remove, Squash) finishes a
// squash the journal names before doing anything else.
func (c *ChainDir) Squash(ctx context.Context, name string, opts SquashOptions) error {
	path, l, g, n, err := c.prepareImage(ctx, name)
	if err != nil {
		return err
	}
	defer l.Unlock()
	if n.parent == "" {
		return fmt.Errorf("%w: %s is a base; there is no parent to squash it into", ErrChainKind, name)
	}
	p := g.nodes[n.parent]
	if len(p.children) != 1 {
		return fmt.Errorf("%w: %s has other children (%s); squash needs %s to be its only child", ErrChainDependents, n.parent, strings.Join(p.children, ", "), name)
	}
	// Lock the children (their headers change) against running VMs before
	// touching anything; Commit below locks name and the parent.
	locks := map[string]*os.File{}
	defer func() {
		for _, f := range locks {
			f.Close()
		}
	}()
	for _, ch := range n.children {
		f, err := lockChild(filepath.Join(c.dir, ch+chainExt))
		if err != nil {
			c.refreshModes()
			return fmt.Errorf("vmchain: cannot squash %s: %w", name, err)
		}
		locks[ch] = f
	}
	ppath := filepath.Join(c.dir, n.parent+chainExt)
	if err := SetWritable(ppath, true); err != nil {
		return fmt.Errorf("vmchain: %w", err)
	}
	// The parent gets name's data, written and flushed; name itself is
	// left as it is until it is removed. Commit takes the writer lock on
	// the parent and a reader lock on name, so it refuses while a VM
	// uses either.
	if err := qcow2.Commit(ctx, path, qcow2.CommitOptions{Drop: true, Progress: opts.Progress}); err != nil {
		c.refreshModes()
		return fmt.Errorf("vmchain: squashing %s into %s: %w", name, n.parent, err)
	}
	g.manifest.Squash = &chainSquashJournal{Name: name, Into: n.parent}
	if err := c.writeManifest(g.manifest); err != nil {
		c.refreshModes()
		return err
	}
	return c.finishSquash(ctx, g, locks)
}

// finishSquash completes the squash the manifest's journal names, whose
// commit is done: it rebases the children of the squashed image onto
// the image it went into (qcow2.Rebase, unsafe: the reference only),
// removes it, and clears the journal. locks holds writer-locked
// descriptors of children the caller locked up front; each is released
// just before its child is rebased (Rebase takes the writer lock itself).
func (c *ChainDir) finishSquash(ctx context.Context, g *chainGraph, locks map[string]*os.File) error {
	j := g.manifest.Squash
	if n := g.nodes[j.Name]; n != nil {
		for _, ch := range n.children {
			cp := filepath.Join(c.dir, ch+chainExt)
			if f := locks[ch]; f != nil {
				f.Close()
				delete(locks, ch)
			}
			if err := SetWritable(cp, true); err != nil {
				return fmt.Errorf("vmchain: %w", err)
			}
			err := qcow2.Rebase(ctx, cp, qcow2.RebaseOptions{Backing: j.Into + chainExt, BackingFormat: qcow2.FormatQcow2, Unsafe: true})
			if err != nil {
				c.refreshModes()
				return fmt.Errorf("vmchain: squashing %s: rebasing %s onto %s (the next change to the chain retries): %w", j.Name, ch, j.Into, err)
			}
		}
		if err := os.Remove(filepath.Join(c.dir, j.Name+chainExt)); err != nil {
			return fmt.Errorf("vmchain: %w", err)
		}
	}
	delete(g.manifest.Images, j.Name)
	g.manifest.Squash = nil
	if err := c.writeManifest(g.manifest); err != nil {
		return err
	}
	return c.refreshModes()
}

// lockChild makes the image at path writable and opens it with QEMU's
// writer lock.
func lockChild(path string) (*os.File, error) {
	if err := SetWritable(path, true); err != nil {
		return nil, fmt.Errorf("vmchain: %w", err)
	}
	return lockImage(path, imagelock.Writer, true)
}

// lockImage opens path (for reading and writing when write is set, which
// needs the file's write permission) and takes QEMU's lock in mode,
// failing (errors.Is imagelock.ErrLocked) when another process, a
// running VM for instance, has the image open in a conflicting way.
// Closing the returned file releases the lock.
func lockImage(path string, mode imagelock.Mode, write bool) (*os.File, error) {
	flag := os.O_RDONLY
	if write {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, fmt.Errorf("vmchain: %w", err)
	}
	if _, err := imagelock.Acquire(f, mode); err != nil {
		f.Close()
		return nil, fmt.Errorf("vmchain: %w", err)
	}
	return f, nil
}

// prepareImage is prepare for a mutation of the existing image name: it
// returns the image's path, the held lock, the chain and the image's node.
func (c *ChainDir) prepareImage(ctx context.Context, name string) (string, *lockfile.Lock, *chainGraph, *chainNode, error) {
	path, err := c.ImagePath(name)
	if err != nil {
		return "", nil, nil, nil, err
	}
	l, g, err := c.prepare(ctx)
	if err != nil {
		return "", nil, nil, nil, err
	}
	n := g.nodes[name]
	if n == nil {
		l.Unlock()
		return "", nil, nil, nil, fmt.Errorf("%w: %s in %s", ErrChainNotFound, name, c.dir)
	}
	return path, l, g, n, nil
}

// prepare starts a mutation: it takes the exclusive lock, removes stale
// temporaries, finishes an interrupted squash and returns the graph.
func (c *ChainDir) prepare(ctx context.Context) (*lockfile.Lock, *chainGraph, error) {
	l, err := c.lock(ctx, true)
	if err != nil {
		return nil, nil, err
	}
	c.removeStale()
	g, err := c.scan()
	if err == nil && g.manifest.Squash != nil {
		if err = c.finishSquash(ctx, g, nil); err == nil {
			g, err = c.scan()
		}
	}
	if err != nil {
		l.Unlock()
		return nil, nil, err
	}
	return l, g, nil
}

// fileAllocated returns the bytes the file at path takes on disk.
func fileAllocated(path string) (int64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512, nil
	}
	return fi.Size(), nil
}
