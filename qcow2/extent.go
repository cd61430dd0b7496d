package qcow2

import (
	"errors"
	"fmt"
	"io"
	"syscall"
)

// ExtentKind says how a run of guest bytes is stored.
type ExtentKind uint8

const (
	// KindUnallocated: no image in the chain allocates the range; it
	// reads as zeros.
	KindUnallocated ExtentKind = iota
	// KindData: the range is stored uncompressed at HostOffset of the
	// image at Depth.
	KindData
	// KindZero: the image at Depth says the range reads as zeros (a zero
	// cluster, or a hole in a raw file). HostOffset is set when a host
	// cluster is preallocated.
	KindZero
	// KindCompressed: the range is stored in compressed clusters of the
	// image at Depth.
	KindCompressed
)

func (k ExtentKind) String() string {
	switch k {
	case KindUnallocated:
		return "unallocated"
	case KindData:
		return "data"
	case KindZero:
		return "zero"
	case KindCompressed:
		return "compressed"
	}
	return fmt.Sprintf("ExtentKind(%d)", uint8(k))
}

// Extent is a run of guest bytes stored the same way.
type Extent struct {
	Start  int64 // guest offset
	Length int64
	Kind   ExtentKind
	// Depth is the chain position of the image that decides the content
	// of the run: 0 is the image itself, 1 its backing file, and so on.
	// For KindUnallocated it is the image where the lookup stopped (the
	// base, or an image whose backing file is shorter than Start).
	Depth int
	// HostOffset is the byte offset of Start in the file of the image at
	// Depth, or -1 when the run has none (compressed, plain zero,
	// unallocated, encrypted images).
	HostOffset int64
}

// Present reports whether some image in the chain allocates the run.
func (e Extent) Present() bool { return e.Kind != KindUnallocated }

// Extents returns the runs covering [off, off+length) of the guest,
// merged: adjacent runs differ in kind or depth, or their host offsets
// are not contiguous. The range is clipped to Size.
func (img *Image) Extents(off, length int64) ([]Extent, error) {
	var out []Extent
	err := img.WalkExtents(off, length, func(e Extent) error {
		out = append(out, e)
		return nil
	})
	return out, err
}

// WalkExtents calls fn for each merged run of [off, off+length), in
// order, as Extents would return them; it stops at the first error fn
// returns and returns it.
func (img *Image) WalkExtents(off, length int64, fn func(Extent) error) error {
	if off < 0 || length < 0 {
		return fmt.Errorf("qcow2: invalid range %d+%d", off, length)
	}
	if off >= img.size {
		return nil
	}
	length = min(length, img.size-off)
	var cur Extent
	have := false
	err := img.walk(off, length, 0, true, func(e Extent, _ *Image) error {
		if have && mergeable(cur, e) {
			cur.Length += e.Length
			return nil
		}
		if have {
			if err := fn(cur); err != nil {
				return err
			}
		}
		cur, have = e, true
		return nil
	})
	if err != nil {
		return err
	}
	if have {
		return fn(cur)
	}
	return nil
}

func mergeable(a, b Extent) bool {
	if a.Kind != b.Kind || a.Depth != b.Depth || a.Start+a.Length != b.Start {
		return false
	}
	if (a.HostOffset < 0) != (b.HostOffset < 0) {
		return false
	}
	return a.HostOffset < 0 || a.HostOffset+a.Length == b.HostOffset
}

// walk resolves [off, off+n) through the chain starting at img (at chain
// position depth) and calls fn with unmerged runs in order, together with
// the image that owns each. wantZero asks raw images for their holes
// (SEEK_HOLE); reads do not need them.
func (img *Image) walk(off, n int64, depth int, wantZero bool, fn func(Extent, *Image) error) error {
	for n > 0 {
		st, host, l, err := img.layerStatus(off, n, wantZero)
		if err != nil {
			return err
		}
		if img.hdr != nil && img.hdr.CryptMethod != CryptNone {
			host = -1 // QEMU reports no offsets for encrypted images
		}
		e := Extent{Start: off, Length: l, Depth: depth, HostOffset: host}
		switch st {
		case subNormal:
			e.Kind = KindData
		case subCompressed:
			e.Kind = KindCompressed
		case subZeroPlain, subZeroAlloc:
			e.Kind = KindZero
		case subUnallocated, subUnallocatedAlloc:
			b := img.backing
			if b == nil || off >= b.size {
				e.Kind = KindUnallocated
				break
			}
			l = min(l, b.size-off)
			if err := b.walk(off, l, depth+1, wantZero, fn); err != nil {
				return err
			}
			off += l
			n -= l
			continue
		}
		if err := fn(e, img); err != nil {
			return err
		}
		off += l
		n -= l
	}
	return nil
}

