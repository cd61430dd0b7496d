package dedup

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"syscall"

	"github.com/imgtool/imgtool/internal/ioprogress"
	"github.com/imgtool/imgtool/overlay"
	"golang.org/x/sys/unix"
)

// LinkMethod says how StoreDedup shares identical files.
type LinkMethod string

const (
	// LinkHardlink replaces a file by a hard link to its twin: one inode,
	// so the files must agree in content and in all metadata (mode,
	// owner, xattrs and mtime, which a hard link shares).
	LinkHardlink LinkMethod = "hardlink"
	// LinkReflink replaces a file by a FICLONE copy of its twin sharing
	// the data extents (btrfs, xfs, bcachefs...), with its own metadata.
	// It fails with ErrUnsupported where the file system cannot clone.
	LinkReflink LinkMethod = "reflink"
	// LinkAuto reflinks where the file system supports it and hard
	// links elsewhere.
	LinkAuto LinkMethod = "auto"
)

// StoreDedupOptions configures StoreDedup. The zero value hard links
// identical regular files of at least 1 byte with GOMAXPROCS hashers.
type StoreDedupOptions struct {
	// Method is how files are shared; "" means LinkHardlink.
	Method LinkMethod
	// MinSize is the smallest file considered, in bytes; 0 means 1 (empty
	// files hold no data).
	MinSize int64
	// DryRun reports what would be shared and changes nothing.
	DryRun bool
	// Workers is the number of goroutines hashing files. 0 means
	// runtime.GOMAXPROCS(0).
	Workers int
	// Progress, if set, is called with the bytes hashed so far and the
	// total to hash, from any goroutine (serialised).
	Progress func(done, total int64)
}

// StoreDedupResult reports what StoreDedup did (or would do, DryRun).
type StoreDedupResult struct {
	Layers int   `json:"layers"`
	Files  int64 `json:"files"` // regular files considered
	// Hashed is the number of files whose content was read (those with a
	// size twin).
	Hashed int64 `json:"hashed"`
	// Linked is the number of files replaced by a link (hard or reflink)
	// to an identical file, and SavedBytes the disk space this freed: the
	// blocks of each inode whose last name was replaced (with reflinks,
	// the blocks the clone shares instead of owning).
	Linked     int64 `json:"linked"`
	Reflinked  int64 `json:"reflinked"`
	SavedBytes int64 `json:"saved-bytes"`
	// KeptApart counts files with the content of another file that stay
	// distinct because their metadata differs (hard links only).
	KeptApart int64 `json:"kept-apart"`
}

// storeFile is one regular file found in a layer.
type storeFile struct {
	path    string
	size    int64
	dev     uint64
	ino     uint64
	nlink   uint64
	blocks  int64
	meta    string // mode, owner, mtime and xattrs, encoded
	content Digest
}

