package qcow2

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
)

// Magic is the first four bytes of every qcow2 image.
const Magic = "QFI\xfb"

// Incompatible, compatible and autoclear feature bits (qcow2.rst).
const (
	IncompatDirty           = 1 << 0
	IncompatCorrupt         = 1 << 1
	IncompatDataFile        = 1 << 2
	IncompatCompressionType = 1 << 3
	IncompatExtendedL2      = 1 << 4
	incompatKnown           = IncompatDirty | IncompatCorrupt | IncompatDataFile | IncompatCompressionType | IncompatExtendedL2

	CompatLazyRefcounts = 1 << 0

	AutoclearBitmaps     = 1 << 0
	AutoclearDataFileRaw = 1 << 1
)

// Encryption methods (crypt_method).
const (
	CryptNone = 0
	CryptAES  = 1
	CryptLUKS = 2
)

// Compression types (compression_type).
const (
	CompressionDeflate = 0
	CompressionZstd    = 1
)

// Limits QEMU enforces; images beyond them are refused.
const (
	minClusterBits           = 9
	maxClusterBits           = 21
	maxL1Size                = 32 << 20 // bytes of active L1 table
	maxRefcountTable         = 8 << 20  // bytes of refcount table
	maxSnapshots             = 65536
	maxSnapshotsSize         = 1024 * maxSnapshots // bytes of snapshot table
	maxSnapshotExtra         = 1024
	maxBackingNameSize       = 1023
	maxRefcountOrder         = 6
	v2HeaderLength           = 72
	v3MinHeaderLength        = 104
	maxHostOffset      int64 = 1 << 56
)

// Header is the parsed qcow2 header with its extensions. The write path
// serialises it back with MarshalBinary, keeping unknown extensions.
type Header struct {
	Version               uint32
	BackingFileOffset     uint64
	BackingFileSize       uint32
	ClusterBits           uint32
	Size                  uint64
	CryptMethod           uint32
	L1Size                uint32
	L1TableOffset         uint64
	RefcountTableOffset   uint64
	RefcountTableClusters uint32
	NbSnapshots           uint32
	SnapshotsOffset       uint64
	// Version 3 fields (zero for version 2).
	IncompatibleFeatures uint64
	CompatibleFeatures   uint64
	AutoclearFeatures    uint64
	RefcountOrder        uint32 // always 4 for version 2
	HeaderLength         uint32 // 72 for version 2
	CompressionType      uint8
	// Bytes of the header past the fields above (header_length > 112);
	// kept so the header round-trips.
	Tail []byte

	// Extensions in file order, including the ones decoded below and
	// unknown ones (kept intact for rewriting).
	Extensions []Extension
	// Decoded extensions.
	BackingFormat string        // backing format extension, "" if absent
	FeatureNames  []FeatureName // feature name table
	DataFile      string        // external data file name, "" if absent
	Encryption    *EncryptionExt
	Bitmaps       *BitmapsExt
	// BackingFile is the backing file name as stored (not resolved).
	BackingFile string
}

// ClusterSize returns the cluster size in bytes.
func (h *Header) ClusterSize() int64 { return 1 << h.ClusterBits }

// RefcountBits returns the width of a refcount entry.
func (h *Header) RefcountBits() int { return 1 << h.RefcountOrder }

// ExtendedL2 reports whether L2 entries are 128 bits with subclusters.
func (h *Header) ExtendedL2() bool { return h.IncompatibleFeatures&IncompatExtendedL2 != 0 }

// L2Entries returns the number of entries in one L2 table.
func (h *Header) L2Entries() int64 {
	if h.ExtendedL2() {
		return h.ClusterSize() / 16
	}
	return h.ClusterSize() / 8
}

// featureName returns the name of an incompatible/compatible/autoclear
// feature bit from the feature name table, or "" when it has none.
func (h *Header) featureName(typ uint8, bit uint8) string {
	for _, f := range h.FeatureNames {
		if f.Type == typ && f.Bit == bit {
			return f.Name
		}
	}
	return ""
}

// headerError builds a CorruptError for a header field.
func headerError(path, field string, off int64, format string, args ...any) error {
	return &CorruptError{Path: path, Field: field, Offset: off, Reason: fmt.Sprintf(format, args...)}
}

