// Package qcow2 reads and writes qcow2 disk images and backing chains as
// QEMU does, and reads raw images through the same entry point.
//
// Open parses an image's metadata and opens its backing chain. The
// returned *Image is an io.ReaderAt over the guest-visible content of the
// whole chain; Extents describes how each byte range is stored, and Info
// reports what `qemu-img info` reports.
//
// Create makes new images. Opened with Options.Writable, an Image is also
// an io.WriterAt (with Flush, WriteZeroes and Discard): writes allocate
// clusters and copy the rest of a cluster from the backing chain, and
// metadata reaches the disk in QEMU's order, so that a crash can only
// leak clusters. A raw image opened writable is written in place, as by
// QEMU's raw driver: it does not grow on write, WriteZeroes and Discard
// punch holes, and Resize truncates the file. Check and CheckFile compare refcounts with references
// like qemu-img check and repair them; CreateSnapshot, ApplySnapshot,
// DeleteSnapshot and Resize change the image as qemu-img snapshot and
// resize do. Opening takes QEMU-compatible image locks.
package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
)

// Format names an image format.
type Format string

// Formats Open understands.
const (
	FormatQcow2 Format = "qcow2"
	FormatRaw   Format = "raw"
)

// DefaultMaxChainDepth is the backing chain limit when
// Options.MaxChainDepth is 0.
const DefaultMaxChainDepth = 64

// Options configures Open. The zero value opens a qcow2 or raw image
// (probed) with its whole backing chain, default cache size and depth
// limit, and follows local backing files.
type Options struct {
	// Format of the image: "" probes (qcow2 magic, else raw), "qcow2" or
	// "raw" force it.
	Format Format
	// NoBacking opens only this image, not its backing file: metadata is
	// complete (Info reports the backing name), and ranges the image does
	// not allocate read as zeros. qemu-img info works this way.
	NoBacking bool
	// MaxChainDepth limits how many backing files may be opened below
	// the image. 0 means DefaultMaxChainDepth (64).
	MaxChainDepth int
	// L2CacheSize is the memory, in bytes, the decoded L2 tables of each
	// image may use. 0 means DefaultL2CacheSize (32 MiB, 256 GiB of guest
	// at 64 KiB clusters).
	L2CacheSize int64
	// CheckReference, if set, is called before a backing file is opened
	// and may refuse it by returning an error. json: and protocol names
	// (nbd:, http://, ...) are refused before it is asked.
	CheckReference func(Reference) error
	// OpenBacking, if set, opens backing files instead of the local file
	// system: it gets the reference (after CheckReference accepted it)
	// and returns the file's bytes and size. The image closes the reader
	// when it is closed, if it is an io.Closer. Images opened with
	// OpenReaderAt need it to open a backing file at all. Default nil:
	// backing files are local files.
	OpenBacking func(Reference) (io.ReaderAt, int64, error)
	// Writable opens the top image for writing (WriteAt, Flush,
	// WriteZeroes, Discard, snapshots, resize; a raw image has no
	// snapshots), taking QEMU's writer lock on it. Backing images stay
	// read-only. Default false: read-only.
	Writable bool
	// ForceShare skips image locking (qemu-img -U): reads proceed even
	// while another process writes the image. Default false: take
	// QEMU-compatible locks (reader on every image of the chain, writer
	// on a writable top image).
	ForceShare bool

	// cache is the -t mode of a writable open (Commit, Rebase).
	cache CacheMode
}

// Reference is an external file an image points at.
type Reference struct {
	Kind  string // "backing"
	Image string // the image that names it
	Name  string // the name as stored in the image
	Path  string // Name resolved against the directory of Image
}

func (o *Options) validate() error {
	switch o.Format {
	case "", FormatQcow2, FormatRaw:
	default:
		return fmt.Errorf("%w: image format %q (qcow2 and raw are supported)", ErrUnsupportedFeature, o.Format)
	}
	if o.MaxChainDepth < 0 {
		return fmt.Errorf("qcow2: MaxChainDepth %d is negative", o.MaxChainDepth)
	}
	if o.L2CacheSize < 0 {
		return fmt.Errorf("qcow2: L2CacheSize %d is negative", o.L2CacheSize)
	}
	return nil
}

