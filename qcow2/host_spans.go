package qcow2

import (
	"errors"
	"syscall"
)

// hostSpans calls fn, in order, for the data and hole runs of the host
// range [off, off+n) of img's file, as SEEK_DATA and SEEK_HOLE report
// them (what qemu asks the host file too). Without probe, or where the
// file system can't tell, the whole range is data; past the end of the
// file is a hole. A hole needs no read: it reads as zeros.
func (img *Image) hostSpans(off, n int64, probe bool, fn func(off, n int64, data bool) error) error {
	end := off + n
	if !probe || img.f == nil {
		return fn(off, n, true)
	}
	for off < end {
		d, err := img.f.Seek(off, seekData)
		if err != nil {
			if errors.Is(err, syscall.ENXIO) {
				return fn(off, end-off, false) // a hole up to the end of the file, and past it
			}
			return fn(off, end-off, true) // no SEEK_DATA: all data
		}
		if d > off {
			h := min(d, end)
			if err := fn(off, h-off, false); err != nil {
				return err
			}
			off = h
			continue
		}
		h, err := img.f.Seek(off, seekHole)
		if err != nil {
			h = end
		}
		h = min(max(h, off+1), end)
		if err := fn(off, h-off, true); err != nil {
			return err
		}
		off = h
	}
	return nil
}

// directAt returns the image at chain position depth below img when its
// uncompressed data can be read straight from its file at the host
// offsets extents report (a plain read-only file, not encrypted), else
// nil: reads must then go through the image.
func directAt(img *Image, depth int) *Image {
	for ; img != nil && depth > 0; depth-- {
		img = img.backing
	}
	if img == nil || img.w != nil || img.rw != nil || img.unreadable != nil || img.f == nil ||
		img.hdr != nil && img.hdr.CryptMethod != CryptNone {
		return nil
	}
	return img
}

// readExtent reads the part [s, t) of the data extent e of img's chain
// into p: straight from the host file where it can, without reading the
// file's holes, else through img.
func readExtent(img *Image, e Extent, p []byte, s int64) error {
	d := directAt(img, e.Depth)
	if e.Kind != KindData || e.HostOffset < 0 || d == nil {
		return readGuestAt(img, p, s)
	}
	h0 := e.HostOffset + s - e.Start
	return d.hostSpans(h0, int64(len(p)), d.format != FormatRaw, func(h, n int64, data bool) error {
		b := p[h-h0 : h-h0+n]
		if !data {
			clear(b)
			return nil
		}
		return d.readHost(b, h)
	})
}
