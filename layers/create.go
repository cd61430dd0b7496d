package layers

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// CreateOptions control Create. The zero value writes a gzip layer of the
// whole directory.
type CreateOptions struct {
	// Compression of the blob (default Gzip).
	Compression Compression
	// Lower, when set, makes the layer the difference from the tree in
	// Lower to the tree in dir: added and changed entries, whiteouts for
	// deleted ones, and opaque markers where a directory replaced a
	// non-directory.
	Lower string
	// OverlayUpper says dir is an overlayfs upperdir: char devices 0/0
	// become whiteouts and the opaque xattr an opaque marker. With Lower
	// (the merged lower layers) set, whiteouts of names that are not in
	// Lower and the opaque xattr that the kernel puts on new directories
	// are skipped.
	OverlayUpper bool
	// SourceDateEpoch, when set, clamps every mtime to it (reproducible
	// builds). The library never reads the environment; the CLI maps
	// SOURCE_DATE_EPOCH onto this.
	SourceDateEpoch *time.Time
	// Concurrency bounds the compression goroutines (default GOMAXPROCS).
	// The output does not depend on it.
	Concurrency int
	// Level is the compression level on the scale of the gzip (1-9) and
	// zstd (1-22) command-line tools; 0 means DefaultGzipLevel (5,
	// klauspost/compress's default) or DefaultZstdLevel (3, as the zstd
	// tool). It is ignored without compression. For zstd, levels 1-2 trade about 5% larger
	// blobs for 1.6x less CPU than the default. The output depends on
	// the level.
	Level int
}

// Create writes a layer blob of the tree in dir to w and returns its
// descriptor, computing the digest and diffID in the same pass.
//
// The output is reproducible: entries sorted depth-first by name (a
// directory's whiteouts and opaque marker first), PAX format, no user or
// group names, no atime/ctime, whiteouts with mtime 0 and mode 0644, mtimes
// clamped to SourceDateEpoch when set. Files that are hard links of each
// other become one regular entry and hardlink entries to it. Xattrs kept:
// security.capability and user.* (not user.overlay.*). Sockets are
// skipped. The root directory itself is not an entry.
//
// Create reads dir without following symlinks. It is safe to call
// concurrently; the trees must not change while it runs (a file whose size
// changes is an error).
func Create(ctx context.Context, w io.Writer, dir string, opts CreateOptions) (Descriptor, error) {
	switch opts.Compression {
	case Gzip, Zstd, None:
	default:
		return Descriptor{}, fmt.Errorf("%w: compression %v", ErrUnsupported, opts.Compression)
	}
	level, err := compressionLevel(opts.Compression, opts.Level)
	if err != nil {
		return Descriptor{}, err // "layers: unsupported: zstd level 30 (want 1 to 22)"
	}
	st, err := os.Lstat(dir)
	if err != nil {
		return Descriptor{}, fmt.Errorf("layers: create: %w", err)
	}
	if !st.IsDir() {
		return Descriptor{}, fmt.Errorf("layers: create: %s is not a directory", dir)
	}
	if opts.Lower != "" {
		if st, err := os.Lstat(opts.Lower); err != nil {
			return Descriptor{}, fmt.Errorf("layers: create: lower: %w", err)
		} else if !st.IsDir() {
			return Descriptor{}, fmt.Errorf("layers: create: lower %s is not a directory", opts.Lower)
		}
	}
	p := &planner{ctx: ctx, opts: opts}
	if err := p.dir("", dir, opts.Lower, opts.Lower == "" && !opts.OverlayUpper); err != nil {
		return Descriptor{}, fmt.Errorf("layers: create from %s: %w", dir, err)
	}
	p.resolveHardlinks()
	p.includeParents()

	compressed := &hashWriter{w: w, h: sha256.New()}
	cw, err := newCompressor(opts.Compression, compressed, opts.Concurrency, level)
	if err != nil {
		return Descriptor{}, err
	}
	raw := &hashWriter{w: cw, h: sha256.New()}
	tw := tar.NewWriter(raw)
	werr := p.write(tw)
	if werr == nil {
		werr = tw.Close()
	}
	if cerr := cw.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return Descriptor{}, fmt.Errorf("layers: create from %s: %w", dir, werr)
	}
	return Descriptor{
		MediaType:        opts.Compression.MediaType(),
		Digest:           digest.NewDigest(digest.SHA256, compressed.h),
		DiffID:           digest.NewDigest(digest.SHA256, raw.h),
		Size:             compressed.n,
		UncompressedSize: raw.n,
	}, nil
}

type hashWriter struct {
	w io.Writer
	h hash.Hash
	n int64
}

func (h *hashWriter) Write(p []byte) (int, error) {
	n, err := h.w.Write(p)
	h.h.Write(p[:n])
	h.n += int64(n)
	return n, err
}

// node is one file of a tree, as lstat'ed.
type node struct {
	path   string // absolute or caller-relative path on disk
	st     unix.Stat_t
	link   string            // symlink target
	xattrs map[string]string // filtered (see keepXattr)
	ovl    map[string]string // overlay xattrs (upperdir mode)
}

