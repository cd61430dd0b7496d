package qcow2

import (
	"fmt"
	"math/bits"
	"os"
	"strconv"
	"strings"

	"github.com/imgtool/imgtool/internal/atomicfile"
)

// Preallocation modes (qemu-img's preallocation option).
const (
	PreallocOff      = "off"
	PreallocMetadata = "metadata"
	// PreallocFalloc is metadata preallocation (qcow2) whose data
	// clusters also get their blocks reserved with fallocate, without
	// writing them; a file system that can't reserve fails the create,
	// as in QEMU.
	PreallocFalloc = "falloc"
	PreallocFull   = "full"
)

// CreateOptions describes a new image. The zero value (plus Size) makes
// what `qemu-img create -f qcow2 FILE SIZE` makes: version 3, 64 KiB
// clusters, 16-bit refcounts, deflate compression, no preallocation.
type CreateOptions struct {
	// Format is FormatQcow2 (default) or FormatRaw.
	Format Format
	// Size is the guest size in bytes. 0 with a BackingFile means the
	// backing file's size.
	Size int64
	// ClusterSize is a power of two from 512 B to 2 MiB; 0 means 64 KiB.
	ClusterSize int64
	// Compat is "1.1" or "v3" (default) for version 3, "0.10" or "v2"
	// for version 2.
	Compat string
	// ExtendedL2 uses 32 subclusters per cluster (version 3, clusters of
	// at least 16 KiB).
	ExtendedL2 bool
	// CompressionType is "zlib"/"deflate" (default) or "zstd" (version 3).
	CompressionType string
	// LazyRefcounts sets the lazy refcounts compatible feature (version 3).
	LazyRefcounts bool
	// RefcountBits is 1, 2, 4, 8, 16, 32 or 64; 0 means 16. Version 2 only
	// has 16.
	RefcountBits int
	// Preallocation is "off" (default, also ""), "metadata" (qcow2
	// only), "falloc" or "full".
	// With a backing file only extended L2 images can be preallocated,
	// as in QEMU.
	Preallocation string
	// BackingFile is the backing file name stored in the image; a
	// relative name is relative to the new image's directory.
	BackingFile string
	// BackingFormat is "qcow2" or "raw"; "" probes the backing file and
	// records what it found.
	BackingFormat Format
	// UnsafeBacking does not open the backing file (qemu-img create -u):
	// Size must be given, and BackingFormat is recorded only if set.
	UnsafeBacking bool
	// Overwrite replaces an existing file; by default Create refuses.
	// An existing file that another process (or an open image of this
	// one) holds is refused with an atomicfile.LockError either way.
	Overwrite bool
	// Sync is the durability of the new file: atomicfile.Durable (the
	// default) or atomicfile.NoSync (qemu-img -t unsafe).
	Sync atomicfile.Sync
	// Progress, if set, is called as preallocation proceeds with the
	// bytes of guest done and in all. Only full preallocation, which
	// writes every cluster, reports.
	Progress func(done, total int64)
}

// defaultClusterSize is qemu-img's default cluster size.
const defaultClusterSize = 64 << 10

// Create writes a new, empty image at path. The file is built as an
// unnamed (or temporary) file in the same directory and put in place
// whole (see internal/atomicfile): a symlink at path is written through,
// a new file gets mode 0666 minus the umask and a replaced one keeps its
// mode.
func Create(path string, opts CreateOptions) error {
	if !opts.Overwrite {
		if _, err := os.Lstat(path); err == nil {
			return fmt.Errorf("%w: %s (refusing to overwrite)", ErrExists, path)
		}
	}
	if err := prepareCreate(path, &opts); err != nil {
		return err
	}
	tmp, err := atomicfile.Create(path, atomicfile.Options{Sync: opts.Sync})
	if err != nil {
		return fmt.Errorf("qcow2: creating %s: %w", path, err)
	}
	defer tmp.Abort()
	if err := fillNew(tmp.File, tmp.TempPath(), path, &opts); err != nil {
		return err
	}
	if err := tmp.Commit(); err != nil {
		return fmt.Errorf("qcow2: creating %s: %w", path, err)
	}
	return nil
}

