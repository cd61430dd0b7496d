package qcow2

import (
	"context"
	"fmt"
	"os"

	"github.com/imgtool/imgtool/internal/zero"
)

// convertRaw is Convert to a new raw image.
func convertRaw(ctx context.Context, src *Image, dst string, opts ConvertOptions) (err error) {
	tmp, out, err := createOutput(dst, opts.Cache)
	if err != nil {
		return err
	}
	defer tmp.Abort()
	defer out.close()
	size := src.Size()
	if err := tmp.Truncate(size); err != nil {
		return fmt.Errorf("qcow2: convert: %w", err)
	}
	zeroFill := false
	if opts.Create.Preallocation == PreallocFalloc {
		// Reserved, not written: zeros of the source stay unwritten.
		if err := fallocate(tmp.File, size); err != nil {
			return fmt.Errorf("qcow2: convert to %s: preallocation=falloc: %w", dst, err)
		}
	}
	if opts.NoSparse {
		// Reserved blocks read as zeros, so data can still skip its
		// zero blocks; without fallocate, every zero is written.
		zeroFill = fallocate(tmp.File, size) != nil
	}
	// copy_file_range where zeros need not be found: -C (as qemu-img),
	// or -S 0 onto reserved blocks. Not under O_DIRECT.
	var copyTo *os.File
	if (opts.CopyOffload || opts.NoSparse && !zeroFill) && out.d == nil {
		copyTo = tmp.File
	}
	if err := convertInto(ctx, src, out, opts, zeroFill, copyTo); err != nil {
		return err
	}
	if err := checkUnshrunk(src); err != nil {
		return err
	}
	return tmp.Commit()
}

// chunk is one unit of convert work: guest bytes to copy. host >= 0 is
// where they lie, uncompressed and contiguous, in the file of img (an
// image of src's chain), read there with one pread; zeroChunk marks a
// range to fill with zeros.
type chunk struct {
	off, n, host int64
	img          *Image
}

const zeroChunk = -2

// zeroBuf clears b and returns it.
func zeroBuf(b []byte) []byte {
	clear(b)
	return b
}

// writeDense writes b at off in full, zeros included.
func writeDense(w interface {
	WriteAt([]byte, int64) (int, error)
}, b []byte, off int64) error {
	_, err := w.WriteAt(b, off)
	return err
}

// convertInto copies the allocated content of src into w (already sized)
// with parallel workers. zeroFill writes zeros over the ranges that read
// as zeros too, instead of leaving holes. copyTo, if not nil, is w's
// file: uncompressed runs in a host file are then copied into it with
// copy_file_range (no zero detection, as qemu-img -C), where the kernel
// can.
func convertInto(ctx context.Context, src *Image, w interface {
	WriteAt([]byte, int64) (int, error)
}, opts ConvertOptions, zeroFill bool, copyTo *os.File) error {
	size := src.Size()

	advance := newProgressMeter(opts.Progress, size).add

	// Uncompressed data of the chain's files (of a raw image: all of it)
	// is read from them with one pread per chunk (up to ChunkSize),
	// bypassing the mapping; no mmap, so memory stays at Workers chunk
	// buffers whatever the image size (directAt says which images of
	// the chain can). Host ranges that are holes in the file are not
	// read at all.
	block := opts.SparseSize
	if block <= 0 {
		block = sparseBlock
	}
	write := func(b []byte, off int64) error {
		return writeSparse(w, b, off, block)
	}
	if zeroFill {
		write = func(b []byte, off int64) error { return writeDense(w, b, off) }
	}
	worker := func() func(chunk) error {
		buf := make([]byte, opts.ChunkSize)
		canCopy := copyTo != nil
		return func(c chunk) error {
			if c.host == zeroChunk {
				if err := writeDense(w, zeroBuf(buf[:c.n]), c.off); err != nil {
					return fmt.Errorf("qcow2: convert: %w", err)
				}
				advance(c.n)
				return nil
			}
			if c.host < 0 {
				b := buf[:c.n]
				if _, err := src.ReadAt(b, c.off); err != nil {
					return err
				}
				if err := write(b, c.off); err != nil {
					return fmt.Errorf("qcow2: convert: %w", err)
				}
				advance(c.n)
				return nil
			}
			// A run of one host file: its holes need no read (a raw
			// image's extents are its data already).
			delta := c.off - c.host
			err := c.img.hostSpans(c.host, c.n, c.img.format != FormatRaw, func(h, n int64, data bool) error {
				off := h + delta
				if !data {
					if zeroFill {
						if err := writeDense(w, zeroBuf(buf[:n]), off); err != nil {
							return fmt.Errorf("qcow2: convert: %w", err)
						}
					}
					return nil // else already a hole in the output
				}
				if canCopy {
					done, err := copyFileRange(copyTo, c.img.f, off, h, n)
					if err != nil {
						return err
					}
					if done == n {
						return nil
					}
					if done > 0 {
						return c.img.readHost(buf[:1], h+done) // short: changed under us, or past EOF
					}
					canCopy = false // not across these files: read and write from now on
				}
				b := buf[:n]
				if err := c.img.readHost(b, h); err != nil {
					return err
				}
				if err := write(b, off); err != nil {
					return fmt.Errorf("qcow2: convert: %w", err)
				}
				return nil
			})
			if err != nil {
				return err
			}
			advance(c.n)
			return nil
		}
	}
	// Walk the extents and cut data into chunks aligned to ChunkSize.
	return runPool(ctx, opts.Workers, worker, func(ctx context.Context, emit func(chunk) error) error {
		return src.WalkExtents(0, size, func(e Extent) error {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			data := e.Kind == KindData || e.Kind == KindCompressed
			if !data && !zeroFill {
				advance(e.Length)
				return nil
			}
			var img *Image
			if e.Kind == KindData && e.HostOffset >= 0 {
				img = directAt(src, e.Depth)
			}
			for off, end := e.Start, e.Start+e.Length; off < end; {
				next := min(end, (off/opts.ChunkSize+1)*opts.ChunkSize)
				c := chunk{off: off, n: next - off, host: -1}
				if h := e.HostOffset + off - e.Start; !data {
					c.host = zeroChunk
				} else if img != nil && h+c.n <= img.fileSize {
					c.host, c.img = h, img
				}
				if err := emit(c); err != nil {
					return err
				}
				off = next
			}
			return nil
		})
	})
}

// writeSparse writes b at off, skipping blocks of zeros (block bytes,
// aligned to guest offsets) so that they stay holes, and coalescing the
// other blocks into single writes.
func writeSparse(w interface {
	WriteAt([]byte, int64) (int, error)
}, b []byte, off, block int64) error {
	start := -1 // start of pending non-zero run in b
	i := 0
	flush := func(end int) error {
		if start < 0 {
			return nil
		}
		_, err := w.WriteAt(b[start:end], off+int64(start))
		start = -1
		return err
	}
	for i < len(b) {
		n := min(len(b)-i, int(block-(off+int64(i))%block))
		if zero.Is(b[i : i+n]) {
			if err := flush(i); err != nil {
				return err
			}
		} else if start < 0 {
			start = i
		}
		i += n
	}
	return flush(len(b))
}