// Image is an open qcow2 or raw image together with its backing chain.
//
// Lifecycle: Open returns it, the caller calls Close once, which closes the
// whole chain (and, for a writable image, flushes it first). Concurrency:
// after Open, ReadAt, WriteAt, Flush, Extents and Info are safe for
// concurrent use; writes to different clusters do their data I/O in
// parallel. WriteZeroes and Discard wait for and exclude other writes.
// CreateSnapshot, ApplySnapshot, DeleteSnapshot, Resize and Check rewrite
// tables: they exclude writes, and the caller must not read concurrently.
// A writable raw image runs WriteAt, WriteZeroes, Discard and Flush
// concurrently (overlapping ranges land in an unspecified order); Resize
// excludes them.
type Image struct {
	path     string
	f        *os.File    // the image file; nil when opened by OpenReaderAt
	r        io.ReaderAt // what reads go to: f, or the reader given to OpenReaderAt
	closer   io.Closer   // closed with the image (OpenBacking's reader), or nil
	format   Format
	fileSize int64
	span     spanCache // the last data or hole run of the file found (hostSpans)
	size     int64     // guest size
	hdr      *Header

	// qcow2 geometry
	clusterBits  uint32
	clusterSize  int64
	l2Bits       uint32 // log2 of entries per L2 table
	l2Mask       int64
	extL2        bool
	scBits       uint32 // log2 of subcluster size (cluster size without extended L2)
	l1           []uint64
	l2           *l2Cache
	snapshots    []Snapshot
	compression  uint8
	unreadable   error // why guest content cannot be read, or nil
	backing      *Image
	backingPath  string // resolved backing name (qemu's full-backing-filename)
	backingFmt   Format
	depth        int // 0 for the top image
	decompressor *decompressor
	w            *writer    // qcow2 write state (write.go); nil unless Options.Writable
	rw           *rawWriter // raw write state (raw_write.go); nil unless Options.Writable

	refOnce   sync.Once
	refErr    error
	refTable  []uint64
	preOnce   sync.Once
	prealloc  bool // QEMU's metadata preallocation heuristic
	closeOnce sync.Once
}

var (
	_ io.ReaderAt = (*Image)(nil)
	_ io.Closer   = (*Image)(nil)
)

// Open opens the image at path and, unless opts.NoBacking, its backing
// chain.
func Open(path string, opts Options) (*Image, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	st := &chainState{opts: opts, maxDepth: opts.MaxChainDepth}
	if st.maxDepth == 0 {
		st.maxDepth = DefaultMaxChainDepth
	}
	img, err := st.open(path, opts.Format, 0, nil, 0)
	if err != nil {
		return nil, err
	}
	if err := img.afterOpen(&opts); err != nil {
		img.Close()
		return nil, err
	}
	return img, nil
}

// OpenReaderAt opens the image whose bytes r holds (size bytes), named
// name in messages and in the References its backing names resolve
// against, and, unless opts.NoBacking, its backing chain through
// opts.OpenBacking (an image with a backing file and no OpenBacking is
// refused: names read from r never reach the local file system). The
// image is read-only and takes no locks; r must be safe for concurrent
// ReadAt calls. If r is an io.Closer, closing the image closes it (as
// it does OpenBacking's readers); when OpenReaderAt fails, r stays the
// caller's to close.
func OpenReaderAt(name string, r io.ReaderAt, size int64, opts Options) (*Image, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	if opts.Writable {
		return nil, fmt.Errorf("qcow2: %s: an image opened from a reader cannot be written", name)
	}
	if size < 0 {
		return nil, fmt.Errorf("qcow2: %s: size %d is negative", name, size)
	}
	st := &chainState{opts: opts, maxDepth: opts.MaxChainDepth}
	if st.maxDepth == 0 {
		st.maxDepth = DefaultMaxChainDepth
	}
	img, err := st.open(name, opts.Format, 0, r, size)
	if err != nil {
		return nil, err
	}
	if c, ok := r.(io.Closer); ok {
		img.closer = c
	}
	return img, nil
}

// openFile opens one image file without its backing file.
func openFile(path string, format Format, opts *Options) (*Image, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("qcow2: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("qcow2: %w", err)
	}
	if fi.IsDir() {
		f.Close()
		return nil, fmt.Errorf("qcow2: %s is a directory", path)
	}
	img, err := newImage(path, f, fi.Size(), format, opts)
	if err != nil {
		f.Close()
		return nil, err
	}
	img.f = f
	return img, nil
}

// newImage parses the image in r (size bytes) without its backing file.
func newImage(path string, r io.ReaderAt, size int64, format Format, opts *Options) (*Image, error) {
	img := &Image{path: path, r: r, fileSize: size}
	if format == "" {
		var magic [4]byte
		n, err := r.ReadAt(magic[:], 0)
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("qcow2: probing %s: %w", path, err)
		}
		format = FormatRaw
		if n == 4 && string(magic[:]) == Magic {
			format = FormatQcow2
		}
	}
	img.format = format
	switch format {
	case FormatRaw:
		// QEMU rounds a raw image up to whole 512-byte sectors.
		img.size = (img.fileSize + 511) &^ 511
		return img, nil
	case FormatQcow2:
		if err := img.openQcow2(opts); err != nil {
			return nil, err
		}
		return img, nil
	}
	return nil, fmt.Errorf("%w: image format %q", ErrUnsupportedFeature, format)
}

