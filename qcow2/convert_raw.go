package qcow2

import (
	"context"
	"fmt"

	"github.com/imgtool/imgtool/internal/atomicfile"
)

// convertRaw is Convert to a new raw image.
func convertRaw(ctx context.Context, src *Image, dst string, opts ConvertOptions) (err error) {
	tmp, err := atomicfile.Create(dst, atomicfile.Options{Sync: opts.Cache.sync()})
	if err != nil {
		return err
	}
	defer tmp.Abort()
	out := directWriter{f: tmp.File}
	if opts.Cache.direct() {
		if out.d, err = openDirect(tmp.File, dst); err != nil {
			return err
		}
		defer out.d.Close()
	}
	size := src.Size()
	if err := tmp.Truncate(size); err != nil {
		return fmt.Errorf("qcow2: convert: %w", err)
	}
	zeroFill := false
	if opts.NoSparse {
		// Reserved blocks read as zeros, so data can still skip its
		// zero blocks; without fallocate, every zero is written.
		zeroFill = fallocate(tmp.File, size) != nil
	}
	if err := convertInto(ctx, src, out, opts, zeroFill); err != nil {
		return err
	}
	if err := checkUnshrunk(src); err != nil {
		return err
	}
	return tmp.Commit()
}

// chunk is one unit of convert work: guest bytes to copy. host >= 0 is
// where they lie, uncompressed and contiguous, in the top image's file,
// read there with one pread; zeroChunk marks a range to fill with zeros.
type chunk struct{ off, n, host int64 }

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
// as zeros too, instead of leaving holes.
func convertInto(ctx context.Context, src *Image, w interface {
	WriteAt([]byte, int64) (int, error)
}, opts ConvertOptions, zeroFill bool) error {
	size := src.Size()

	advance := newProgressMeter(opts.Progress, size).add

	// Uncompressed data of the top image (of a raw image: all of it) is
	// read from its file with one pread per chunk (up to ChunkSize),
	// bypassing the mapping; no mmap, so memory stays at Workers chunk
	// buffers whatever the image size.
	direct := src.w == nil && src.rw == nil && src.unreadable == nil

	block := opts.SparseSize
	if block <= 0 {
		block = sparseBlock
	}
	write := func(w interface {
		WriteAt([]byte, int64) (int, error)
	}, b []byte, off int64) error {
		return writeSparse(w, b, off, block)
	}
	if zeroFill {
		write = writeDense
	}
	worker := func() func(chunk) error {
		buf := make([]byte, opts.ChunkSize)
		return func(c chunk) error {
			if c.host == zeroChunk {
				if err := writeDense(w, zeroBuf(buf[:c.n]), c.off); err != nil {
					return fmt.Errorf("qcow2: convert: %w", err)
				}
				advance(c.n)
				return nil
			}
			b := buf[:c.n]
			if c.host >= 0 {
				if err := src.readHost(b, c.host); err != nil {
					return err
				}
			} else if _, err := src.ReadAt(b, c.off); err != nil {
				return err
			}
			if err := write(w, b, c.off); err != nil {
				return fmt.Errorf("qcow2: convert: %w", err)
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
			for off, end := e.Start, e.Start+e.Length; off < end; {
				next := min(end, (off/opts.ChunkSize+1)*opts.ChunkSize)
				host := int64(-1)
				if h := e.HostOffset + off - e.Start; !data {
					host = zeroChunk
				} else if direct && e.Kind == KindData && e.Depth == 0 &&
					e.HostOffset >= 0 && h+next-off <= src.fileSize {
					host = h
				}
				if err := emit(chunk{off, next - off, host}); err != nil {
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
		if isZeroBytes(b[i : i+n]) {
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
