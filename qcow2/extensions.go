package qcow2

import (
	"encoding/binary"
	"fmt"
)

// Header extension types (qcow2.rst).
const (
	ExtEnd           = 0x00000000
	ExtBackingFormat = 0xe2792aca
	ExtFeatureNames  = 0x6803f857
	ExtBitmaps       = 0x23852875
	ExtEncryption    = 0x0537be77
	ExtDataFile      = 0x44415441
)

// Feature types in the feature name table.
const (
	featureIncompatible = 0
	featureCompatible   = 1
	featureAutoclear    = 2
)

// Extension is one header extension as stored: its type and data
// (without padding).
type Extension struct {
	Type uint32
	Data []byte
}

// FeatureName is one entry of the feature name table.
type FeatureName struct {
	Type uint8 // 0 incompatible, 1 compatible, 2 autoclear
	Bit  uint8
	Name string
}

// EncryptionExt is the full disk encryption header extension: where the
// LUKS header lives in the image file.
type EncryptionExt struct {
	Offset uint64
	Length uint64
}

// BitmapsExt is the bitmaps header extension: where the bitmap directory
// lives.
type BitmapsExt struct {
	NbBitmaps           uint32
	DirectorySize       uint64
	DirectoryOffset     uint64
	extensionFileOffset int64
}

// Limits from QEMU's bitmap code.
const (
	maxBitmaps             = 65535
	maxBitmapDirectorySize = 64 << 20
)

// parseExtensions walks the extensions in buf[start:end].
func (h *Header) parseExtensions(path string, buf []byte, start, end int64) error {
	be := binary.BigEndian
	off := start
	for {
		if off+8 > end {
			// QEMU treats a missing end marker at the end of the area as
			// the end.
			return nil
		}
		typ := be.Uint32(buf[off:])
		length := int64(be.Uint32(buf[off+4:]))
		if typ == ExtEnd {
			return nil
		}
		dataOff := off + 8
		if length > end-dataOff {
			return headerError(path, fmt.Sprintf("header extension %#x length", typ), off+4, "%d bytes run past the header area ending at %#x", length, end)
		}
		data := buf[dataOff : dataOff+length]
		h.Extensions = append(h.Extensions, Extension{Type: typ, Data: append([]byte(nil), data...)})
		switch typ {
		case ExtBackingFormat:
			h.BackingFormat = string(data)
		case ExtFeatureNames:
			for i := 0; i+48 <= len(data); i += 48 {
				name := data[i+2 : i+48]
				n := 0
				for n < len(name) && name[n] != 0 {
					n++
				}
				h.FeatureNames = append(h.FeatureNames, FeatureName{Type: data[i], Bit: data[i+1], Name: string(name[:n])})
			}
		case ExtDataFile:
			h.DataFile = string(data)
		case ExtEncryption:
			if length != 16 {
				return headerError(path, "encryption header extension", off+4, "length %d, want 16", length)
			}
			h.Encryption = &EncryptionExt{Offset: be.Uint64(data), Length: be.Uint64(data[8:])}
		case ExtBitmaps:
			if length != 24 {
				return headerError(path, "bitmaps header extension", off+4, "length %d, want 24", length)
			}
			h.Bitmaps = &BitmapsExt{
				NbBitmaps:           be.Uint32(data),
				DirectorySize:       be.Uint64(data[8:]),
				DirectoryOffset:     be.Uint64(data[16:]),
				extensionFileOffset: dataOff,
			}
		}
		off = dataOff + (length+7)&^7
	}
}

// SetExtension replaces the data of the first extension of type typ, or
// appends one. The decoded fields are not updated; the write path sets
// both.
func (h *Header) SetExtension(typ uint32, data []byte) {
	for i := range h.Extensions {
		if h.Extensions[i].Type == typ {
			h.Extensions[i].Data = data
			return
		}
	}
	h.Extensions = append(h.Extensions, Extension{Type: typ, Data: data})
}

// RemoveExtension drops every extension of type typ.
func (h *Header) RemoveExtension(typ uint32) {
	out := h.Extensions[:0]
	for _, e := range h.Extensions {
		if e.Type != typ {
			out = append(out, e)
		}
	}
	h.Extensions = out
}
