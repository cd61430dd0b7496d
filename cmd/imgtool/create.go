package main

import (
	"fmt"
	"io"

	"github.com/imgtool/imgtool/internal/qemusize"

	"github.com/imgtool/imgtool/qcow2"
)

// runCreate implements `imgtool create`, as qemu-img create.
func runCreate(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("create", "[-f qcow2|raw] [-b|--backing FILE] [-F|--backing-format FMT] [-o k=v,...] [-u] [-p] FILE [SIZE]", stderr)
	format := fs.StringP("format", "f", "qcow2", "image format: qcow2 or raw")
	backing := fs.StringP("backing", "b", "", "backing file (relative names are relative to FILE's directory)")
	backingFmt := fs.StringP("backing-format", "F", "", "backing file format (qcow2 or raw); probed when omitted")
	options := fs.StringArrayP("options", "o", nil, "qemu-img options: compat, cluster_size, extended_l2, compression_type, lazy_refcounts, refcount_bits, preallocation, backing_file, backing_fmt")
	unsafe := fs.BoolP("unsafe", "u", false, "do not open the backing file (SIZE is then required)")
	clusterSize := fs.String("cluster-size", "", "cluster size, 512 to 2M (default 64K)")
	extL2 := fs.Bool("extended-l2", false, "use extended L2 entries (32 subclusters per cluster)")
	compression := fs.String("compression-type", "", "compression type: zlib (default) or zstd")
	lazy := fs.Bool("lazy-refcounts", false, "set the lazy refcounts feature")
	prealloc := fs.String("preallocation", "", "preallocation: off (default), metadata or full")
	compat := fs.String("compat", "", "qcow2 version: 1.1 (default, v3) or 0.10 (v2)")
	overwrite := fs.Bool("overwrite", false, "replace FILE if it exists (by default create refuses)")
	progress := fs.BoolP("progress", "p", false, "show progress on stderr (full preallocation)")
	if err := parseFlags(fs, args); err != nil {
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
		if err := qcow2.ParseCreateOptions(&opts, o); err != nil {
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
	fmt.Fprintf(stdout, "Formatting '%s', fmt=%s", path, opts.Format)
	if opts.BackingFile != "" {
		fmt.Fprintf(stdout, " backing_file=%s", opts.BackingFile)
		if opts.BackingFormat != "" {
			fmt.Fprintf(stdout, " backing_fmt=%s", opts.BackingFormat)
		}
	}
	if fs.NArg() == 2 || opts.Size != 0 {
		fmt.Fprintf(stdout, " size=%d", opts.Size)
	}
	fmt.Fprintln(stdout)
	update, finish := newProgress(*progress, stderr, "preallocating")
	defer finish()
	opts.Progress = update
	return qcow2.Create(path, opts)
}