// StoreDedup shares identical regular files across the unpacked layers of
// the layer store s: files of equal content (sha256) and equal metadata
// become hard links of one inode (or, with reflinks, share data extents and
// keep their own metadata). Each replacement links (or clones) the twin to
// a temporary name in the target's directory and renames it over the
// target, after checking that neither file changed since it was hashed.
// It holds the store lock shared, so gc waits; layer directories are only
// read by mounts, and what they show does not change.
func StoreDedup(ctx context.Context, s *overlay.Store, opts StoreDedupOptions) (*StoreDedupResult, error) {
	method := opts.Method
	if method == "" {
		method = LinkHardlink
	}
	switch method {
	case LinkHardlink, LinkReflink, LinkAuto:
	default:
		return nil, fmt.Errorf("dedup: unknown link method %q (want hardlink, reflink or auto)", method)
	}
	minSize := max(opts.MinSize, 1)
	if method != LinkHardlink {
		ok, err := canReflink(s.Dir())
		if err != nil {
			return nil, err
		}
		switch {
		case ok:
			method = LinkReflink
		case method == LinkReflink:
			return nil, fmt.Errorf("%w: the file system of %s cannot reflink (FICLONE)", ErrUnsupported, s.Dir())
		default:
			method = LinkHardlink
		}
	}
	res := &StoreDedupResult{}
	err := s.WithLayers(ctx, func(ls []*overlay.Layer) error {
		res.Layers = len(ls)
		var files []*storeFile
		for _, l := range ls {
			err := filepath.WalkDir(l.Dir, func(p string, d fs.DirEntry, err error) error {
				if err != nil {
					return err
				}
				if err := ctx.Err(); err != nil {
					return err
				}
				if !d.Type().IsRegular() {
					return nil
				}
				f, err := statFile(p)
				if err != nil {
					return err
				}
				if f.size >= minSize {
					files = append(files, f)
				}
				return nil
			})
			if err != nil {
				return fmt.Errorf("dedup: layer %s: %w", l.ChainID, err)
			}
		}
		res.Files = int64(len(files))
		// Only files with a size twin (another inode of the same size)
		// need hashing.
		bySize := map[int64][]*storeFile{}
		for _, f := range files {
			bySize[f.size] = append(bySize[f.size], f)
		}
		var todo []*storeFile
		var total int64
		for _, g := range bySize {
			if distinctInodes(g) < 2 {
				continue
			}
			for _, f := range g {
				todo = append(todo, f)
				total += f.size
			}
		}
		res.Hashed = int64(len(todo))
		if err := hashFiles(ctx, todo, opts.Workers, newProgress(opts.Progress, total)); err != nil {
			return err
		}
		type key struct {
			content Digest
			meta    string
		}
		groups := map[key][]*storeFile{}
		byContent := map[Digest]map[string]bool{}
		for _, f := range todo {
			k := key{f.content, f.meta}
			if method != LinkHardlink {
				k.meta = "" // a reflink keeps each file's own metadata
			}
			groups[k] = append(groups[k], f)
			if byContent[f.content] == nil {
				byContent[f.content] = map[string]bool{}
			}
			byContent[f.content][f.meta] = true
		}
		if method == LinkHardlink {
			for _, metas := range byContent {
				res.KeptApart += int64(len(metas) - 1)
			}
		}
		keys := make([]key, 0, len(groups))
		for k := range groups {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool {
			if c := bytes.Compare(keys[i].content[:], keys[j].content[:]); c != 0 {
				return c < 0
			}
			return keys[i].meta < keys[j].meta
		})
		// Links replaced per inode: its blocks are freed when all are.
		replaced := map[[2]uint64]uint64{}
		freed := func(f *storeFile) int64 {
			id := [2]uint64{f.dev, f.ino}
			replaced[id]++
			if replaced[id] == f.nlink {
				return f.blocks
			}
			return 0
		}
		for _, k := range keys {
			g := groups[k]
			// The file with most links (then the first path) is kept.
			slices.SortFunc(g, func(a, b *storeFile) int {
				if a.nlink != b.nlink {
					if a.nlink > b.nlink {
						return -1
					}
					return 1
				}
				return cmpString(a.path, b.path)
			})
			keep := g[0]
			for _, f := range g[1:] {
				if err := ctx.Err(); err != nil {
					return err
				}
				if f.dev == keep.dev && f.ino == keep.ino {
					continue // already one inode
				}
				if opts.DryRun {
					res.Linked++
					res.SavedBytes += freed(f)
					continue
				}
				how, err := replaceFile(keep, f, method == LinkHardlink)
				if errors.Is(err, errNoReflink) {
					err = fmt.Errorf("%w: %s: the file system cannot reflink (FICLONE)", ErrUnsupported, f.path)
				}
				if err != nil {
					return err
				}
				if how == "" {
					continue // changed since hashed: left alone
				}
				res.Linked++
				res.SavedBytes += freed(f)
				if how == "reflink" {
					res.Reflinked++
				}
				if how == "hardlink" {
					keep.nlink++
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func distinctInodes(g []*storeFile) int {
	seen := map[[2]uint64]bool{}
	for _, f := range g {
		seen[[2]uint64{f.dev, f.ino}] = true
	}
	return len(seen)
}

// statFile reads what StoreDedup compares of a file besides its content.
func statFile(p string) (*storeFile, error) {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return nil, &fs.PathError{Op: "lstat", Path: p, Err: err}
	}
	xa, err := xattrs(p)
	if err != nil {
		return nil, err
	}
	meta := fmt.Sprintf("%o %d:%d %d.%09d %s", st.Mode, st.Uid, st.Gid, st.Mtim.Sec, st.Mtim.Nsec, xa)
	return &storeFile{
		path: p, size: st.Size, dev: st.Dev, ino: st.Ino, nlink: uint64(st.Nlink),
		blocks: st.Blocks * 512, meta: meta,
	}, nil
}

// xattrs returns the extended attributes of p, sorted, encoded as text.
func xattrs(p string) (string, error) {
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(p, buf)
	if errors.Is(err, unix.ERANGE) {
		if n, err = unix.Llistxattr(p, nil); err == nil {
			buf = make([]byte, n)
			n, err = unix.Llistxattr(p, buf)
		}
	}
	if errors.Is(err, unix.ENOTSUP) {
		return "", nil
	}
	if err != nil {
		return "", &fs.PathError{Op: "llistxattr", Path: p, Err: err}
	}
	names := bytes.Split(bytes.TrimRight(buf[:n], "\x00"), []byte{0})
	slices.SortFunc(names, bytes.Compare)
	var out []byte
	for _, name := range names {
		if len(name) == 0 {
			continue
		}
		sz, err := unix.Lgetxattr(p, string(name), nil)
		if err != nil {
			return "", &fs.PathError{Op: "lgetxattr", Path: p, Err: err}
		}
		val := make([]byte, sz)
		if sz > 0 {
			if sz, err = unix.Lgetxattr(p, string(name), val); err != nil {
				return "", &fs.PathError{Op: "lgetxattr", Path: p, Err: err}
			}
		}
		out = fmt.Appendf(out, "%q=%q;", name, val[:sz])
	}
	return string(out), nil
}

// hashFiles computes the content digest of each file with workers
// goroutines.
func hashFiles(ctx context.Context, files []*storeFile, workers int, prog *progress) error {
	if workers <= 0 {
		workers = (&ScanOptions{}).workers()
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	work := make(chan *storeFile)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1<<20)
			h := sha256.New()
			for f := range work {
				if ctx.Err() != nil {
					continue
				}
				fh, err := os.Open(f.path)
				if err != nil {
					cancel(fmt.Errorf("dedup: %w", err))
					continue
				}
				h.Reset()
				_, err = io.CopyBuffer(h, ioprogress.WithContext(ctx, fh), buf)
				fh.Close()
				if err != nil {
					cancel(fmt.Errorf("dedup: %s: %w", f.path, err))
					continue
				}
				h.Sum(f.content[:0])
				prog.add(f.size)
			}
		}()
	}
feed:
	for _, f := range files {
		select {
		case work <- f:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	return context.Cause(ctx)
}

var errNoReflink = errors.New("dedup: reflink not supported")

// canReflink reports whether the file system of dir supports FICLONE, by
// cloning a small temporary file there.
func canReflink(dir string) (bool, error) {
	src, err := os.CreateTemp(dir, ".reflink-probe-*")
	if err != nil {
		return false, fmt.Errorf("dedup: %w", err)
	}
	defer os.Remove(src.Name())
	defer src.Close()
	if _, err := src.Write(make([]byte, 4096)); err != nil {
		return false, fmt.Errorf("dedup: %w", err)
	}
	dst := src.Name() + ".clone"
	err = reflinkCopy(src.Name(), src.Name(), dst)
	os.Remove(dst)
	if errors.Is(err, errNoReflink) {
		return false, nil
	}
	return err == nil, err
}

// replaceFile replaces f by a hard link to keep (hard) or a reflink of
// keep's data carrying f's own metadata. It first checks that both files
// are as they were when hashed, and returns "" without changing anything
// if not. The new file is made under a temporary name in f's directory and
// renamed over f.
func replaceFile(keep, f *storeFile, hard bool) (string, error) {
	for _, x := range []*storeFile{keep, f} {
		now, err := statFile(x.path)
		if err != nil {
			return "", err
		}
		if now.dev != x.dev || now.ino != x.ino || now.size != x.size || now.meta != x.meta {
			return "", nil
		}
	}
	tmp := filepath.Join(filepath.Dir(f.path), "."+filepath.Base(f.path)+".dedup-tmp")
	os.Remove(tmp) // a leftover of an interrupted run
	if hard {
		if err := os.Link(keep.path, tmp); err != nil {
			return "", fmt.Errorf("dedup: %w", err)
		}
		if err := os.Rename(tmp, f.path); err != nil {
			os.Remove(tmp)
			return "", fmt.Errorf("dedup: %w", err)
		}
		return "hardlink", nil
	}
	if err := reflinkCopy(keep.path, f.path, tmp); err != nil {
		os.Remove(tmp)
		return "", err
	}
	if err := os.Rename(tmp, f.path); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("dedup: %w", err)
	}
	return "reflink", nil
}

// reflinkCopy makes tmp a FICLONE of src with the metadata (mode, owner,
// xattrs, times) of like.
func reflinkCopy(src, like, tmp string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("dedup: %w", err)
	}
	defer in.Close()
	var st unix.Stat_t
	if err := unix.Lstat(like, &st); err != nil {
		return &fs.PathError{Op: "lstat", Path: like, Err: err}
	}
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("dedup: %w", err)
	}
	defer out.Close()
	if err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd())); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOTTY) {
			return errNoReflink
		}
		return fmt.Errorf("dedup: FICLONE %s: %w", src, err)
	}
	if err := out.Chown(int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("dedup: %w", err)
	}
	if err := out.Chmod(fs.FileMode(st.Mode&0o7777).Perm() | modeSpecial(st.Mode)); err != nil {
		return fmt.Errorf("dedup: %w", err)
	}
	if err := copyXattrs(like, tmp); err != nil {
		return err
	}
	ts := []unix.Timespec{st.Atim, st.Mtim}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, tmp, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &fs.PathError{Op: "utimensat", Path: tmp, Err: err}
	}
	return nil
}

func modeSpecial(m uint32) fs.FileMode {
	var out fs.FileMode
	if m&syscall.S_ISUID != 0 {
		out |= fs.ModeSetuid
	}
	if m&syscall.S_ISGID != 0 {
		out |= fs.ModeSetgid
	}
	if m&syscall.S_ISVTX != 0 {
		out |= fs.ModeSticky
	}
	return out
}

func copyXattrs(from, to string) error {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(from, buf)
	if errors.Is(err, unix.ENOTSUP) {
		return nil
	}
	if err != nil {
		return &fs.PathError{Op: "llistxattr", Path: from, Err: err}
	}
	for _, name := range bytes.Split(bytes.TrimRight(buf[:n], "\x00"), []byte{0}) {
		if len(name) == 0 {
			continue
		}
		val := make([]byte, 64<<10)
		sz, err := unix.Lgetxattr(from, string(name), val)
		if err != nil {
			return &fs.PathError{Op: "lgetxattr", Path: from, Err: err}
		}
		if err := unix.Lsetxattr(to, string(name), val[:sz], 0); err != nil {
			return &fs.PathError{Op: "lsetxattr", Path: to, Err: err}
		}
	}
	return nil
}
