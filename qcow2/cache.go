package qcow2

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/imgtool/imgtool/internal/atomicfile"
)

// CacheMode is qemu-img's -t: how an image being written is cached and
// made durable. The zero value is CacheWriteback.
type CacheMode string

const (
	// CacheWriteback (the default) writes through the page cache and
	// fsyncs before the result counts as done: a new file is put in place
	// only once synced, metadata updates are ordered by fsync.
	CacheWriteback CacheMode = "writeback"
	// CacheWritethrough is CacheWriteback here (every commit point is
	// already synced).
	CacheWritethrough CacheMode = "writethrough"
	// CacheNone writes whole aligned blocks with O_DIRECT, bypassing the
	// page cache, and still fsyncs (as qemu's none flushes). Writes that
	// are not block-aligned (metadata, compressed clusters) go through
	// the page cache and are synced with the rest. A filesystem that
	// refuses O_DIRECT is an error, as in qemu-img.
	CacheNone CacheMode = "none"
	// CacheDirectsync is CacheNone.
	CacheDirectsync CacheMode = "directsync"
	// CacheUnsafe skips every fsync (qemu-img convert's own default): a
	// crash may lose the new data; a killed process still leaves no
	// partial new file (see internal/atomicfile).
	CacheUnsafe CacheMode = "unsafe"
)

// ParseCacheMode returns the CacheMode named s, one of qemu's cache
// option names (what qemu-img -t takes); "" is CacheWriteback.
func ParseCacheMode(s string) (CacheMode, error) {
	switch c := CacheMode(s); c {
	case "":
		return CacheWriteback, nil
	case CacheWriteback, CacheWritethrough, CacheNone, CacheDirectsync, CacheUnsafe:
		return c, nil
	}
	return "", fmt.Errorf("qcow2: invalid cache option %q (want writeback, writethrough, none, directsync or unsafe)", s)
}

func (c CacheMode) valid() error {
	_, err := ParseCacheMode(string(c))
	return err
}

// noSync reports whether fsyncs are skipped.
func (c CacheMode) noSync() bool { return c == CacheUnsafe }

// direct reports whether aligned writes use O_DIRECT.
func (c CacheMode) direct() bool { return c == CacheNone || c == CacheDirectsync }

// sync is the atomicfile policy of a new file.
func (c CacheMode) sync() atomicfile.Sync {
	if c.noSync() {
		return atomicfile.NoSync
	}
	return atomicfile.Durable
}

// directAlign is the alignment of O_DIRECT writes: offset, length and
// buffer address. 4 KiB satisfies every logical block size in use.
const directAlign = 4096

// openDirect opens a second descriptor of f with O_DIRECT (through
// /proc/self/fd, so it works for unnamed temp files too). name is for
// messages.
func openDirect(f *os.File, name string) (*os.File, error) {
	d, err := openDirectFn("/proc/self/fd/"+strconv.Itoa(int(f.Fd())), name)
	if err != nil {
		if errors.Is(err, syscall.EINVAL) {
			return nil, fmt.Errorf("%w: Could not open '%s': %v", ErrNoDirectIO, filepath.Clean(name), err)
		}
		return nil, fmt.Errorf("qcow2: opening %s with O_DIRECT: %w", name, err)
	}
	return d, nil
}

// openDirectFn is replaced by tests to act as a filesystem without
// O_DIRECT.
var openDirectFn = func(path, name string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}

// aligned reports whether p at off may be written with O_DIRECT.
func aligned(p []byte, off int64) bool {
	return len(p) > 0 && off%directAlign == 0 && len(p)%directAlign == 0 &&
		uintptr(unsafe.Pointer(unsafe.SliceData(p)))%directAlign == 0
}

// directWriter writes aligned blocks through an O_DIRECT descriptor and
// everything else through the ordinary one.
type directWriter struct{ f, d *os.File }

func (w directWriter) WriteAt(p []byte, off int64) (int, error) {
	if w.d != nil && aligned(p, off) {
		return w.d.WriteAt(p, off)
	}
	return w.f.WriteAt(p, off)
}

// createOutput creates the temporary file of a new image at dst (see
// internal/atomicfile) and, under cache mode none, its O_DIRECT
// descriptor. The caller defers tmp.Abort and out.close.
func createOutput(dst string, cache CacheMode) (tmp *atomicfile.File, out directWriter, err error) {
	tmp, err = atomicfile.Create(dst, atomicfile.Options{Sync: cache.sync()})
	if err != nil {
		return nil, directWriter{}, err
	}
	out = directWriter{f: tmp.File}
	if cache.direct() {
		if out.d, err = openDirect(tmp.File, dst); err != nil {
			tmp.Abort()
			return nil, directWriter{}, err
		}
	}
	return tmp, out, nil
}

// close closes the O_DIRECT descriptor, if any (the ordinary one is the
// caller's).
func (w directWriter) close() {
	if w.d != nil {
		w.d.Close()
	}
}

// pick returns the descriptor for a vectored write of bufs at off.
func (w directWriter) pick(bufs [][]byte, off int64) *os.File {
	if w.d == nil {
		return w.f
	}
	for _, b := range bufs {
		if !aligned(b, off) {
			return w.f
		}
		off += int64(len(b))
	}
	return w.d
}

// cachedStorage is an image file's storage under a cache mode: aligned
// writes with O_DIRECT for none, no fsync for unsafe.
type cachedStorage struct {
	osStorage
	dw     directWriter
	noSync bool
}

func (s cachedStorage) WriteAt(p []byte, off int64) (int, error) { return s.dw.WriteAt(p, off) }

func (s cachedStorage) Sync() error {
	if s.noSync {
		return nil
	}
	return s.osStorage.Sync()
}

func (s cachedStorage) Close() error {
	if s.dw.d != nil {
		s.dw.d.Close()
	}
	return s.osStorage.Close()
}