// parseHeader decodes and validates the header in buf (the first cluster
// of the file, or the whole file if shorter). fileSize bounds the tables.
func parseHeader(path string, buf []byte, fileSize int64) (*Header, error) {
	h, err := decodeHeader(path, buf)
	if err != nil {
		return nil, err
	}
	if err := validateHeader(path, h, buf, fileSize); err != nil {
		return nil, err
	}
	return h, nil
}

// decodeHeader decodes the header fields, its extensions and the backing
// file name from buf. It checks only what decoding depends on: the magic,
// the version, the cluster size and the header length; validateHeader
// checks the rest.
func decodeHeader(path string, buf []byte) (*Header, error) {
	if len(buf) < 4 || string(buf[:4]) != Magic {
		return nil, fmt.Errorf("%w: %s", ErrNotQcow2, path)
	}
	if len(buf) < v2HeaderLength {
		return nil, headerError(path, "header", 0, "file is %d bytes, shorter than a qcow2 header", len(buf))
	}
	be := binary.BigEndian
	h := &Header{
		Version:               be.Uint32(buf[4:]),
		BackingFileOffset:     be.Uint64(buf[8:]),
		BackingFileSize:       be.Uint32(buf[16:]),
		ClusterBits:           be.Uint32(buf[20:]),
		Size:                  be.Uint64(buf[24:]),
		CryptMethod:           be.Uint32(buf[32:]),
		L1Size:                be.Uint32(buf[36:]),
		L1TableOffset:         be.Uint64(buf[40:]),
		RefcountTableOffset:   be.Uint64(buf[48:]),
		RefcountTableClusters: be.Uint32(buf[56:]),
		NbSnapshots:           be.Uint32(buf[60:]),
		SnapshotsOffset:       be.Uint64(buf[64:]),
	}
	switch h.Version {
	case 2:
		h.RefcountOrder = 4
		h.HeaderLength = v2HeaderLength
	case 3:
		if len(buf) < v3MinHeaderLength {
			return nil, headerError(path, "header", 0, "file is %d bytes, shorter than a version 3 header", len(buf))
		}
		h.IncompatibleFeatures = be.Uint64(buf[72:])
		h.CompatibleFeatures = be.Uint64(buf[80:])
		h.AutoclearFeatures = be.Uint64(buf[88:])
		h.RefcountOrder = be.Uint32(buf[96:])
		h.HeaderLength = be.Uint32(buf[100:])
	default:
		return nil, fmt.Errorf("%w: %s: qcow2 version %d", ErrUnsupportedFeature, path, h.Version)
	}
	if h.ClusterBits < minClusterBits || h.ClusterBits > maxClusterBits {
		return nil, headerError(path, "cluster_bits", 20, "%d is outside %d..%d", h.ClusterBits, minClusterBits, maxClusterBits)
	}
	cs := h.ClusterSize()
	if h.Version == 3 {
		if h.HeaderLength < v3MinHeaderLength {
			return nil, headerError(path, "header_length", 100, "%d is shorter than %d", h.HeaderLength, v3MinHeaderLength)
		}
		if int64(h.HeaderLength) > cs {
			return nil, headerError(path, "header_length", 100, "%d exceeds the cluster size %d", h.HeaderLength, cs)
		}
		if int(h.HeaderLength) > len(buf) {
			return nil, headerError(path, "header_length", 100, "%d runs past the end of the file", h.HeaderLength)
		}
		if h.HeaderLength > 104 {
			h.CompressionType = buf[104]
		}
		if h.HeaderLength > 112 {
			h.Tail = append([]byte(nil), buf[112:h.HeaderLength]...)
		}
		if h.RefcountOrder > maxRefcountOrder {
			return nil, headerError(path, "refcount_order", 96, "%d exceeds %d", h.RefcountOrder, maxRefcountOrder)
		}
	}
	// Extensions come before anything else so that unknown incompatible
	// features can be reported by name.
	extEnd := cs
	if h.BackingFileOffset != 0 && h.BackingFileOffset < uint64(extEnd) {
		extEnd = int64(h.BackingFileOffset)
	}
	if extEnd > int64(len(buf)) {
		extEnd = int64(len(buf))
	}
	if err := h.parseExtensions(path, buf, int64(h.HeaderLength), extEnd); err != nil {
		return nil, err
	}
	// Backing file name, when it lies inside buf (validateHeader says why
	// not otherwise).
	if end := h.BackingFileOffset + uint64(h.BackingFileSize); h.BackingFileOffset != 0 && h.BackingFileSize <= maxBackingNameSize &&
		h.BackingFileOffset <= uint64(cs) && end <= uint64(cs) && end <= uint64(len(buf)) {
		h.BackingFile = string(buf[h.BackingFileOffset:end])
	}
	return h, nil
}

