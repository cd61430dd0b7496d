package qcow2

import (
	"errors"
	"sync"
	"syscall"
)

// hostSpans calls fn, in order, for the data and hole runs of the host
// range [off, off+n) of img's file, as SEEK_DATA and SEEK_HOLE report
// them (what qemu asks the host file too). Without probe, or where the
// file system can't tell, the whole range is data; past the end of the
// file is a hole. A hole needs no read: it reads as zeros.
//
// The last run found is remembered (img.span): SEEK_HOLE from inside a
// long data run costs a walk to its end on some file systems (tmpfs
// scans its page cache), so chunks of one run ask once, not once each.
// Only read-only images are probed (see directAt), so runs stay true.
func (img *Image) hostSpans(off, n int64, probe bool, fn func(off, n int64, data bool) error) error {
	end := off + n
	if !probe || img.f == nil {
		return fn(off, n, true)
	}
	for off < end {
		s := img.span.find(off)
		if s.end <= off {
			var err error
			if s, err = img.probeSpan(off); err != nil {
				return fn(off, end-off, true) // no SEEK_DATA: all data
			}
			img.span.remember(s)
		}
		t := min(s.end, end)
		if err := fn(off, t-off, s.data); err != nil {
			return err
		}
		off = t
	}
	return nil
}

// hostSpan is a run of a host file that is all data or all hole.
type hostSpan struct {
	start, end int64
	data       bool
}

// spanCache remembers the last hostSpan found in an image's file.
type spanCache struct {
	mu   sync.Mutex
	last hostSpan
}

func (c *spanCache) find(off int64) hostSpan {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.last.start <= off && off < c.last.end {
		return c.last
	}
	return hostSpan{}
}

func (c *spanCache) remember(s hostSpan) {
	c.mu.Lock()
	c.last = s
	c.mu.Unlock()
}

// probeSpan asks the file for the run holding off.
func (img *Image) probeSpan(off int64) (hostSpan, error) {
	const forever = 1<<63 - 1
	d, err := img.f.Seek(off, seekData)
	if err != nil {
		if errors.Is(err, syscall.ENXIO) {
			return hostSpan{off, forever, false}, nil // a hole to the end of the file, and past it
		}
		return hostSpan{}, err
	}
	if d > off {
		return hostSpan{off, d, false}, nil
	}
	h, err := img.f.Seek(off, seekHole)
	if err != nil {
		return hostSpan{}, err
	}
	return hostSpan{off, max(h, off+1), true}, nil
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
