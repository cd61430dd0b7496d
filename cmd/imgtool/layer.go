package main

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"sync/atomic"

	digest "github.com/opencontainers/go-digest"

	"github.com/imgtool/imgtool/internal/atomicfile"
	"github.com/imgtool/imgtool/layers"
)

const layerUsage = `Usage: imgtool layer SUBCOMMAND [OPTIONS] ARGS...

Subcommands:
  create  [--from LOWERDIR] [--upper] [--compression gzip|zstd|none] [--level N] -o FILE DIR
          write a reproducible layer blob of DIR (or of its difference from
          LOWERDIR; with --upper, DIR is an overlayfs upper dir)
  apply   [--overlay] LAYER DIR
          apply a layer blob (tar, tar+gzip, tar+zstd) onto DIR (created
          if missing); --overlay unpacks it as an overlayfs lower dir
  ls      LAYER
          list the entries of a layer blob

LAYER may be - for standard input. SOURCE_DATE_EPOCH clamps mtimes in create.
Run 'imgtool layer SUBCOMMAND --help' for the options of one.
`

// runLayer dispatches imgtool layer create|apply|ls.
func runLayer(args []string, stdout, stderr io.Writer) error {
	return dispatch(layerUsage, args, stdout, stderr,
		subcommand{[]string{"create"}, runLayerCreate},
		subcommand{[]string{"apply"}, runLayerApply},
		subcommand{[]string{"ls", "list"}, runLayerLs},
	)
}

// layerJSON is the --output json form of a layer descriptor.
type layerJSON struct {
	Digest           string `json:"digest"`
	DiffID           string `json:"diffID"`
	Size             int64  `json:"size"`
	UncompressedSize int64  `json:"uncompressedSize"`
	MediaType        string `json:"mediaType"`
}

func printDescriptor(w io.Writer, d layers.Descriptor, asJSON bool) error {
	if asJSON {
		return writeJSON(w, layerJSON{d.Digest.String(), d.DiffID.String(), d.Size, d.UncompressedSize, d.MediaType})
	}
	fmt.Fprintf(w, "digest:    %s\ndiffID:    %s\nsize:      %d (uncompressed %d)\nmediaType: %s\n",
		d.Digest, d.DiffID, d.Size, d.UncompressedSize, d.MediaType)
	return nil
}

func runLayerCreate(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("layer create", "[--from LOWERDIR] [--upper] [--compression gzip|zstd|none] [--level N] [-p] --output-file FILE DIR", stdout, stderr)
	from := fs.String("from", "", "make the layer the difference from the tree LOWERDIR to DIR")
	upper := fs.Bool("upper", false, "DIR is an overlayfs upper dir (whiteout devices and opaque xattrs); --from names its lower tree")
	comp := fs.String("compression", "gzip", "gzip, zstd or none")
	level := fs.Int("level", 0, "compression level: gzip 1-9 (default 5), zstd 1-22 (default 3; 1 is about 1.4x cheaper for ~5% bigger blobs)")
	out := fs.String("output-file", "", "write the blob to FILE (- for standard output)")
	output := fs.String("output", "human", "report format: human or json")
	progress := progressFlags(fs, "show progress on stderr")
	for _, a := range args {
		if a == "--" {
			break
		}
		if a == "-o" || strings.HasPrefix(a, "-o") && !strings.HasPrefix(a, "--") {
			// -o is qemu-img's options flag in create, convert and measure.
			return usagef("-o is not an output file here: write the blob with --output-file FILE")
		}
	}
	asJSON, err := parseOutputArgs(fs, args, output, 1, "want exactly one DIR, got %d arguments")
	if err != nil {
		return err
	}
	if *out == "" {
		return usagef("-o FILE is required (use -o - for standard output)")
	}
	c, err := layers.ParseCompression(*comp)
	if err != nil {
		return usagef("--compression: %v", err)
	}
	epoch, err := sourceDateEpoch("")
	if err != nil {
		return err
	}
	opts := layers.CreateOptions{Compression: c, Level: *level, Lower: *from, OverlayUpper: *upper, SourceDateEpoch: epoch}
	update, finish := newProgress(*progress, stderr, "creating")
	defer finish()
	report := stdout
	var w io.Writer
	var tmp *atomicfile.File
	if *out == "-" {
		w, report = stdout, stderr
	} else {
		tmp, err = atomicfile.Create(*out, atomicfile.Options{})
		if err != nil {
			return err
		}
		defer tmp.Abort()
		w = tmp
	}
	ctx, stop := interruptible()
	defer stop()
	d, err := layers.Create(ctx, &countWriter{w: w, update: update}, fs.Arg(0), opts)
	if err != nil {
		return err
	}
	if tmp != nil {
		if err := tmp.Commit(); err != nil {
			return err
		}
	}
	finish()
	return printDescriptor(report, d, asJSON)
}