// CreateFile writes a new, empty image into f, an empty file open for
// reading and writing, as Create would write it at path: path names the
// image in messages and a relative BackingFile is found from its
// directory. Putting f in place (internal/atomicfile) is the caller's;
// Overwrite and Sync do not apply.
func CreateFile(f *os.File, path string, opts CreateOptions) error {
	if err := prepareCreate(path, &opts); err != nil {
		return err
	}
	return fillNew(f, "/proc/self/fd/"+strconv.Itoa(int(f.Fd())), path, &opts)
}

// prepareCreate validates opts and fills in what the backing file tells.
func prepareCreate(path string, opts *CreateOptions) error {
	if opts.Format == "" {
		opts.Format = FormatQcow2
	}
	if opts.Size < 0 {
		return fmt.Errorf("qcow2: creating %s: negative size %d", path, opts.Size)
	}
	switch opts.Preallocation {
	case "", PreallocOff, PreallocMetadata, PreallocFalloc, PreallocFull:
	default:
		return fmt.Errorf("qcow2: creating %s: preallocation %q (want off, metadata, falloc or full)", path, opts.Preallocation)
	}
	if opts.Format == FormatRaw && opts.Preallocation == PreallocMetadata {
		return fmt.Errorf("%w: creating %s: preallocation=metadata of a raw image (off, falloc or full)", ErrUnsupportedFeature, path)
	}
	if opts.BackingFile != "" && opts.UnsafeBacking && opts.Size == 0 {
		return fmt.Errorf("qcow2: creating %s: a size is needed when the backing file is not opened", path)
	}
	if opts.BackingFile != "" && !opts.UnsafeBacking {
		if opts.Format != FormatQcow2 {
			return fmt.Errorf("qcow2: creating %s: a %s image cannot have a backing file", path, opts.Format)
		}
		if err := checkRefName(opts.BackingFile); err != nil {
			return fmt.Errorf("%w: creating %s: backing file %q: %v", ErrRefused, path, opts.BackingFile, err)
		}
		bpath := combinePath(path, opts.BackingFile)
		b, err := Open(bpath, Options{Format: opts.BackingFormat, NoBacking: true, ForceShare: true})
		if err != nil {
			return fmt.Errorf("qcow2: creating %s: opening backing file: %w", path, err)
		}
		if opts.BackingFormat == "" {
			opts.BackingFormat = b.Format()
		}
		if opts.Size == 0 {
			opts.Size = b.Size()
		}
		b.Close()
	}
	return nil
}

// fillNew writes a new, empty image of opts into the empty file f, which
// can be reopened at reopen; path names the image in messages.
func fillNew(f *os.File, reopen, path string, opts *CreateOptions) error {
	switch opts.Format {
	case FormatRaw:
		if err := createRaw(f, opts); err != nil {
			return fmt.Errorf("qcow2: creating %s: %w", path, err)
		}
	case FormatQcow2:
		h, err := createHeader(opts)
		if err != nil {
			return fmt.Errorf("qcow2: creating %s: %w", path, err)
		}
		if err := writeEmptyQcow2(f, h); err != nil {
			return fmt.Errorf("qcow2: creating %s: %w", path, err)
		}
	default:
		return fmt.Errorf("%w: creating %s images", ErrUnsupportedFeature, opts.Format)
	}
	if opts.Format == FormatQcow2 && opts.Preallocation != "" && opts.Preallocation != PreallocOff {
		if err := preallocate(reopen, opts.Preallocation == PreallocFull, opts.Progress); err != nil {
			return fmt.Errorf("qcow2: creating %s: preallocating: %w", path, err)
		}
		if opts.Preallocation == PreallocFalloc {
			if err := reserveFile(f); err != nil {
				return fmt.Errorf("qcow2: creating %s: preallocation=falloc: %w", path, err)
			}
		}
	}
	return nil
}

// reserveFile reserves the blocks of all of f with fallocate (falloc
// preallocation). Blocks already written keep their data.
func reserveFile(f *os.File) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	return fallocate(f, fi.Size())
}