// validateHeader checks the decoded header h against what this package
// supports and against the file: features, compression and encryption,
// the backing file name and the metadata tables. buf is what h was
// decoded from; fileSize bounds the tables.
func validateHeader(path string, h *Header, buf []byte, fileSize int64) error {
	cs := h.ClusterSize()
	if unknown := h.IncompatibleFeatures &^ incompatKnown; unknown != 0 {
		fe := &FeatureError{Path: path}
		for unknown != 0 {
			bit := uint8(bits.TrailingZeros64(unknown))
			unknown &^= 1 << bit
			name := h.featureName(featureIncompatible, bit)
			if name == "" {
				name = fmt.Sprintf("unknown feature bit %d", bit)
			} else {
				name = fmt.Sprintf("%s (bit %d)", name, bit)
			}
			fe.Features = append(fe.Features, name)
		}
		return fe
	}
	if h.ExtendedL2() && h.ClusterBits < 14 {
		return headerError(path, "cluster_bits", 20, "extended L2 entries need clusters of at least 16 KiB, not %d bytes", cs)
	}
	switch h.CompressionType {
	case CompressionDeflate:
		if h.IncompatibleFeatures&IncompatCompressionType != 0 {
			return headerError(path, "compression_type", 104, "compression type bit set but the type is deflate")
		}
	case CompressionZstd:
		if h.IncompatibleFeatures&IncompatCompressionType == 0 {
			return headerError(path, "compression_type", 104, "zstd without the compression type incompatible bit")
		}
	default:
		return fmt.Errorf("%w: %s: compression type %d", ErrUnsupportedFeature, path, h.CompressionType)
	}
	switch h.CryptMethod {
	case CryptNone, CryptAES, CryptLUKS:
	default:
		return fmt.Errorf("%w: %s: encryption method %d", ErrUnsupportedFeature, path, h.CryptMethod)
	}
	if h.CryptMethod == CryptLUKS && h.Encryption == nil {
		return headerError(path, "crypt_method", 32, "LUKS encryption without a full disk encryption header extension")
	}
	if h.Size > math.MaxInt64 {
		return headerError(path, "size", 24, "%d does not fit in 63 bits", h.Size)
	}

	// Backing file name.
	if h.BackingFileOffset != 0 {
		if h.BackingFileSize > maxBackingNameSize {
			return headerError(path, "backing_file_size", 16, "%d exceeds %d", h.BackingFileSize, maxBackingNameSize)
		}
		if h.BackingFileOffset > uint64(cs) || h.BackingFileOffset+uint64(h.BackingFileSize) > uint64(cs) {
			return headerError(path, "backing_file_offset", 8, "name at %#x+%d lies outside the first cluster", h.BackingFileOffset, h.BackingFileSize)
		}
		if h.BackingFileOffset+uint64(h.BackingFileSize) > uint64(len(buf)) {
			return headerError(path, "backing_file_offset", 8, "name at %#x+%d runs past the end of the file", h.BackingFileOffset, h.BackingFileSize)
		}
	}

	// L1 table.
	l2Entries := uint64(h.L2Entries())
	clusters := (h.Size + uint64(cs) - 1) >> h.ClusterBits
	needL1 := (clusters + l2Entries - 1) / l2Entries
	if uint64(h.L1Size)*8 > maxL1Size {
		return headerError(path, "l1_size", 36, "%d entries exceed the %d MiB limit", h.L1Size, maxL1Size>>20)
	}
	if uint64(h.L1Size) < needL1 {
		return headerError(path, "l1_size", 36, "%d entries cannot map %d bytes (need %d)", h.L1Size, h.Size, needL1)
	}
	if err := checkTable(path, "l1_table_offset", 40, h.L1TableOffset, uint64(h.L1Size)*8, cs, fileSize); err != nil {
		return err
	}
	// Refcount table.
	if uint64(h.RefcountTableClusters)<<h.ClusterBits > maxRefcountTable {
		return headerError(path, "refcount_table_clusters", 56, "%d clusters exceed the %d MiB limit", h.RefcountTableClusters, maxRefcountTable>>20)
	}
	if err := checkTable(path, "refcount_table_offset", 48, h.RefcountTableOffset, uint64(h.RefcountTableClusters)<<h.ClusterBits, cs, fileSize); err != nil {
		return err
	}
	// Snapshot table.
	if h.NbSnapshots > maxSnapshots {
		return headerError(path, "nb_snapshots", 60, "%d exceeds %d", h.NbSnapshots, maxSnapshots)
	}
	if err := checkTable(path, "snapshots_offset", 64, h.SnapshotsOffset, uint64(h.NbSnapshots)*snapshotHeaderSize, cs, fileSize); err != nil {
		return err
	}
	return nil
}