func (img *Image) openQcow2(opts *Options) error {
	// The header, its extensions and the backing name live in cluster 0,
	// which is at most 2 MiB. Read the first 4 KiB, then the rest of the
	// cluster its header names (reads of a remote image stay small).
	n := min(img.fileSize, 4096)
	buf := make([]byte, n)
	if _, err := img.r.ReadAt(buf, 0); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("qcow2: reading header of %s: %w", img.path, err)
	}
	if len(buf) >= 24 {
		if bits := binary.BigEndian.Uint32(buf[20:]); bits >= minClusterBits && bits <= maxClusterBits && int64(1)<<bits > n {
			more := make([]byte, min(img.fileSize, int64(1)<<bits))
			copy(more, buf)
			if _, err := img.r.ReadAt(more[n:], n); err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("qcow2: reading header of %s: %w", img.path, err)
			}
			buf = more
		}
	}
	h, err := parseHeader(img.path, buf, img.fileSize)
	if err != nil {
		return err
	}
	img.hdr = h
	img.size = int64(h.Size)
	img.clusterBits = h.ClusterBits
	img.clusterSize = h.ClusterSize()
	img.extL2 = h.ExtendedL2()
	entryBits := uint32(3)
	if img.extL2 {
		entryBits = 4
	}
	img.l2Bits = h.ClusterBits - entryBits
	img.l2Mask = 1<<img.l2Bits - 1
	img.scBits = h.ClusterBits
	if img.extL2 {
		img.scBits = h.ClusterBits - 5
	}
	img.compression = h.CompressionType
	switch {
	case h.CryptMethod == CryptAES:
		img.unreadable = fmt.Errorf("%w: %s is encrypted with the legacy AES method", ErrCannotRead, img.path)
	case h.CryptMethod == CryptLUKS:
		img.unreadable = fmt.Errorf("%w: %s is LUKS encrypted", ErrCannotRead, img.path)
	case h.IncompatibleFeatures&IncompatDataFile != 0:
		name := h.DataFile
		if name == "" {
			name = "(not named in the image)"
		}
		img.unreadable = fmt.Errorf("%w: %s keeps its data in the external data file %s", ErrCannotRead, img.path, name)
	}
	// Active L1 table (size checked against the 32 MiB limit and the file).
	raw := make([]byte, int64(h.L1Size)*8)
	if _, err := img.r.ReadAt(raw, int64(h.L1TableOffset)); err != nil {
		return fmt.Errorf("qcow2: reading L1 table of %s: %w", img.path, err)
	}
	img.l1 = decodeTable(raw)
	img.l2 = newL2Cache(len(img.l1), img.clusterSize, opts.L2CacheSize)
	if err := img.loadSnapshots(); err != nil {
		return err
	}
	img.decompressor = newDecompressor(img.compression, img.clusterSize)
	return nil
}

// Path returns the file name the image was opened with.
func (img *Image) Path() string { return img.path }

// Format returns the image format, qcow2 or raw.
func (img *Image) Format() Format { return img.format }

// Size returns the guest-visible size in bytes.
func (img *Image) Size() int64 { return img.size }

// Header returns the parsed qcow2 header, or nil for a raw image. The
// caller must not modify it.
func (img *Image) Header() *Header { return img.hdr }

// Backing returns the open backing image, or nil when there is none or
// it was not opened (Options.NoBacking).
func (img *Image) Backing() *Image { return img.backing }

// Layer returns the image at depth d of the chain (0 is img itself), or
// nil.
func (img *Image) Layer(d int) *Image {
	for l := img; l != nil; l = l.backing {
		if d == 0 {
			return l
		}
		d--
	}
	return nil
}

// ClusterSize returns the cluster size, or 0 for a raw image.
func (img *Image) ClusterSize() int64 { return img.clusterSize }

// Readable returns nil if guest content of the whole chain can be read,
// else an error matching ErrCannotRead whose text is
// "qcow2: cannot read content: <reason>".
func (img *Image) Readable() error {
	for l := img; l != nil; l = l.backing {
		if l.unreadable != nil {
			return l.unreadable
		}
	}
	return nil
}

// Close closes the image and its backing chain.
func (img *Image) Close() error {
	var err error
	img.closeOnce.Do(func() {
		err = img.closeWriter()
		for l := img; l != nil; l = l.backing {
			if l.f != nil {
				if e := l.f.Close(); e != nil && err == nil {
					err = e
				}
			}
			if l.closer != nil {
				if e := l.closer.Close(); e != nil && err == nil {
					err = e
				}
			}
			if l.decompressor != nil {
				l.decompressor.close()
			}
		}
	})
	return err
}