func createRaw(f *os.File, opts *CreateOptions) error {
	switch opts.Preallocation {
	case PreallocFalloc:
		if err := fallocate(f, opts.Size); err != nil {
			return fmt.Errorf("preallocation=falloc: %w", err)
		}
	case PreallocFull:
		buf := make([]byte, 1<<20)
		for off := int64(0); off < opts.Size; off += int64(len(buf)) {
			n := min(int64(len(buf)), opts.Size-off)
			if _, err := f.WriteAt(buf[:n], off); err != nil {
				return err
			}
			if opts.Progress != nil {
				opts.Progress(off+n, opts.Size)
			}
		}
	}
	return f.Truncate(opts.Size)
}

// createHeader validates the options and builds the header of the new
// image (tables not placed yet).
func createHeader(opts *CreateOptions) (*Header, error) {
	cs := opts.ClusterSize
	if cs == 0 {
		cs = defaultClusterSize
	}
	if cs < 1<<minClusterBits || cs > 1<<maxClusterBits || cs&(cs-1) != 0 {
		return nil, fmt.Errorf("cluster size %d must be a power of two between 512 and 2 MiB", cs)
	}
	h := &Header{ClusterBits: uint32(bits.TrailingZeros64(uint64(cs))), Size: uint64(opts.Size)}
	switch strings.ToLower(opts.Compat) {
	case "", "1.1", "v3", "3":
		h.Version = 3
		h.HeaderLength = 112
	case "0.10", "v2", "2":
		h.Version = 2
		h.HeaderLength = v2HeaderLength
	default:
		return nil, fmt.Errorf("compat %q (want 0.10 or 1.1)", opts.Compat)
	}
	v3only := func(what string) error {
		return fmt.Errorf("%s needs compat=1.1 (qcow2 version 3)", what)
	}
	rb := opts.RefcountBits
	if rb == 0 {
		rb = 16
	}
	if rb < 1 || rb > 64 || rb&(rb-1) != 0 {
		return nil, fmt.Errorf("refcount bits %d must be a power of two from 1 to 64", rb)
	}
	h.RefcountOrder = uint32(bits.TrailingZeros(uint(rb)))
	if h.Version == 2 && rb != 16 {
		return nil, v3only("refcount bits other than 16")
	}
	if opts.ExtendedL2 {
		if h.Version == 2 {
			return nil, v3only("extended L2")
		}
		if cs < 16<<10 {
			return nil, fmt.Errorf("extended L2 needs a cluster size of at least 16 KiB, not %d", cs)
		}
		h.IncompatibleFeatures |= IncompatExtendedL2
	}
	switch strings.ToLower(opts.CompressionType) {
	case "", "zlib", "deflate":
	case "zstd":
		if h.Version == 2 {
			return nil, v3only("zstd compression")
		}
		h.CompressionType = CompressionZstd
		h.IncompatibleFeatures |= IncompatCompressionType
	default:
		return nil, fmt.Errorf("compression type %q (want zlib or zstd)", opts.CompressionType)
	}
	if opts.LazyRefcounts {
		if h.Version == 2 {
			return nil, v3only("lazy refcounts")
		}
		h.CompatibleFeatures |= CompatLazyRefcounts
	}
	if opts.BackingFile != "" {
		if len(opts.BackingFile) > maxBackingNameSize {
			return nil, fmt.Errorf("backing file name longer than %d bytes", maxBackingNameSize)
		}
		if err := checkRefName(opts.BackingFile); err != nil {
			return nil, fmt.Errorf("backing file %q: %v", opts.BackingFile, err)
		}
		h.BackingFile = opts.BackingFile
		if opts.BackingFormat != "" {
			h.BackingFormat = string(opts.BackingFormat)
			h.Extensions = append(h.Extensions, Extension{Type: ExtBackingFormat, Data: []byte(opts.BackingFormat)})
		}
		if opts.Preallocation != "" && opts.Preallocation != PreallocOff && !opts.ExtendedL2 {
			return nil, fmt.Errorf("backing file and preallocation can only be used together with extended L2")
		}
	}
	l2Entries := h.L2Entries()
	clusters := (opts.Size + cs - 1) / cs
	l1Size := (clusters + l2Entries - 1) / l2Entries
	if l1Size*8 > maxL1Size {
		return nil, fmt.Errorf("image size %d needs an L1 table over %d MiB; use a larger cluster size", opts.Size, maxL1Size>>20)
	}
	h.L1Size = uint32(l1Size)
	return h, nil
}

