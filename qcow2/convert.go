package qcow2

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// ConvertOptions configures Convert. The zero value writes a qcow2 image
// with qemu-img's defaults (version 3, 64 KiB clusters, 16-bit
// refcounts), uncompressed, sparse, using twice GOMAXPROCS workers and
// reporting no progress.
type ConvertOptions struct {
	// Create describes the output: Format (FormatQcow2 by default, or
	// FormatRaw) and every create option (cluster size, version,
	// extended L2, compression type, refcount bits, preallocation...).
	// Size must be 0 (the source's size) or equal to the source size.
	// BackingFile (qemu-img -B) makes the output an overlay of that
	// file: only clusters whose content differs from what the backing
	// file shows are written, so the delta is minimal. BackingFormat ""
	// probes the backing file.
	Create CreateOptions
	// Compress stores data clusters compressed with
	// Create.CompressionType (qemu-img -c; qcow2 only). A cluster whose
	// compressed form is not smaller than the cluster is stored
	// uncompressed, as QEMU does.
	Compress bool
	// NoSparse writes zeros too (qemu-img -S 0). By default a cluster of
	// zeros stays unallocated, or becomes a zero cluster when a backing
	// file would show through with other content; raw output keeps
	// holes. Raw output with NoSparse is fully allocated, as with -o
	// preallocation=full: its blocks are reserved with fallocate, or,
	// where the filesystem can't, every byte is written.
	NoSparse bool
	// SparseSize is the zero-detection granularity of raw output
	// (qemu-img -S): an aligned block of this many zero bytes is left
	// as a hole, a shorter run of zeros is written. A multiple of 512;
	// 0 means 4 KiB. qcow2 output detects zeros per cluster.
	SparseSize int64
	// Workers is the number of goroutines reading, comparing and
	// compressing clusters (and writing them). 0 means twice
	// runtime.GOMAXPROCS(0).
	Workers int
	// ChunkSize is the unit of work in bytes, rounded up to a multiple
	// of 4 KiB: the most raw output reads and writes at once, and the
	// guest range one qcow2 job covers (whole clusters, at least one;
	// its data goes out in one vectored write). 0 means 2 MiB.
	ChunkSize int64
	// Progress, if set, is called with the guest bytes processed so far
	// and the total. Calls are serialised and done never decreases.
	Progress func(done, total int64)
	// Cache is the -t mode of the output (see CacheMode); "" is
	// CacheWriteback.
	Cache CacheMode
	// NoCreate writes into an existing dst of format Create.Format
	// instead of creating it (qemu-img convert -n): dst must be at least
	// as large as src; its first src.Size() bytes get src's content and
	// the rest is left alone. No create option other than Format
	// applies; -c and -B are refused.
	NoCreate bool
	// TargetIsZero (qemu-img --target-is-zero, with NoCreate) skips
	// writing zeros where src reads as zeros.
	TargetIsZero bool
	// CopyOffload (qemu-img -C) copies uncompressed runs of a host file
	// into raw output with copy_file_range, in the kernel (a reflink
	// where the file system shares blocks), without looking for zeros
	// in them. Raw output with NoSparse does so too. Where the kernel
	// can't copy between the two files, data is read and written.
	CopyOffload bool
}

// sparseBlock is the default granularity of zero detection in raw
// output.
const sparseBlock = 4096

// validate checks opts and fills in the defaults.
func (o *ConvertOptions) validate(dst string) error {
	if o.Workers < 0 || o.ChunkSize < 0 {
		return fmt.Errorf("qcow2: convert to %s: negative Workers or ChunkSize", dst)
	}
	if err := o.Cache.valid(); err != nil {
		return err
	}
	if o.SparseSize < 0 || o.SparseSize%512 != 0 {
		return fmt.Errorf("qcow2: sparse size %d is not a multiple of 512", o.SparseSize)
	}
	if o.SparseSize == 0 {
		o.SparseSize = sparseBlock
	}
	if o.Workers == 0 {
		o.Workers = defaultWorkers()
	}
	if o.ChunkSize == 0 {
		o.ChunkSize = 2 << 20
	}
	o.ChunkSize = (o.ChunkSize + sparseBlock - 1) &^ (sparseBlock - 1)
	if o.CopyOffload && o.Compress {
		return fmt.Errorf("qcow2: convert to %s: copy offloading cannot be used with compression", dst)
	}
	if o.Create.Format == "" {
		o.Create.Format = FormatQcow2
	}
	return nil
}