// layerStatus returns the state of the run of this one image starting at
// off (at most n bytes): its type, the host offset of off (or -1) and its
// length. Host offsets are contiguous across the run.
func (img *Image) layerStatus(off, n int64, wantZero bool) (subType, int64, int64, error) {
	if img.format == FormatRaw {
		return img.rawStatus(off, n, wantZero)
	}
	end := off + n
	cb := img.clusterBits
	var t0 subType
	h0 := int64(-1)
	first := true
	pos := off
	// same reports whether the unit at pos (type t, host h for pos)
	// continues the run.
	same := func(t subType, h int64) bool {
		if first {
			t0, h0, first = t, h, false
			return true
		}
		if t != t0 {
			return false
		}
		if h0 < 0 {
			return h < 0
		}
		return h >= 0 && h == h0+(pos-off)
	}
	for pos < end {
		vc := pos >> cb
		l1i := vc >> img.l2Bits
		if l1i >= img.l1Len() || img.l1Get(l1i).l2Offset() == 0 {
			if !same(subUnallocated, -1) {
				break
			}
			pos = min((l1i+1)<<(img.l2Bits+cb), end)
			continue
		}
		entry, ok := img.cachedEntry(vc)
		var bitmap uint64
		if !ok {
			var err error
			if entry, bitmap, err = img.lookupSlow(vc); err != nil {
				return 0, 0, 0, err
			}
		}
		cstart := vc << cb
		if !img.extL2 || entry.compressed() || (entry.host() == 0 && bitmap == 0) {
			t, h, err := img.classify(vc, entry, bitmap, 0)
			if err != nil {
				return 0, 0, 0, err
			}
			if h >= 0 {
				h += pos - cstart
			}
			if !same(t, h) {
				break
			}
			pos = min(cstart+img.clusterSize, end)
			continue
		}
		stop := false
		for sc := uint((pos - cstart) >> img.scBits); sc < 32 && pos < end; sc++ {
			t, h, err := img.classify(vc, entry, bitmap, sc)
			if err != nil {
				return 0, 0, 0, err
			}
			if h >= 0 {
				h += pos - cstart
			}
			if !same(t, h) {
				stop = true
				break
			}
			pos = min(cstart+int64(sc+1)<<img.scBits, end)
		}
		if stop {
			break
		}
	}
	return t0, h0, pos - off, nil
}

// SEEK_DATA and SEEK_HOLE whence values (Linux, FreeBSD, macOS, Solaris).
const (
	seekData = 3
	seekHole = 4
)

// rawStatus reports data and holes of a raw file. Without wantZero the
// whole file is data. Past the end of the file is a hole.
func (img *Image) rawStatus(off, n int64, wantZero bool) (subType, int64, int64, error) {
	fileSize := img.fileSizeNow() // a writable image's file grows into its last sector
	if off >= fileSize {
		return subZeroAlloc, off, n, nil
	}
	if !wantZero {
		return subNormal, off, min(n, fileSize-off), nil
	}
	data, err := img.f.Seek(off, seekData)
	if err != nil {
		if errors.Is(err, syscall.ENXIO) {
			return subZeroAlloc, off, n, nil // trailing hole
		}
		// No SEEK_DATA support: everything is data.
		return subNormal, off, min(n, fileSize-off), nil
	}
	if data > off {
		return subZeroAlloc, off, min(n, data-off), nil
	}
	hole, err := img.f.Seek(off, seekHole)
	if err != nil {
		return subNormal, off, min(n, fileSize-off), nil
	}
	l := hole - off
	if hole >= fileSize && l%512 != 0 {
		// Like QEMU, a data extent ending in a partial sector at the end
		// of the file covers the whole sector.
		l += 512 - l%512
	}
	return subNormal, off, min(n, l), nil
}

// readHost reads len(dst) bytes at host offset off of the image file;
// bytes past the end of the file read as zeros, as in QEMU. A read-only
// image whose file now ends before the size it had when opened was
// truncated under us: that is an error, not zeros.
func (img *Image) readHost(dst []byte, off int64) error {
	n, err := img.r.ReadAt(dst, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("qcow2: reading %s at %#x: %w", img.path, off, err)
	}
	if end := off + int64(n); n < len(dst) && end < img.fileSize && img.w == nil && img.rw == nil {
		return fmt.Errorf("qcow2: %s changed while it was read: the file ends at %#x, before %#x where it ended when opened", img.path, end, img.fileSize)
	}
	clear(dst[n:])
	return nil
}