// checkTable validates a metadata table at off of size bytes: cluster
// aligned, no overflow, inside the file.
func checkTable(path, field string, fieldOff int64, off, size uint64, clusterSize, fileSize int64) error {
	if size == 0 {
		return nil
	}
	if off%uint64(clusterSize) != 0 {
		return headerError(path, field, fieldOff, "%#x is not aligned to the cluster size %d", off, clusterSize)
	}
	if off == 0 {
		return headerError(path, field, fieldOff, "table of %d bytes at offset 0 overlaps the header", size)
	}
	if off > math.MaxInt64-size || off+size > uint64(fileSize) {
		return headerError(path, field, fieldOff, "table %#x+%d lies past the end of the file (%d bytes)", off, size, fileSize)
	}
	return nil
}

// MarshalBinary encodes the header, its extensions (in order, unknown
// ones intact) and the backing file name as they are laid out at the
// start of cluster 0. BackingFileOffset and BackingFileSize are derived:
// the name follows the extensions.
func (h *Header) MarshalBinary() ([]byte, error) {
	hl := int(h.HeaderLength)
	if h.Version == 2 {
		hl = v2HeaderLength
	} else if hl < v3MinHeaderLength {
		hl = v3MinHeaderLength
	}
	if h.Version == 3 && hl < 112 && (h.CompressionType != 0 || len(h.Tail) > 0) {
		hl = 112
	}
	if h.Version == 3 && len(h.Tail) > 0 {
		hl = 112 + len(h.Tail)
	}
	buf := make([]byte, hl, hl+256)
	be := binary.BigEndian
	copy(buf, Magic)
	be.PutUint32(buf[4:], h.Version)
	be.PutUint32(buf[20:], h.ClusterBits)
	be.PutUint64(buf[24:], h.Size)
	be.PutUint32(buf[32:], h.CryptMethod)
	be.PutUint32(buf[36:], h.L1Size)
	be.PutUint64(buf[40:], h.L1TableOffset)
	be.PutUint64(buf[48:], h.RefcountTableOffset)
	be.PutUint32(buf[56:], h.RefcountTableClusters)
	be.PutUint32(buf[60:], h.NbSnapshots)
	be.PutUint64(buf[64:], h.SnapshotsOffset)
	if h.Version == 3 {
		be.PutUint64(buf[72:], h.IncompatibleFeatures)
		be.PutUint64(buf[80:], h.CompatibleFeatures)
		be.PutUint64(buf[88:], h.AutoclearFeatures)
		be.PutUint32(buf[96:], h.RefcountOrder)
		be.PutUint32(buf[100:], uint32(hl))
		if hl > 104 {
			buf[104] = h.CompressionType
		}
		copy(buf[min(112, hl):], h.Tail)
	}
	for _, e := range h.Extensions {
		buf = be.AppendUint32(buf, e.Type)
		buf = be.AppendUint32(buf, uint32(len(e.Data)))
		buf = append(buf, e.Data...)
		// Pad the data, not the file offset: a v3 header_length need
		// not be a multiple of 8, and readers step over each
		// extension's data rounded up to 8 bytes.
		buf = append(buf, make([]byte, -len(e.Data)&7)...)
	}
	buf = append(buf, 0, 0, 0, 0, 0, 0, 0, 0) // end of extensions
	if h.BackingFile != "" {
		if len(h.BackingFile) > maxBackingNameSize {
			return nil, fmt.Errorf("qcow2: backing file name of %d bytes exceeds %d", len(h.BackingFile), maxBackingNameSize)
		}
		be.PutUint64(buf[8:], uint64(len(buf)))
		be.PutUint32(buf[16:], uint32(len(h.BackingFile)))
		buf = append(buf, h.BackingFile...)
	}
	if int64(len(buf)) > h.ClusterSize() {
		return nil, fmt.Errorf("qcow2: header of %d bytes does not fit in a cluster of %d", len(buf), h.ClusterSize())
	}
	return buf, nil
}