// Convert writes the guest content of src (a whole chain) to dst as a
// new image described by opts.Create (qcow2 by default, or raw),
// replacing dst if it exists, or, with opts.NoCreate, into the existing
// image dst.
//
// Workers read (decompressing compressed clusters), compare and
// compress the source in parallel. Raw output is sparse unless
// opts.NoSparse: unallocated and zero ranges, and blocks that read as
// zeros, stay holes. qcow2 output is laid out in guest order: data
// clusters after the L1 table, compressed clusters packed back to back as
// QEMU packs them (a host cluster holding parts of several compressed
// clusters is counted once per entry), then the L2 tables, refcount
// blocks and header.
//
// A new dst is written through internal/atomicfile: an existing dst that
// another process (or an image open in this one, such as src's own
// chain) holds is refused with an *atomicfile.LockError, a symlink is
// written through, a new file gets 0666 minus the umask and a replaced
// one keeps its mode, and on error, cancellation or kill dst is untouched
// and nothing is left behind.
func Convert(ctx context.Context, src *Image, dst string, opts ConvertOptions) error {
	if err := src.Readable(); err != nil {
		return err
	}
	if err := opts.validate(dst); err != nil {
		return err
	}
	co := &opts.Create
	if co.Size != 0 && co.Size != src.Size() {
		return fmt.Errorf("qcow2: convert to %s: size %d differs from the source size %d", dst, co.Size, src.Size())
	}
	co.Size = src.Size()
	if opts.NoCreate {
		return convertExisting(ctx, src, dst, opts)
	}
	switch co.Format {
	case FormatRaw:
		switch {
		case opts.Compress:
			return fmt.Errorf("%w: compressed raw images (-c needs -O qcow2)", ErrUnsupportedFeature)
		case co.BackingFile != "":
			return fmt.Errorf("%w: a raw image cannot have a backing file", ErrUnsupportedFeature)
		case co.Preallocation != "" && co.Preallocation != PreallocOff && co.Preallocation != PreallocFalloc && co.Preallocation != PreallocFull:
			return fmt.Errorf("%w: preallocation %q for raw output (off, falloc or full)", ErrUnsupportedFeature, co.Preallocation)
		}
		if co.Preallocation == PreallocFull {
			opts.NoSparse = true
		}
		return convertRaw(ctx, src, dst, opts)
	case FormatQcow2:
		return convertQcow2(ctx, src, dst, opts)
	}
	return fmt.Errorf("%w: output format %q (qcow2 and raw are supported)", ErrUnsupportedFeature, co.Format)
}

// convertQcow2 is Convert to a new qcow2 image.
func convertQcow2(ctx context.Context, src *Image, dst string, opts ConvertOptions) error {
	co := opts.Create
	switch co.Preallocation {
	case "", PreallocOff, PreallocMetadata, PreallocFalloc, PreallocFull:
	default:
		return fmt.Errorf("qcow2: convert to %s: preallocation %q (want off, metadata, falloc or full)", dst, co.Preallocation)
	}
	prealloc := co.Preallocation != "" && co.Preallocation != PreallocOff
	if prealloc && opts.Compress {
		return fmt.Errorf("qcow2: convert to %s: compression and preallocation cannot be used together", dst)
	}
	var bk *Image
	if co.BackingFile != "" {
		if err := checkRefName(co.BackingFile); err != nil {
			return fmt.Errorf("%w: convert to %s: backing file %q: %v", ErrRefused, dst, co.BackingFile, err)
		}
		var err error
		bk, err = Open(combinePath(dst, co.BackingFile), Options{Format: co.BackingFormat})
		if err != nil {
			return convertError(dst+": opening backing file", err)
		}
		defer bk.Close()
		if err := bk.Readable(); err != nil {
			return err
		}
		if co.BackingFormat == "" {
			co.BackingFormat = bk.Format()
		}
	}
	h, err := createHeader(&co)
	if err != nil {
		return fmt.Errorf("qcow2: convert to %s: %w", dst, err)
	}

	// src (and bk) are open with their read locks before dst is locked
	// for writing, so a dst in src's own chain is refused, as qemu-img
	// refuses it.
	tmp, out, err := createOutput(dst, opts.Cache)
	if err != nil {
		return err
	}
	defer tmp.Abort()
	defer out.close()
	cw := newClusterWriter(out, h, prealloc, co.Preallocation == PreallocFull)
	cv := &converter{
		src: src, bk: bk, cw: cw, h: h,
		cs:       h.ClusterSize(),
		compress: opts.Compress,
		noSparse: opts.NoSparse,
		prealloc: prealloc,
		workers:  opts.Workers,
		chunk:    opts.ChunkSize,
		progress: opts.Progress,
	}
	if err := cv.run(ctx); err != nil {
		return convertError(dst, err)
	}
	if err := checkUnshrunk(src); err != nil {
		return err
	}
	if err := cw.finish(); err != nil {
		return convertError(dst, err)
	}
	if co.Preallocation == PreallocFalloc {
		if err := reserveFile(tmp.File); err != nil {
			return fmt.Errorf("qcow2: convert to %s: preallocation=falloc: %w", dst, err)
		}
	}
	return tmp.Commit()
}

// convertError says "qcow2: convert to DST: " before err, once: the
// "qcow2: " an inner error (a read of the source, an open) starts with is
// not repeated. Cancellation is returned as it is.
func convertError(dst string, err error) error {
	if errors.Is(err, context.Canceled) {
		return err
	}
	return &prefixedError{"qcow2: convert to " + dst + ": ", err}
}

type prefixedError struct {
	prefix string
	err    error
}

func (e *prefixedError) Error() string {
	return e.prefix + strings.TrimPrefix(e.err.Error(), "qcow2: ")
}

func (e *prefixedError) Unwrap() error { return e.err }

// checkUnshrunk reports an error when the file of a read-only image in
// src's chain is now shorter than when it was opened: it was truncated
// while convert read it, and reads past its new end (and SEEK_HOLE)
// would have taken its lost data for zeros.
func checkUnshrunk(src *Image) error {
	for img := src; img != nil; img = img.backing {
		if img.w != nil || img.rw != nil || img.f == nil {
			continue
		}
		fi, err := img.f.Stat()
		if err != nil {
			return fmt.Errorf("qcow2: %s: %w", img.path, err)
		}
		if fi.Size() < img.fileSize {
			return fmt.Errorf("qcow2: %s changed while it was read: the file shrank from %d to %d bytes", img.path, img.fileSize, fi.Size())
		}
	}
	return nil
}