// countWriter reports the bytes written so far (total unknown: -1).
type countWriter struct {
	w      io.Writer
	n      int64
	update func(done, total int64)
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	c.update(c.n, -1)
	return n, err
}

// countReader reports the bytes read so far out of total, and stops the
// read when ctx (if any) is done: a layer whose one large file would
// take long to write out stops at Ctrl-C.
type countReader struct {
	ctx    context.Context
	r      io.Reader
	n      atomic.Int64
	total  int64
	update func(done, total int64)
}

func (c *countReader) Read(p []byte) (int, error) {
	if c.ctx != nil {
		if err := c.ctx.Err(); err != nil {
			return 0, err
		}
	}
	n, err := c.r.Read(p)
	c.update(c.n.Add(int64(n)), c.total)
	return n, err
}

// openLayer opens a layer argument (- is standard input) and returns it
// with its size (-1 when unknown).
func openLayer(name string) (io.ReadCloser, int64, error) {
	if name == "-" {
		return io.NopCloser(os.Stdin), -1, nil
	}
	f, err := os.Open(name)
	if err != nil {
		return nil, 0, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	if !st.Mode().IsRegular() {
		return f, -1, nil
	}
	return f, st.Size(), nil
}

// idMapFlag parses repeated CONTAINER:HOST:SIZE values.
type idMapFlag struct{ m *[]layers.IDMap }

func (f idMapFlag) String() string {
	var s []string
	for _, e := range *f.m {
		s = append(s, fmt.Sprintf("%d:%d:%d", e.ContainerID, e.HostID, e.Size))
	}
	return strings.Join(s, ",")
}

func (f idMapFlag) Set(v string) error {
	parts := strings.Split(v, ":")
	if len(parts) != 3 {
		return fmt.Errorf("want CONTAINER:HOST:SIZE, got %q", v)
	}
	var n [3]int
	for i, p := range parts {
		x, err := strconv.Atoi(p)
		if err != nil || x < 0 {
			return fmt.Errorf("want CONTAINER:HOST:SIZE with non-negative integers, got %q", v)
		}
		n[i] = x
	}
	*f.m = append(*f.m, layers.IDMap{ContainerID: n[0], HostID: n[1], Size: n[2]})
	return nil
}

func (f idMapFlag) Type() string { return "CONTAINER:HOST:SIZE" }

func runLayerApply(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("layer apply", "[--overlay] LAYER DIR", stdout, stderr)
	var opts layers.ApplyOptions
	fs.BoolVar(&opts.Overlay, "overlay", false, "unpack as an overlayfs lower dir: whiteouts become char 0/0 devices, opaque markers the opaque xattr")
	fs.BoolVar(&opts.UserXattr, "userxattr", false, "with --overlay, use user.overlay.* xattrs (for userxattr mounts)")
	fs.Var(idMapFlag{&opts.UIDMap}, "uid-map", "map layer uids to host uids (repeatable)")
	fs.Var(idMapFlag{&opts.GIDMap}, "gid-map", "map layer gids to host gids (repeatable)")
	fs.BoolVar(&opts.SkipDevices, "skip-devices", false, "skip device nodes when they may not be created (not root) instead of failing")
	expect := fs.String("expect-digest", "", "fail unless the blob has this digest")
	output := fs.String("output", "human", "report format: human or json")
	progress := progressFlags(fs, "show progress on stderr")
	asJSON, err := parseOutputArgs(fs, args, output, 2, "want LAYER and DIR, got %d arguments")
	if err != nil {
		return err
	}
	if *expect != "" {
		opts.ExpectDigest = digest.Digest(*expect)
		if err := opts.ExpectDigest.Validate(); err != nil {
			return usagef("--expect-digest %q: %v", *expect, err)
		}
	}
	rc, size, err := openLayer(fs.Arg(0))
	if err != nil {
		return err
	}
	defer rc.Close()
	update, finish := newProgress(*progress, stderr, "applying")
	defer finish()
	ctx, stop := interruptible()
	defer stop()
	d, err := layers.Apply(ctx, &countReader{ctx: ctx, r: rc, total: size, update: update}, fs.Arg(1), opts)
	if err != nil {
		return fmt.Errorf("%s: %w", fs.Arg(0), err)
	}
	finish()
	return printDescriptor(stdout, d, asJSON)
}

// entryJSON is one entry of `layer ls --output json`.
type entryJSON struct {
	Name     string            `json:"name"`
	Type     string            `json:"type"`
	Mode     string            `json:"mode"`
	UID      int               `json:"uid"`
	GID      int               `json:"gid"`
	Size     int64             `json:"size"`
	Mtime    string            `json:"mtime"`
	Linkname string            `json:"linkname,omitempty"`
	Xattrs   map[string]string `json:"xattrs,omitempty"`
}

func runLayerLs(args []string, stdout, stderr io.Writer) error {
	flags := newFlagSet("layer ls", "LAYER", stdout, stderr)
	output := flags.String("output", "human", "format: human or json")
	asJSON, err := parseFlagsOutput(flags, args, output)
	if err != nil {
		return err
	}
	if flags.NArg() != 1 {
		return usagef("want exactly one LAYER, got %d arguments", flags.NArg())
	}
	rc, _, err := openLayer(flags.Arg(0))
	if err != nil {
		return err
	}
	defer rc.Close()
	var list []entryJSON
	d, err := layers.List(context.Background(), rc, func(h *tar.Header) error {
		e := entryJSON{
			Name: h.Name, Type: typeString(h.Typeflag), Mode: fmt.Sprintf("%04o", h.Mode&0o7777),
			UID: h.Uid, GID: h.Gid, Size: h.Size, Mtime: h.ModTime.UTC().Format("2006-01-02T15:04:05.999999999Z"), Linkname: h.Linkname,
		}
		for k, v := range h.PAXRecords {
			if x, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
				if e.Xattrs == nil {
					e.Xattrs = map[string]string{}
				}
				e.Xattrs[x] = v
			}
		}
		if asJSON {
			list = append(list, e)
			return nil
		}
		mode := fs.FileMode(h.Mode&0o777) | typeMode(h.Typeflag)
		if h.Mode&0o4000 != 0 {
			mode |= fs.ModeSetuid
		}
		if h.Mode&0o2000 != 0 {
			mode |= fs.ModeSetgid
		}
		if h.Mode&0o1000 != 0 {
			mode |= fs.ModeSticky
		}
		line := fmt.Sprintf("%s %5d/%-5d %10d %s %s", mode, h.Uid, h.Gid, h.Size, h.ModTime.UTC().Format("2006-01-02 15:04"), h.Name)
		switch h.Typeflag {
		case tar.TypeSymlink:
			line += " -> " + h.Linkname
		case tar.TypeLink:
			line += " link to " + h.Linkname
		case tar.TypeChar, tar.TypeBlock:
			line += fmt.Sprintf(" [%d,%d]", h.Devmajor, h.Devminor)
		}
		_, err := fmt.Fprintln(stdout, line)
		return err
	}, layers.Limits{})
	if err != nil {
		return err
	}
	if asJSON {
		if list == nil {
			list = []entryJSON{}
		}
		return writeJSON(stdout, struct {
			layerJSON
			Entries []entryJSON `json:"entries"`
		}{layerJSON{d.Digest.String(), d.DiffID.String(), d.Size, d.UncompressedSize, d.MediaType}, list})
	}
	return nil
}

func typeString(t byte) string {
	switch t {
	case tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse:
		return "file"
	case tar.TypeDir:
		return "dir"
	case tar.TypeSymlink:
		return "symlink"
	case tar.TypeLink:
		return "hardlink"
	case tar.TypeChar:
		return "char"
	case tar.TypeBlock:
		return "block"
	case tar.TypeFifo:
		return "fifo"
	}
	return strconv.Quote(string(t))
}

func typeMode(t byte) fs.FileMode {
	switch t {
	case tar.TypeDir:
		return fs.ModeDir
	case tar.TypeSymlink:
		return fs.ModeSymlink
	case tar.TypeChar:
		return fs.ModeDevice | fs.ModeCharDevice
	case tar.TypeBlock:
		return fs.ModeDevice
	case tar.TypeFifo:
		return fs.ModeNamedPipe
	}
	return 0
}