// writeEmptyQcow2 lays out header, refcount table, refcount block and L1
// table, as qemu-img does, and writes them.
func writeEmptyQcow2(f *os.File, h *Header) error {
	st := osStorage{f}
	cs := h.ClusterSize()
	rc := &refcounts{
		st:       st,
		path:     f.Name(),
		cb:       h.ClusterBits,
		cs:       cs,
		order:    h.RefcountOrder,
		maxVal:   refcountMax(h.RefcountOrder),
		perBlock: cs * 8 >> h.RefcountOrder,
		blocks:   map[int64]*refBlock{},
		tableOff: cs,
		table:    make([]uint64, cs/8),
	}
	// Cluster 0: header; 1: refcount table; 2: first refcount block.
	rc.blocks[0] = &refBlock{data: make([]byte, cs), dirty: true}
	rc.table[0] = uint64(2 * cs)
	rc.tableDirty = true
	for c := range int64(3) {
		b, err := rc.ensureBlock(c / rc.perBlock)
		if err != nil {
			return err
		}
		rc.setIn(b, c%rc.perBlock, 1)
		rc.end = c + 1
	}
	l1Bytes := int64(h.L1Size) * 8
	if l1Bytes > 0 {
		off, err := rc.alloc((l1Bytes + cs - 1) / cs)
		if err != nil {
			return err
		}
		h.L1TableOffset = uint64(off)
		if err := writeFull(st, make([]byte, (l1Bytes+cs-1)/cs*cs), off); err != nil {
			return err
		}
	}
	if _, err := rc.writeBlocks(); err != nil {
		return err
	}
	if _, err := rc.writeTable(); err != nil {
		return err
	}
	h.RefcountTableOffset = uint64(rc.tableOff)
	h.RefcountTableClusters = uint32(rc.tableClusters())
	buf, err := h.MarshalBinary()
	if err != nil {
		return err
	}
	if err := writeFull(st, buf, 0); err != nil {
		return err
	}
	// Like qemu-img, the file ends right after the last table.
	return nil
}

// preallocate opens the new image and allocates every L2 table and data
// cluster (full: data clusters are written with zeros, and progress, if
// set, hears of it).
func preallocate(path string, full bool, progress func(done, total int64)) error {
	img, err := Open(path, Options{Format: FormatQcow2, Writable: true, NoBacking: true})
	if err != nil {
		return err
	}
	perr := img.w.preallocate(full, progress)
	if err := img.Close(); perr == nil {
		perr = err
	}
	return perr
}

func (w *writer) preallocate(full bool, progress func(done, total int64)) error {
	img := w.img
	w.lockAll()
	defer w.unlockAll()
	clusters := (img.size + w.cs() - 1) >> w.cb()
	perTable := int64(1) << img.l2Bits
	backing := img.hdr.BackingFile != ""
	var end int64
	for first := int64(0); first < clusters; first += perTable {
		n := min(perTable, clusters-first)
		l1i := first >> img.l2Bits
		t, err := w.writableL2(l1i)
		if err != nil {
			return err
		}
		host, err := w.rc.alloc(n)
		if err != nil {
			return err
		}
		for i := range n {
			k := i * w.entryWords()
			t.entries[k] = uint64(dataEntry(host + i*w.cs()))
			if img.extL2 {
				if backing {
					t.entries[k+1] = 0
				} else {
					t.entries[k+1] = bitmapAllocMask
				}
			}
		}
		w.publishL2(l1i, t)
		end = max(end, host+n*w.cs())
		if full {
			zero := make([]byte, min(n*w.cs(), 4<<20))
			for off := host; off < host+n*w.cs(); off += int64(len(zero)) {
				k := min(int64(len(zero)), host+n*w.cs()-off)
				if err := writeFull(w.st, zero[:k], off); err != nil {
					return err
				}
			}
			if progress != nil {
				progress(min((first+n)*w.cs(), img.size), img.size)
			}
		}
		w.dataWritten = true
		if err := w.maybeFlush(); err != nil {
			return err
		}
	}
	if sz, err := w.st.Size(); err == nil && sz < end {
		if err := w.st.Truncate(end); err != nil {
			return err
		}
	}
	return w.flushLocked()
}