func (n *node) kind() uint32 { return n.st.Mode & unix.S_IFMT }
func (n *node) isDir() bool  { return n.kind() == unix.S_IFDIR }

func statNode(path string) (*node, error) {
	n := &node{path: path}
	if err := unix.Lstat(path, &n.st); err != nil {
		return nil, &os.PathError{Op: "lstat", Path: path, Err: err}
	}
	if n.kind() == unix.S_IFLNK {
		l, err := os.Readlink(path)
		if err != nil {
			return nil, err
		}
		n.link = l
	}
	xs, err := listXattrs(path)
	if err != nil {
		return nil, err
	}
	for k, v := range xs {
		switch {
		case strings.HasPrefix(k, "trusted.overlay.") || strings.HasPrefix(k, "user.overlay."):
			if n.ovl == nil {
				n.ovl = make(map[string]string)
			}
			n.ovl[k] = v
		case k == "security.capability" || strings.HasPrefix(k, "user."):
			if n.xattrs == nil {
				n.xattrs = make(map[string]string)
			}
			n.xattrs[k] = v
		}
	}
	return n, nil
}

// listXattrs reads all xattrs of path without following a symlink.
func listXattrs(path string) (map[string]string, error) {
	buf := make([]byte, 1024)
	var sz int
	for {
		var err error
		sz, err = unix.Llistxattr(path, buf)
		if err == unix.ERANGE {
			buf = make([]byte, len(buf)*4)
			continue
		}
		if err == unix.ENOTSUP || err == unix.EPERM {
			return nil, nil
		}
		if err != nil {
			return nil, &os.PathError{Op: "llistxattr", Path: path, Err: err}
		}
		break
	}
	if sz == 0 {
		return nil, nil
	}
	m := make(map[string]string)
	val := make([]byte, 256)
	for name := range strings.SplitSeq(strings.TrimRight(string(buf[:sz]), "\x00"), "\x00") {
		for {
			n, err := unix.Lgetxattr(path, name, val)
			if err == unix.ERANGE {
				val = make([]byte, len(val)*4)
				continue
			}
			if err == unix.ENODATA {
				break
			}
			if err != nil {
				return nil, &os.PathError{Op: "lgetxattr " + name, Path: path, Err: err}
			}
			m[name] = string(val[:n])
			break
		}
	}
	return m, nil
}

// item is one planned tar entry.
type item struct {
	name   string // clean relative name
	n      *node  // nil for whiteouts and opaque markers
	wh     bool   // whiteout or opaque marker (name is the full .wh. name)
	linkTo string // hardlink entry to this earlier name
	skip   bool   // unchanged (diff mode), unless its hardlink group is included
}

type devIno struct{ dev, ino uint64 }

// planner walks the trees and lists the entries of the layer in order.
type planner struct {
	ctx   context.Context
	opts  CreateOptions
	items []item
}

func join(rel, name string) string {
	if rel == "" {
		return name
	}
	return rel + "/" + name
}

func readNames(dir string) ([]string, error) {
	if dir == "" {
		return nil, nil
	}
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	return names, nil
}

// dir plans the children of directory rel: upper is its path in the
// source tree, lower its path in Lower ("" when Lower has no directory
// there). all says everything below is new (no comparison).
func (p *planner) dir(rel, upper, lower string, all bool) error {
	if err := p.ctx.Err(); err != nil {
		return err
	}
	names, err := readNames(upper)
	if err != nil {
		return err
	}
	var lowerNames []string
	if !all && !p.opts.OverlayUpper {
		if lowerNames, err = readNames(lower); err != nil {
			return err
		}
	}
	// Whiteouts for deleted names come first.
	if !all && !p.opts.OverlayUpper {
		for _, ln := range lowerNames {
			if _, found := slices.BinarySearch(names, ln); !found {
				p.items = append(p.items, item{name: join(rel, whiteoutPrefix+ln), wh: true})
			}
		}
	}
	for _, name := range names {
		if strings.HasPrefix(name, whiteoutPrefix) {
			return fmt.Errorf("%w: %s: a file named %q would read as a whiteout", ErrUnsupported, filepath.Join(upper, name), name)
		}
		n, err := statNode(filepath.Join(upper, name))
		if err != nil {
			return err
		}
		if p.opts.OverlayUpper && n.kind() == unix.S_IFCHR && n.st.Rdev == 0 {
			// An overlayfs whiteout. With Lower set, skip the ones that
			// hide nothing.
			if p.opts.Lower != "" {
				if lower == "" {
					continue
				}
				if _, err := os.Lstat(filepath.Join(lower, name)); errors.Is(err, os.ErrNotExist) {
					continue
				}
			}
			p.items = append(p.items, item{name: join(rel, whiteoutPrefix+name), wh: true})
			continue
		}
		if err := p.entry(rel, name, n, lower, all); err != nil {
			return err
		}
	}
	return nil
}
