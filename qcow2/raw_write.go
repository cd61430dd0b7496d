package qcow2

import (
	"errors"
	"fmt"
	"math"
	"os"
	"sync"
	"sync/atomic"
)

// rawWriter is the write half of a raw Image opened with
// Options.Writable, as QEMU's raw driver: guest offsets are file offsets,
// and the image does not grow on write.
//
// Locking: f is a read-write descriptor of the image file holding QEMU's
// writer lock (unless Options.ForceShare); the lock goes with the
// descriptor when Close closes it. ops is held shared by WriteAt,
// WriteZeroes, Discard and Flush, which the kernel orders among
// themselves, and exclusively by Resize and Close.
type rawWriter struct {
	f    *os.File
	path string
	// dw writes aligned blocks with O_DIRECT under cache mode none;
	// noSync skips fsyncs (cache mode unsafe).
	dw     directWriter
	noSync bool

	ops    sync.RWMutex
	closed bool // guarded by ops

	// fileSize is the size of the file, which a write into the last,
	// partial sector (Size is rounded up to 512 bytes) extends. Reads
	// take bytes past it as zeros.
	fileSize atomic.Int64
	// noPunch: the file system refused to punch holes; zeroes are
	// written instead.
	noPunch atomic.Bool
}

// openRawWriter makes the raw image img writable: it opens the file
// read-write and takes QEMU's writer lock unless opts.ForceShare.
func (img *Image) openRawWriter(opts *Options) error {
	f, err := img.openForWriting(opts)
	if err != nil {
		return err
	}
	// The size as of now, under the lock (the file may have changed
	// since it was probed).
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("qcow2: %w", err)
	}
	size := fi.Size()
	rw := &rawWriter{f: f, path: img.path, dw: directWriter{f: f}, noSync: opts.cache.noSync()}
	if opts.cache.direct() {
		if rw.dw.d, err = openDirect(f, img.path); err != nil {
			f.Close()
			return err
		}
	}
	rw.fileSize.Store(size)
	img.fileSize = size
	img.size = rawGuestSize(size)
	img.rw = rw
	return nil
}

// rawGuestSize is the guest size of a raw file of n bytes: QEMU rounds it
// up to whole 512-byte sectors.
func rawGuestSize(n int64) int64 {
	if n > math.MaxInt64-511 {
		return math.MaxInt64 &^ 511
	}
	return (n + 511) &^ 511
}

// usable reports ErrClosed after Close; ops is held.
func (rw *rawWriter) usable() error {
	if rw.closed {
		return ErrClosed
	}
	return nil
}

// writeAt writes p at guest (= file) offset off, inside the image.
func (rw *rawWriter) writeAt(img *Image, p []byte, off int64) (int, error) {
	rw.ops.RLock()
	defer rw.ops.RUnlock()
	if err := rw.usable(); err != nil {
		return 0, err
	}
	if off < 0 || off > img.size || int64(len(p)) > img.size-off {
		return 0, fmt.Errorf("qcow2: %s: write of %d bytes at %d is outside the image (%d bytes)", img.path, len(p), off, img.size)
	}
	n, err := rw.dw.WriteAt(p, off)
	if n > 0 {
		rw.grewTo(off + int64(n))
	}
	if err != nil {
		return n, fmt.Errorf("qcow2: writing %s at %#x: %w", img.path, off+int64(n), err)
	}
	return n, nil
}

// grewTo records that the file now reaches at least end.
func (rw *rawWriter) grewTo(end int64) {
	for {
		cur := rw.fileSize.Load()
		if end <= cur || rw.fileSize.CompareAndSwap(cur, end) {
			return
		}
	}
}

// zeroOrDiscard implements WriteZeroes and Discard. Both punch a hole,
// which reads as zeros; where the file system cannot, WriteZeroes writes
// zeros and Discard does nothing (QEMU's raw discard is advisory too).
// Bytes past the end of the file (in the last, partial sector) already
// read as zeros and are left alone.
func (rw *rawWriter) zeroOrDiscard(img *Image, off, n int64, discard bool) error {
	rw.ops.RLock()
	defer rw.ops.RUnlock()
	if err := rw.usable(); err != nil {
		return err
	}
	if off < 0 || n < 0 || off > img.size || n > img.size-off {
		return fmt.Errorf("qcow2: %s: range %d+%d is outside the image (%d bytes)", img.path, off, n, img.size)
	}
	n = min(n, rw.fileSize.Load()-off)
	if n <= 0 {
		return nil
	}
	if !rw.noPunch.Load() {
		err := punchHole(rw.f, off, n)
		if err == nil {
			return nil
		}
		if !errors.Is(err, errors.ErrUnsupported) {
			return fmt.Errorf("qcow2: %s: punching a hole at %#x+%d: %w", img.path, off, n, err)
		}
		rw.noPunch.Store(true)
	}
	if discard {
		return nil
	}
	zero := make([]byte, min(n, 1<<20))
	for n > 0 {
		k := min(n, int64(len(zero)))
		if _, err := rw.f.WriteAt(zero[:k], off); err != nil {
			return fmt.Errorf("qcow2: writing zeros to %s at %#x: %w", img.path, off, err)
		}
		off += k
		n -= k
	}
	return nil
}

// flush makes completed writes durable.
func (rw *rawWriter) flush() error {
	rw.ops.RLock()
	defer rw.ops.RUnlock()
	if err := rw.usable(); err != nil {
		return err
	}
	return rw.sync()
}

func (rw *rawWriter) sync() error {
	if rw.noSync {
		return nil
	}
	if err := rw.f.Sync(); err != nil {
		return fmt.Errorf("qcow2: syncing %s: %w", rw.path, err)
	}
	return nil
}

// resize truncates the file to size bytes (shrinking needs shrink) and
// syncs; Size then reports size rounded up to 512 bytes, as a new Open
// would.
func (rw *rawWriter) resize(img *Image, size int64, shrink bool) error {
	if size < 0 {
		return fmt.Errorf("qcow2: %s: negative size %d", img.path, size)
	}
	rw.ops.Lock()
	defer rw.ops.Unlock()
	if err := rw.usable(); err != nil {
		return err
	}
	if size < img.size && !shrink {
		return fmt.Errorf("qcow2: %s: shrinking from %d to %d bytes needs the shrink option", img.path, img.size, size)
	}
	if err := rw.f.Truncate(size); err != nil {
		return fmt.Errorf("qcow2: resizing %s: %w", img.path, err)
	}
	rw.fileSize.Store(size)
	img.fileSize = size
	img.size = rawGuestSize(size)
	return rw.sync()
}

// close syncs and closes the descriptor, which releases the lock. Later
// calls do nothing.
func (rw *rawWriter) close() error {
	rw.ops.Lock()
	defer rw.ops.Unlock()
	if rw.closed {
		return nil
	}
	rw.closed = true
	err := rw.sync()
	if rw.dw.d != nil {
		rw.dw.d.Close()
	}
	if cerr := rw.f.Close(); cerr != nil && err == nil {
		err = cerr
	}
	return err
}
