package qcow2

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/imgtool/imgtool/internal/qemusize"
)

// ImageInfo is what `qemu-img info --output=json` reports for one image;
// the JSON field names and shapes are qemu-img's.
type ImageInfo struct {
	VirtualSize           int64           `json:"virtual-size"`
	Filename              string          `json:"filename"`
	ClusterSize           int64           `json:"cluster-size,omitempty"`
	Format                string          `json:"format"`
	ActualSize            *int64          `json:"actual-size,omitempty"`
	Encrypted             bool            `json:"encrypted,omitempty"`
	Snapshots             []SnapshotInfo  `json:"snapshots,omitempty"`
	FormatSpecific        *FormatSpecific `json:"format-specific,omitempty"`
	FullBackingFilename   string          `json:"full-backing-filename,omitempty"`
	BackingFilename       string          `json:"backing-filename,omitempty"`
	BackingFilenameFormat string          `json:"backing-filename-format,omitempty"`
	DirtyFlag             bool            `json:"dirty-flag"`
}

// SnapshotInfo is one entry of ImageInfo.Snapshots.
type SnapshotInfo struct {
	Icount      *int64 `json:"icount,omitempty"`
	VMClockNsec int64  `json:"vm-clock-nsec"`
	Name        string `json:"name"`
	DateSec     int64  `json:"date-sec"`
	DateNsec    int64  `json:"date-nsec"`
	VMClockSec  int64  `json:"vm-clock-sec"`
	ID          string `json:"id"`
	VMStateSize int64  `json:"vm-state-size"`
}

// FormatSpecific is qemu-img's format-specific object.
type FormatSpecific struct {
	Type string     `json:"type"`
	Data Qcow2Extra `json:"data"`
}

// Qcow2Extra holds the qcow2 fields of FormatSpecific. Version 2 images
// have only compat, compression-type and refcount-bits.
type Qcow2Extra struct {
	Compat          string       `json:"compat"`
	CompressionType string       `json:"compression-type"`
	LazyRefcounts   *bool        `json:"lazy-refcounts,omitempty"`
	Bitmaps         []BitmapInfo `json:"bitmaps,omitempty"`
	RefcountBits    int          `json:"refcount-bits"`
	DataFile        string       `json:"data-file,omitempty"`
	DataFileRaw     *bool        `json:"data-file-raw,omitempty"`
	Encrypt         *EncryptInfo `json:"encrypt,omitempty"`
	Corrupt         *bool        `json:"corrupt,omitempty"`
	ExtendedL2      *bool        `json:"extended-l2,omitempty"`
}

// BitmapInfo describes one persistent dirty bitmap.
type BitmapInfo struct {
	Flags       []string `json:"flags"`
	Name        string   `json:"name"`
	Granularity int64    `json:"granularity"`
}

// EncryptInfo names the encryption format ("aes" or "luks"); the LUKS
// header details qemu-img adds are not decoded.
type EncryptInfo struct {
	Format string `json:"format"`
}

