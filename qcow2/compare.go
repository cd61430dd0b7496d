package qcow2

import (
	"bytes"
	"context"
	"fmt"
)

// CompareOptions configures Compare. The zero value compares content as
// `qemu-img compare` does without -s, reporting no progress.
type CompareOptions struct {
	// Strict (qemu-img compare -s) also fails on a size mismatch and on
	// ranges whose allocation status differs even when they read the
	// same.
	Strict bool
	// Progress, if set, is called with the guest bytes compared so far
	// and the total (the larger size). Calls come from the caller's
	// goroutine and done never decreases.
	Progress func(done, total int64)
}

// CompareResult says how two images differ.
type CompareResult struct {
	// Identical is true when the images read the same (and, in strict
	// mode, have the same size and allocation status).
	Identical bool
	// SizeMismatch is true when the guest sizes differ. Without Strict
	// the images can still be identical: the larger one must read as
	// zeros past the end of the smaller one.
	SizeMismatch bool
	// Offset is the first differing offset (rounded down to a 512-byte
	// sector, as qemu-img reports it), or -1.
	Offset int64
	// StatusMismatch is true when Strict found ranges stored differently
	// (at Offset).
	StatusMismatch bool
}

// Message returns what qemu-img compare prints for the result (without
// the size warning, see SizeMismatch).
func (r *CompareResult) Message() string {
	switch {
	case r.Identical:
		return "Images are identical."
	case r.StatusMismatch:
		return fmt.Sprintf("Strict mode: Offset %d block status mismatch!", r.Offset)
	case r.Offset < 0 && r.SizeMismatch:
		return "Strict mode: Image size mismatch!"
	}
	return fmt.Sprintf("Content mismatch at offset %d!", r.Offset)
}

// compareStatus maps an extent to the block status bits qemu-img's strict
// mode compares: zero, data, allocated in the chain, host offset known.
func compareStatus(e Extent) uint8 {
	const (
		zero, data, alloc, offset = 1, 2, 4, 8
	)
	switch e.Kind {
	case KindUnallocated:
		return zero
	case KindZero:
		if e.HostOffset >= 0 {
			return zero | alloc | offset
		}
		return zero | alloc
	case KindCompressed:
		return data | alloc
	}
	return data | alloc | offset
}

// compareChunk is the unit in which content is read and compared.
const compareChunk = 1 << 20

// Compare compares the guest content of a and b (whole chains), as
// `qemu-img compare` does: ranges both images report as zeros are not
// read, others are read in chunks and compared by 512-byte sectors.
func Compare(ctx context.Context, a, b *Image, opts CompareOptions) (*CompareResult, error) {
	for _, img := range []*Image{a, b} {
		if err := img.Readable(); err != nil {
			return nil, err
		}
	}
	res := &CompareResult{Offset: -1, SizeMismatch: a.Size() != b.Size()}
	if res.SizeMismatch && opts.Strict {
		return res, nil
	}
	common := min(a.Size(), b.Size())
	total := max(a.Size(), b.Size())
	report := func(done int64) {
		if opts.Progress != nil {
			opts.Progress(done, total)
		}
	}
	report(0)
	ea, err := a.Extents(0, common)
	if err != nil {
		return nil, err
	}
	eb, err := b.Extents(0, common)
	if err != nil {
		return nil, err
	}
	bufA := make([]byte, compareChunk)
	bufB := make([]byte, compareChunk)
	i, k := 0, 0
	for off := int64(0); off < common; {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		for ea[i].Start+ea[i].Length <= off {
			i++
		}
		for eb[k].Start+eb[k].Length <= off {
			k++
		}
		x, y := ea[i], eb[k]
		end := min(x.Start+x.Length, y.Start+y.Length)
		if opts.Strict && compareStatus(x) != compareStatus(y) {
			res.Offset, res.StatusMismatch = off, true
			return res, nil
		}
		if !zeroKind(x.Kind) || !zeroKind(y.Kind) {
			for p := off; p < end; p += compareChunk {
				n := min(compareChunk, end-p)
				if err := readDataOnly(a, bufA[:n], p, 0, nil); err != nil {
					return nil, err
				}
				if err := readDataOnly(b, bufB[:n], p, 0, nil); err != nil {
					return nil, err
				}
				if d := firstDiffSector(bufA[:n], bufB[:n]); d >= 0 {
					res.Offset = p + d
					return res, nil
				}
				report(p + n)
				if err := ctx.Err(); err != nil {
					return nil, err
				}
			}
		}
		off = end
		report(off)
	}
	// The rest of the larger image must read as zeros.
	if res.SizeMismatch {
		big := a
		if b.Size() > a.Size() {
			big = b
		}
		zero := make([]byte, compareChunk)
		err := big.WalkExtents(common, total-common, func(e Extent) error {
			if zeroKind(e.Kind) {
				report(e.Start + e.Length)
				return nil
			}
			for p := e.Start; p < e.Start+e.Length; p += compareChunk {
				n := min(compareChunk, e.Start+e.Length-p)
				if err := readDataOnly(big, bufA[:n], p, 0, nil); err != nil {
					return err
				}
				if d := firstDiffSector(bufA[:n], zero[:n]); d >= 0 {
					res.Offset = p + d
					return errStop
				}
				report(p + n)
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			return nil
		})
		if err == errStop {
			return res, nil
		}
		if err != nil {
			return nil, err
		}
	}
	report(total)
	res.Identical = true
	return res, nil
}

func zeroKind(k ExtentKind) bool { return k == KindUnallocated || k == KindZero }

// firstDiffSector returns the offset of the first 512-byte sector in
// which a and b differ, or -1.
func firstDiffSector(a, b []byte) int64 {
	if bytes.Equal(a, b) {
		return -1
	}
	for s := 0; s < len(a); s += 512 {
		e := min(len(a), s+512)
		if !bytes.Equal(a[s:e], b[s:e]) {
			return int64(s)
		}
	}
	return -1
}
