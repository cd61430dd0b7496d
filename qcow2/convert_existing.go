package qcow2

import (
	"context"
	"errors"
	"fmt"

	"github.com/imgtool/imgtool/internal/atomicfile"
	"github.com/imgtool/imgtool/internal/imagelock"
	"github.com/imgtool/imgtool/internal/zero"
)

// convertExisting is Convert with NoCreate (qemu-img convert -n):
// dst exists and is opened as opts.Create.Format (with QEMU's writer
// lock, taken after src's read locks, so a dst in src's chain is
// refused); the guest content of src is written over its first
// src.Size() bytes, zeros included unless TargetIsZero, and the rest of
// dst is left as it was.
func convertExisting(ctx context.Context, src *Image, dst string, opts ConvertOptions) error {
	co := opts.Create
	switch {
	case opts.Compress:
		return fmt.Errorf("%w: convert -n with -c", ErrUnsupportedFeature)
	case co.BackingFile != "":
		return fmt.Errorf("%w: convert -n with a backing file (-B): the target exists and keeps its own", ErrUnsupportedFeature)
	}
	tgt, err := Open(dst, Options{Format: co.Format, Writable: true, NoBacking: true, cache: opts.Cache})
	if ce := (*imagelock.ConflictError)(nil); errors.As(err, &ce) {
		// In use (by src's own chain, or by a running QEMU): qemu-img's
		// words, as for a destination convert creates.
		return &atomicfile.LockError{Path: dst, Err: ce}
	}
	if err != nil {
		return err // names dst already
	}
	defer tgt.Close()
	size := src.Size()
	if tgt.Size() < size {
		return fmt.Errorf("qcow2: convert to %s: output file is smaller than input file (%d < %d bytes)", dst, tgt.Size(), size)
	}
	const unit = 1 << 20
	type job struct {
		off, n int64
		data   bool
	}
	advance := newProgressMeter(opts.Progress, size).add
	worker := func() func(job) error {
		buf := make([]byte, unit)
		return func(j job) error {
			b := buf[:j.n]
			if j.data {
				if err := readGuestAt(src, b, j.off); err != nil {
					return err
				}
			}
			var err error
			switch {
			case j.data && (opts.NoSparse || !zero.Is(b)):
				_, err = tgt.WriteAt(b, j.off)
			case !opts.TargetIsZero:
				err = tgt.WriteZeroes(j.off, j.n)
			}
			if err != nil {
				return err
			}
			advance(j.n)
			return nil
		}
	}
	err = runPool(ctx, opts.Workers, worker, func(ctx context.Context, emit func(job) error) error {
		return src.WalkExtents(0, size, func(e Extent) error {
			data := e.Kind == KindData || e.Kind == KindCompressed
			for off, end := e.Start, e.Start+e.Length; off < end; {
				next := min(end, (off/unit+1)*unit)
				if err := emit(job{off, next - off, data}); err != nil {
					return err
				}
				off = next
			}
			return nil
		})
	})
	if err == nil {
		err = checkUnshrunk(src)
	}
	if err != nil {
		return convertError(dst, err)
	}
	if err := tgt.Flush(); err != nil {
		return convertError(dst, err)
	}
	return tgt.Close()
}