// Info returns what `qemu-img info` reports for this image (not its
// backing files).
func (img *Image) Info() (*ImageInfo, error) {
	info := &ImageInfo{
		VirtualSize: img.size,
		Filename:    img.path,
		Format:      string(img.format),
	}
	if a, ok := allocatedSize(img.f); ok {
		info.ActualSize = &a
	}
	h := img.hdr
	if h == nil {
		return info, nil
	}
	info.ClusterSize = img.clusterSize
	info.Encrypted = h.CryptMethod != CryptNone
	info.DirtyFlag = h.IncompatibleFeatures&IncompatDirty != 0
	if h.BackingFile != "" {
		info.BackingFilename = h.BackingFile
		info.FullBackingFilename = img.BackingPath()
		info.BackingFilenameFormat = h.BackingFormat
	}
	for _, s := range img.snapshots {
		si := SnapshotInfo{
			VMClockNsec: int64(s.VMClockNsec % 1e9),
			VMClockSec:  int64(s.VMClockNsec / 1e9),
			Name:        s.Name,
			DateSec:     int64(s.DateSec),
			DateNsec:    int64(s.DateNsec),
			ID:          s.ID,
			VMStateSize: int64(s.VMStateSize),
		}
		if s.Icount != -1 {
			ic := s.Icount
			si.Icount = &ic
		}
		info.Snapshots = append(info.Snapshots, si)
	}
	x := Qcow2Extra{RefcountBits: h.RefcountBits(), CompressionType: "zlib"}
	if h.CompressionType == CompressionZstd {
		x.CompressionType = "zstd"
	}
	if h.Version == 2 {
		x.Compat = "0.10"
	} else {
		x.Compat = "1.1"
		lazy := h.CompatibleFeatures&CompatLazyRefcounts != 0
		corrupt := h.IncompatibleFeatures&IncompatCorrupt != 0
		ext := h.ExtendedL2()
		x.LazyRefcounts, x.Corrupt, x.ExtendedL2 = &lazy, &corrupt, &ext
		if h.IncompatibleFeatures&IncompatDataFile != 0 {
			x.DataFile = h.DataFile
			raw := h.AutoclearFeatures&AutoclearDataFileRaw != 0
			x.DataFileRaw = &raw
		}
		bm, err := img.bitmapInfo()
		if err != nil {
			return nil, err
		}
		x.Bitmaps = bm
	}
	switch h.CryptMethod {
	case CryptAES:
		x.Encrypt = &EncryptInfo{Format: "aes"}
	case CryptLUKS:
		x.Encrypt = &EncryptInfo{Format: "luks"}
	}
	info.FormatSpecific = &FormatSpecific{Type: "qcow2", Data: x}
	return info, nil
}

// bitmapInfo reads the bitmap directory (names, flags, granularity).
func (img *Image) bitmapInfo() ([]BitmapInfo, error) {
	b := img.hdr.Bitmaps
	if b == nil || img.hdr.AutoclearFeatures&AutoclearBitmaps == 0 {
		return nil, nil
	}
	fieldOff := b.extensionFileOffset
	if b.NbBitmaps > maxBitmaps {
		return nil, img.corrupt("bitmaps extension nb_bitmaps", fieldOff, "%d exceeds %d", b.NbBitmaps, maxBitmaps)
	}
	if b.DirectorySize > maxBitmapDirectorySize {
		return nil, img.corrupt("bitmaps extension bitmap_directory_size", fieldOff+8, "%d exceeds %d", b.DirectorySize, maxBitmapDirectorySize)
	}
	if err := checkTable(img.path, "bitmap_directory_offset", fieldOff+16, b.DirectoryOffset, b.DirectorySize, img.clusterSize, img.fileSize); err != nil {
		return nil, err
	}
	dir := make([]byte, b.DirectorySize)
	if _, err := img.r.ReadAt(dir, int64(b.DirectoryOffset)); err != nil && err != io.EOF {
		return nil, fmt.Errorf("qcow2: reading bitmap directory of %s: %w", img.path, err)
	}
	var out []BitmapInfo
	pos := 0
	for i := uint32(0); i < b.NbBitmaps; i++ {
		at := int64(b.DirectoryOffset) + int64(pos)
		if pos+24 > len(dir) {
			return nil, img.corrupt("bitmap directory", at, "entry %d runs past the directory", i)
		}
		e := dir[pos:]
		flags := uint32(e[12])<<24 | uint32(e[13])<<16 | uint32(e[14])<<8 | uint32(e[15])
		gran := e[17]
		nameSize := int(e[18])<<8 | int(e[19])
		extra := int(uint32(e[20])<<24 | uint32(e[21])<<16 | uint32(e[22])<<8 | uint32(e[23]))
		if extra > len(dir) || nameSize > len(dir) || pos+24+extra+nameSize > len(dir) {
			return nil, img.corrupt("bitmap directory", at, "entry %d runs past the directory", i)
		}
		if gran < 9 || gran > 31 {
			return nil, img.corrupt("bitmap directory granularity_bits", at+17, "%d is outside 9..31", gran)
		}
		bi := BitmapInfo{Flags: []string{}, Name: string(e[24+extra : 24+extra+nameSize]), Granularity: 1 << gran}
		if flags&1 != 0 {
			bi.Flags = append(bi.Flags, "in-use")
		}
		if flags&2 != 0 {
			bi.Flags = append(bi.Flags, "auto")
		}
		out = append(out, bi)
		pos = (pos + 24 + extra + nameSize + 7) &^ 7
	}
	return out, nil
}

