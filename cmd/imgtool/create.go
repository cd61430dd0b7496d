package main

import (
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/imgtool/imgtool/internal/qemusize"

	"github.com/imgtool/imgtool/qcow2"
)

// runCreate implements `imgtool create`, as qemu-img create.
func runCreate(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("create", "[-f qcow2|raw] [-b|--backing FILE] [-F|--backing-format FMT] [-o k=v,...] [-u] [-p] [-q] FILE [SIZE]", stdout, stderr)
	format := fs.StringP("format", "f", "qcow2", "image format: qcow2 or raw")
	backing := fs.StringP("backing", "b", "", "backing file (relative names are relative to FILE's directory)")
	backingFmt := fs.StringP("backing-format", "F", "", "backing file format (qcow2 or raw); probed when omitted")
	options := fs.StringArrayP("options", "o", nil, "qemu-img options: compat, cluster_size, extended_l2, compression_type, lazy_refcounts, refcount_bits, preallocation, backing_file, backing_fmt (-o help lists them)")
	unsafe := fs.BoolP("unsafe", "u", false, "do not open the backing file (SIZE is then required)")
	clusterSize := fs.String("cluster-size", "", "cluster size, 512 to 2M (default 64K)")
	extL2 := fs.Bool("extended-l2", false, "use extended L2 entries (32 subclusters per cluster)")
	compression := fs.String("compression-type", "", "compression type: zlib (default) or zstd")
	lazy := fs.Bool("lazy-refcounts", false, "set the lazy refcounts feature")
	prealloc := fs.String("preallocation", "", "preallocation: off (default), metadata, falloc or full")
	compat := fs.String("compat", "", "qcow2 version: 1.1 (default, v3) or 0.10 (v2)")
	overwrite := fs.Bool("overwrite", false, "replace FILE if it exists (by default create refuses)")
	progress := fs.BoolP("progress", "p", false, "show progress on stderr (full preallocation)")
	quiet := fs.BoolP("quiet", "q", false, "print nothing on success (no Formatting line, no progress)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := createOptionsHelp(*options, *format, stdout); err != nil {
		return err
	}
	if fs.NArg() < 1 || fs.NArg() > 2 {
		return usagef("expected FILE [SIZE], got %d arguments", fs.NArg())
	}
	opts := qcow2.CreateOptions{
		Format:          qcow2.Format(*format),
		BackingFile:     *backing,
		BackingFormat:   qcow2.Format(*backingFmt),
		UnsafeBacking:   *unsafe,
		ExtendedL2:      *extL2,
		CompressionType: *compression,
		LazyRefcounts:   *lazy,
		Preallocation:   *prealloc,
		Compat:          *compat,
		Overwrite:       *overwrite,
	}
	if *clusterSize != "" {
		v, err := qemusize.Parse(*clusterSize)
		if err != nil {
			return usagef("--cluster-size: %v", err)
		}
		opts.ClusterSize = v
	}
	for _, o := range *options {
		if err := parseCreateOptions(&opts, o); err != nil {
			return usagef("-o: %v", err)
		}
	}
	if fs.NArg() == 2 {
		v, err := qemusize.Parse(fs.Arg(1))
		if err != nil {
			return usagef("SIZE: %v", err)
		}
		opts.Size = v
	} else if opts.BackingFile == "" && opts.Size == 0 {
		return usagef("SIZE is required without a backing file")
	}
	path := fs.Arg(0)
	if !*quiet {
		fmt.Fprintln(stdout, formattingLine(path, opts, fs.NArg() == 2))
	}
	update, finish := newProgress(*progress && !*quiet, stderr, "preallocating")
	defer finish()
	opts.Progress = update
	return qcow2.Create(path, opts)
}

// formattingLine is the line qemu-img create prints before it creates an
// image, with the options in qemu-img 7.2's order: those it always lists
// (cluster_size, extended_l2, compression_type, size, lazy_refcounts,
// refcount_bits for qcow2; size for raw) with their defaults, and the ones
// it lists only when given (preallocation, backing_fmt, compat). Without
// SIZE, the size shown is the backing file's, as qemu-img shows it.
func formattingLine(path string, o qcow2.CreateOptions, sizeGiven bool) string {
	size := o.Size
	if !sizeGiven && size == 0 && o.BackingFile != "" {
		size = backingSize(path, o)
	}
	format := o.Format
	if format == "" {
		format = qcow2.FormatQcow2
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Formatting '%s', fmt=%s", path, format)
	if format == qcow2.FormatRaw {
		fmt.Fprintf(&b, " size=%d", size)
		if o.Preallocation != "" {
			fmt.Fprintf(&b, " preallocation=%s", o.Preallocation)
		}
		return b.String()
	}
	cluster := o.ClusterSize
	if cluster == 0 {
		cluster = 64 << 10
	}
	compression := o.CompressionType
	if compression == "" || compression == "deflate" {
		compression = "zlib"
	}
	refcountBits := o.RefcountBits
	if refcountBits == 0 {
		refcountBits = 16
	}
	fmt.Fprintf(&b, " cluster_size=%d extended_l2=%s", cluster, onOff(o.ExtendedL2))
	if o.Preallocation != "" {
		fmt.Fprintf(&b, " preallocation=%s", o.Preallocation)
	}
	fmt.Fprintf(&b, " compression_type=%s size=%d", compression, size)
	if o.BackingFile != "" {
		fmt.Fprintf(&b, " backing_file=%s", o.BackingFile)
		if o.BackingFormat != "" {
			fmt.Fprintf(&b, " backing_fmt=%s", o.BackingFormat)
		}
	}
	if o.Compat != "" {
		fmt.Fprintf(&b, " compat=%s", o.Compat)
	}
	fmt.Fprintf(&b, " lazy_refcounts=%s refcount_bits=%d", onOff(o.LazyRefcounts), refcountBits)
	return b.String()
}

func onOff(v bool) string {
	if v {
		return "on"
	}
	return "off"
}

// backingSize is the virtual size of the backing file a new image at path
// names (relative to path's directory), or 0 when it can't be opened;
// create itself then reports why.
func backingSize(path string, o qcow2.CreateOptions) int64 {
	if o.UnsafeBacking {
		return 0
	}
	bf := o.BackingFile
	if !filepath.IsAbs(bf) {
		bf = filepath.Join(filepath.Dir(path), bf)
	}
	img, err := qcow2.Open(bf, qcow2.Options{Format: o.BackingFormat, NoBacking: true, ForceShare: true})
	if err != nil {
		return 0
	}
	defer img.Close()
	return img.Size()
}
