package qcow2

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
)

// MeasureResult is what `qemu-img measure` reports, in its JSON shape.
type MeasureResult struct {
	// Bitmaps is the space persistent bitmaps of the source would need;
	// present only when both the source and the output format keep
	// them (qcow2 version 3).
	Bitmaps *int64 `json:"bitmaps,omitempty"`
	// Required is the file size the converted image needs.
	Required int64 `json:"required"`
	// FullyAllocated is the file size with every cluster allocated.
	FullyAllocated int64 `json:"fully-allocated"`
}

// WriteHuman writes the result as qemu-img measure's human output.
func (r *MeasureResult) WriteHuman(w io.Writer) error {
	_, err := fmt.Fprintf(w, "required size: %d\nfully allocated size: %d\n", r.Required, r.FullyAllocated)
	if err == nil && r.Bitmaps != nil {
		_, err = fmt.Fprintf(w, "bitmaps size: %d\n", *r.Bitmaps)
	}
	return err
}

// WriteJSON writes the result as qemu-img measure --output=json does.
func (r *MeasureResult) WriteJSON(w io.Writer) error {
	b, err := json.MarshalIndent(r, "", "    ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// Measure computes the file size an image needs, with QEMU's formulas
// (qcow2_measure, raw_measure): for a new image of size bytes when src is
// nil, else for src converted with opts. opts.Format "" means raw, as in
// qemu-img measure; opts.Size is ignored (size or src gives it).
func Measure(ctx context.Context, src *Image, size int64, opts CreateOptions) (*MeasureResult, error) {
	if src == nil && size < 0 {
		return nil, fmt.Errorf("qcow2: measure: negative size %d", size)
	}
	if src != nil {
		size = (src.Size() + 511) &^ 511
	}
	switch opts.Format {
	case "", FormatRaw:
		if src == nil {
			size = (size + 511) &^ 511
		}
		return &MeasureResult{Required: size, FullyAllocated: size}, nil
	case FormatQcow2:
	default:
		return nil, fmt.Errorf("%w: measure for format %q (qcow2 and raw are supported)", ErrUnsupportedFeature, opts.Format)
	}
	o := opts
	o.Size = size
	o.BackingFile = "" // only its presence matters below; it is not opened
	h, err := createHeader(&o)
	if err != nil {
		return nil, fmt.Errorf("qcow2: measure: %w", err)
	}
	switch opts.Preallocation {
	case "", PreallocOff, PreallocMetadata, PreallocFull, "falloc":
	default:
		return nil, fmt.Errorf("qcow2: measure: preallocation %q (want off, metadata, falloc or full)", opts.Preallocation)
	}
	cs := h.ClusterSize()
	virtual := (size + cs - 1) / cs * cs
	var required int64
	if src != nil {
		if err := src.Readable(); err != nil {
			return nil, err
		}
		if opts.BackingFile != "" {
			// The new image's backing file may share nothing with the
			// source: every cluster may need writing.
			required = virtual
		} else {
			off := int64(0)
			err := src.WalkExtents(0, src.Size(), func(e Extent) error {
				if err := ctx.Err(); err != nil {
					return err
				}
				end := e.Start + e.Length
				if end <= off {
					return nil
				}
				start := max(off, e.Start)
				if e.Kind == KindData || e.Kind == KindCompressed {
					next := (end + cs - 1) / cs * cs
					required += start%cs + next - start
					off = next
				} else {
					off = end
				}
				return nil
			})
			if err != nil {
				return nil, err
			}
		}
	}
	if opts.Preallocation == PreallocFull || opts.Preallocation == "falloc" {
		required = virtual
	}
	full := preallocSize(virtual, cs, int64(h.RefcountOrder), h.ExtendedL2())
	res := &MeasureResult{Required: full - virtual + required, FullyAllocated: full}
	if h.Version >= 3 && src != nil && src.Format() == FormatQcow2 && src.Header().Version >= 3 {
		bm, err := src.bitmapInfo()
		if err != nil {
			return nil, err
		}
		n := bitmapsSize(bm, src.Size(), cs)
		res.Bitmaps = &n
	}
	return res, nil
}

// preallocSize is QEMU's qcow2_calc_prealloc_size: the file size of a
// fully allocated image of the given (cluster aligned) size.
func preallocSize(size, cs, refcountOrder int64, extL2 bool) int64 {
	entry := int64(8)
	if extL2 {
		entry = 16
	}
	meta := cs // header
	nl2e := size / cs
	nl2e = roundUp(nl2e, cs/entry)
	meta += nl2e * entry
	nl1e := nl2e * entry / cs
	nl1e = roundUp(nl1e, cs/8)
	meta += nl1e * 8
	meta += refcountMetaSize((meta+size)/cs, cs, refcountOrder)
	return meta + size
}

// refcountMetaSize is QEMU's qcow2_refcount_metadata_size: the bytes of
// refcount blocks and table that count clusters clusters and themselves.
func refcountMetaSize(clusters, cs, refcountOrder int64) int64 {
	perTable := cs / 8
	perBlock := cs * 8 >> refcountOrder
	var table, blocks, n, last int64
	for {
		last = n
		blocks = divUp(clusters+table+blocks, perBlock)
		table = divUp(blocks, perTable)
		n = clusters + blocks + table
		if n == last {
			break
		}
	}
	return (blocks + table) * cs
}

// bitmapsSize is QEMU's qcow2_get_persistent_dirty_bitmap_size.
func bitmapsSize(bm []BitmapInfo, size, cs int64) int64 {
	var total, dir int64
	for _, b := range bm {
		g := max(b.Granularity, 1)
		bytes := divUp(divUp(size, g), 8)
		clusters := divUp(bytes, cs)
		total += clusters * cs
		total += roundUp(clusters*8, cs)
		dir += roundUp(24+int64(len(b.Name)), 8)
	}
	return total + roundUp(dir, cs)
}

func divUp(a, b int64) int64   { return (a + b - 1) / b }
func roundUp(a, b int64) int64 { return divUp(a, b) * b }