// WriteHuman writes info in qemu-img's human-readable layout.
func (info *ImageInfo) WriteHuman(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "image: %s\n", info.Filename)
	fmt.Fprintf(&b, "file format: %s\n", info.Format)
	fmt.Fprintf(&b, "virtual size: %s (%d bytes)\n", qemusize.String(info.VirtualSize), info.VirtualSize)
	if info.ActualSize != nil {
		fmt.Fprintf(&b, "disk size: %s\n", qemusize.String(*info.ActualSize))
	} else {
		b.WriteString("disk size: unavailable\n")
	}
	if info.Encrypted {
		b.WriteString("encrypted: yes\n")
	}
	if info.ClusterSize != 0 {
		fmt.Fprintf(&b, "cluster_size: %d\n", info.ClusterSize)
	}
	if info.DirtyFlag {
		b.WriteString("cleanly shut down: no\n")
	}
	if info.BackingFilename != "" {
		fmt.Fprintf(&b, "backing file: %s", info.BackingFilename)
		if info.FullBackingFilename != "" && info.FullBackingFilename != info.BackingFilename {
			fmt.Fprintf(&b, " (actual path: %s)", info.FullBackingFilename)
		}
		b.WriteString("\n")
		if info.BackingFilenameFormat != "" {
			fmt.Fprintf(&b, "backing file format: %s\n", info.BackingFilenameFormat)
		}
	}
	if len(info.Snapshots) > 0 {
		b.WriteString("Snapshot list:\n")
		fmt.Fprintf(&b, "%-10s%-17s%8s%20s%13s%11s\n", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT")
		for _, s := range info.Snapshots {
			date := time.Unix(s.DateSec, 0).Format("2006-01-02 15:04:05")
			secs := s.VMClockSec
			clock := fmt.Sprintf("%02d:%02d:%02d.%03d", secs/3600, secs/60%60, secs%60, s.VMClockNsec/1e6)
			icount := ""
			if s.Icount != nil {
				icount = strconv.FormatInt(*s.Icount, 10)
			}
			fmt.Fprintf(&b, "%-9s %-16s %8s%20s%13s%11s\n", s.ID, s.Name, qemusize.String(s.VMStateSize), date, clock, icount)
		}
	}
	if fs := info.FormatSpecific; fs != nil {
		x := fs.Data
		b.WriteString("Format specific information:\n")
		fmt.Fprintf(&b, "    compat: %s\n", x.Compat)
		fmt.Fprintf(&b, "    compression type: %s\n", x.CompressionType)
		if x.LazyRefcounts != nil {
			fmt.Fprintf(&b, "    lazy refcounts: %t\n", *x.LazyRefcounts)
		}
		if len(x.Bitmaps) > 0 {
			b.WriteString("    bitmaps:\n")
			for i, bm := range x.Bitmaps {
				fmt.Fprintf(&b, "        [%d]:\n            flags:\n", i)
				for j, f := range bm.Flags {
					fmt.Fprintf(&b, "                [%d]: %s\n", j, f)
				}
				fmt.Fprintf(&b, "            name: %s\n            granularity: %d\n", bm.Name, bm.Granularity)
			}
		}
		fmt.Fprintf(&b, "    refcount bits: %d\n", x.RefcountBits)
		if x.DataFile != "" {
			fmt.Fprintf(&b, "    data file: %s\n", x.DataFile)
		}
		if x.DataFileRaw != nil {
			fmt.Fprintf(&b, "    data file raw: %t\n", *x.DataFileRaw)
		}
		if x.Encrypt != nil {
			fmt.Fprintf(&b, "    encrypt:\n        format: %s\n", x.Encrypt.Format)
		}
		if x.Corrupt != nil {
			fmt.Fprintf(&b, "    corrupt: %t\n", *x.Corrupt)
		}
		if x.ExtendedL2 != nil {
			fmt.Fprintf(&b, "    extended l2: %t\n", *x.ExtendedL2)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// MapEntry is one run of `qemu-img map --output=json`: guest bytes whose
// depth, presence, zero and data flags agree and whose host offsets (if
// any) are contiguous in one file.
type MapEntry struct {
	Start   int64  `json:"start"`
	Length  int64  `json:"length"`
	Depth   int    `json:"depth"`
	Present bool   `json:"present"`
	Zero    bool   `json:"zero"`
	Data    bool   `json:"data"`
	Offset  *int64 `json:"offset,omitempty"`
	// Filename is the file Offset refers to (qemu-img prints it in human
	// output only).
	Filename string `json:"-"`
}

// Map returns the whole guest range of the chain as qemu-img map reports
// it. Like QEMU's block status, data clusters of an image whose metadata
// was preallocated are checked against the file's holes, which read as
// zeros.
func (img *Image) Map() ([]MapEntry, error) {
	var out []MapEntry
	add := func(e MapEntry) {
		if n := len(out); n > 0 {
			p := &out[n-1]
			if p.Depth == e.Depth && p.Present == e.Present && p.Zero == e.Zero && p.Data == e.Data &&
				(p.Offset == nil) == (e.Offset == nil) && p.Filename == e.Filename &&
				(p.Offset == nil || *p.Offset+p.Length == *e.Offset) {
				p.Length += e.Length
				return
			}
		}
		out = append(out, e)
	}
	err := img.walk(0, img.size, 0, true, func(e Extent, layer *Image) error {
		me := MapEntry{
			Start:   e.Start,
			Length:  e.Length,
			Depth:   e.Depth,
			Present: e.Kind != KindUnallocated,
			Zero:    e.Kind == KindZero || e.Kind == KindUnallocated,
			Data:    e.Kind == KindData || e.Kind == KindCompressed,
		}
		if e.HostOffset < 0 {
			add(me)
			return nil
		}
		me.Filename = layer.path
		if e.Kind != KindData || layer.format != FormatQcow2 || layer.hdr.IncompatibleFeatures&IncompatDataFile != 0 || !layer.metadataPreallocated() {
			off := e.HostOffset
			me.Offset = &off
			add(me)
			return nil
		}
		// Split by the holes of the image file.
		for done := int64(0); done < e.Length; {
			host := e.HostOffset + done
			part := me
			part.Start = e.Start + done
			part.Length = e.Length - done
			off := host
			part.Offset = &off
			if host >= layer.fileSize {
				part.Zero = true
			} else {
				st, _, l, err := layer.rawStatus(host, min(part.Length, layer.fileSize-host), true)
				if err != nil {
					return err
				}
				if st == subZeroAlloc {
					part.Zero = true
					if host+l < layer.fileSize {
						part.Length = l
					}
				} else {
					part.Length = l
				}
			}
			add(part)
			done += part.Length
		}
		return nil
	})
	return out, err
}

// ChainInfo returns Info for the image at path and each backing file
// below it, top first, as `qemu-img info --backing-chain` does: each image
// is opened on its own (Options.NoBacking), so the list is complete up to
// the first image that cannot be opened.
func ChainInfo(path string, opts Options) ([]*ImageInfo, error) {
	maxDepth := opts.MaxChainDepth
	if maxDepth == 0 {
		maxDepth = DefaultMaxChainDepth
	}
	var out []*ImageInfo
	var seen []os.FileInfo
	format := opts.Format
	for depth := 0; ; depth++ {
		o := opts
		o.Format, o.NoBacking = format, true
		img, err := Open(path, o)
		if err != nil {
			return out, err
		}
		fi, err := img.f.Stat()
		if err == nil {
			for _, s := range seen {
				if os.SameFile(s, fi) {
					img.Close()
					return out, fmt.Errorf("%w: %s appears twice in the chain of %s", ErrChainLoop, path, out[0].Filename)
				}
			}
			seen = append(seen, fi)
		}
		info, err := img.Info()
		next, nextFmt := img.backingPath, img.backingFmt
		img.Close()
		if err != nil {
			return out, err
		}
		out = append(out, info)
		if next == "" {
			return out, nil
		}
		if depth+1 > maxDepth {
			return out, fmt.Errorf("%w: %s: more than %d backing files", ErrChainTooDeep, out[0].Filename, maxDepth)
		}
		path, format = next, nextFmt
	}
}
