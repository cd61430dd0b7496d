package qcow2

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// patch describes a modification of a fixture image.
type patch func(t *testing.T, b []byte) []byte

func put32(off int, v uint32) patch {
	return func(t *testing.T, b []byte) []byte { binary.BigEndian.PutUint32(b[off:], v); return b }
}

func put64(off int, v uint64) patch {
	return func(t *testing.T, b []byte) []byte { binary.BigEndian.PutUint64(b[off:], v); return b }
}

// l1Entry0 and l2Entry0 locate the first L1 and L2 entries of an image.
func l1Entry0(b []byte) int { return int(binary.BigEndian.Uint64(b[40:])) }

func l2Entry0(b []byte) int {
	return int(l1Entry(binary.BigEndian.Uint64(b[l1Entry0(b):])).l2Offset())
}

func TestDamaged(t *testing.T) {
	base := fixture("chain/base.qcow2") // v3, 4 KiB clusters, data at guest 0
	zlib := fixture("qcow2/zlib.qcow2")
	cases := []struct {
		name    string
		src     string
		patch   patch
		openErr error  // expected from Open
		readErr error  // expected from reading the first cluster
		field   string // CorruptError.Field, when a CorruptError is expected
		offset  int64  // CorruptError.Offset
		text    string // substring of the message
	}{
		{name: "magic", src: base, patch: put32(0, 0x12345678), openErr: ErrNotQcow2},
		{name: "truncated header", src: base, patch: func(t *testing.T, b []byte) []byte { return b[:50] }, openErr: ErrCorrupt, field: "header"},
		{name: "version 4", src: base, patch: put32(4, 4), openErr: ErrUnsupportedFeature, text: "version 4"},
		{name: "cluster_bits 8", src: base, patch: put32(20, 8), openErr: ErrCorrupt, field: "cluster_bits", offset: 20},
		{name: "cluster_bits 22", src: base, patch: put32(20, 22), openErr: ErrCorrupt, field: "cluster_bits", offset: 20},
		{name: "header_length short", src: base, patch: put32(100, 96), openErr: ErrCorrupt, field: "header_length", offset: 100},
		{name: "header_length past cluster", src: base, patch: put32(100, 8192), openErr: ErrCorrupt, field: "header_length", offset: 100},
		{name: "refcount_order 7", src: base, patch: put32(96, 7), openErr: ErrCorrupt, field: "refcount_order", offset: 96},
		{name: "unknown incompatible bit", src: base, patch: put64(72, 1<<40), openErr: ErrUnsupportedFeature, text: "unknown feature bit 40"},
		{name: "unknown incompatible bit named", src: base, patch: func(t *testing.T, b []byte) []byte {
			binary.BigEndian.PutUint64(b[72:], 1<<9)
			// A feature name table naming incompatible bit 9.
			binary.BigEndian.PutUint32(b[112:], ExtFeatureNames)
			binary.BigEndian.PutUint32(b[116:], 48)
			entry := make([]byte, 48)
			entry[0], entry[1] = featureIncompatible, 9
			copy(entry[2:], "time travel")
			copy(b[120:], entry)
			clear(b[168:176])
			return b
		}, openErr: ErrUnsupportedFeature, text: "time travel (bit 9)"},
		{name: "l1_size too small", src: base, patch: put32(36, 0), openErr: ErrCorrupt, field: "l1_size", offset: 36},
		{name: "l1_size over 32 MiB", src: base, patch: put32(36, 5<<20), openErr: ErrCorrupt, field: "l1_size", offset: 36},
		{name: "l1_table_offset unaligned", src: base, patch: put64(40, 4096+8), openErr: ErrCorrupt, field: "l1_table_offset", offset: 40},
		{name: "l1_table_offset past end", src: base, patch: put64(40, 1<<40), openErr: ErrCorrupt, field: "l1_table_offset", offset: 40},
		{name: "l1_table_offset overflow", src: base, patch: put64(40, 0xfffffffffffff000), openErr: ErrCorrupt, field: "l1_table_offset", offset: 40},
		{name: "refcount table too big", src: base, patch: put32(56, 1<<20), openErr: ErrCorrupt, field: "refcount_table_clusters", offset: 56},
		{name: "refcount_table_offset unaligned", src: base, patch: put64(48, 100), openErr: ErrCorrupt, field: "refcount_table_offset", offset: 48},
		{name: "too many snapshots", src: base, patch: put32(60, 70000), openErr: ErrCorrupt, field: "nb_snapshots", offset: 60},
		{name: "snapshot table past end", src: base, patch: func(t *testing.T, b []byte) []byte {
			binary.BigEndian.PutUint32(b[60:], 1000)
			binary.BigEndian.PutUint64(b[64:], 1<<30)
			return b
		}, openErr: ErrCorrupt, field: "snapshots_offset", offset: 64},
		{name: "backing name too long", src: base, patch: func(t *testing.T, b []byte) []byte {
			binary.BigEndian.PutUint64(b[8:], 512)
			binary.BigEndian.PutUint32(b[16:], 2000)
			return b
		}, openErr: ErrCorrupt, field: "backing_file_size", offset: 16},
		{name: "backing name outside cluster", src: base, patch: func(t *testing.T, b []byte) []byte {
			binary.BigEndian.PutUint64(b[8:], 4000)
			binary.BigEndian.PutUint32(b[16:], 200)
			return b
		}, openErr: ErrCorrupt, field: "backing_file_offset", offset: 8},
		{name: "compression type 2", src: base, patch: func(t *testing.T, b []byte) []byte { b[104] = 2; return b }, openErr: ErrUnsupportedFeature, text: "compression type 2"},
		{name: "zstd without incompatible bit", src: base, patch: func(t *testing.T, b []byte) []byte { b[104] = 1; return b }, openErr: ErrCorrupt, field: "compression_type", offset: 104},
		{name: "crypt_method 3", src: base, patch: put32(32, 3), openErr: ErrUnsupportedFeature, text: "encryption method 3"},
		{name: "extended L2 with small clusters", src: base, patch: put64(72, IncompatExtendedL2), openErr: ErrCorrupt, field: "cluster_bits"},
		{name: "extension past header area", src: base, patch: func(t *testing.T, b []byte) []byte {
			binary.BigEndian.PutUint32(b[112:], 0x12345678)
			binary.BigEndian.PutUint32(b[116:], 1<<20)
			return b
		}, openErr: ErrCorrupt, field: "header extension 0x12345678 length", offset: 116},
		{name: "L2 table past end", src: base, patch: func(t *testing.T, b []byte) []byte {
			binary.BigEndian.PutUint64(b[l1Entry0(b):], 1<<40|entryCopied)
			return b
		}, readErr: ErrCorrupt, field: "L1 entry", text: "past the end"},
		{name: "L2 table unaligned", src: base, patch: func(t *testing.T, b []byte) []byte {
			binary.BigEndian.PutUint64(b[l1Entry0(b):], uint64(l2Entry0(b))+512)
			return b
		}, readErr: ErrCorrupt, field: "L1 entry", text: "not cluster aligned"},
		{name: "data cluster unaligned", src: base, patch: func(t *testing.T, b []byte) []byte {
			off := l2Entry0(b)
			e := binary.BigEndian.Uint64(b[off:])
			binary.BigEndian.PutUint64(b[off:], e+512)
			return b
		}, readErr: ErrCorrupt, field: "L2 entry", text: "not cluster aligned"},
		{name: "compressed garbage", src: zlib, patch: func(t *testing.T, b []byte) []byte {
			e := binary.BigEndian.Uint64(b[l2Entry0(b):])
			shift := 62 - (12 - 8)
			hoff := int(e & (1<<shift - 1))
			for i := range 64 {
				b[hoff+i] = 0xff
			}
			return b
		}, readErr: ErrCorrupt, field: "compressed cluster"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b, err := os.ReadFile(c.src)
			if err != nil {
				t.Fatal(err)
			}
			b = c.patch(t, b)
			p := filepath.Join(t.TempDir(), "damaged.qcow2")
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
			img, err := Open(p, Options{Format: FormatQcow2, NoBacking: true})
			if err == nil {
				defer img.Close()
				if c.openErr != nil {
					t.Fatalf("Open succeeded, want %v", c.openErr)
				}
				buf := make([]byte, img.ClusterSize())
				_, err = img.ReadAt(buf, 0)
				if !errors.Is(err, c.readErr) {
					t.Fatalf("ReadAt: %v, want %v", err, c.readErr)
				}
			} else if !errors.Is(err, c.openErr) || c.openErr == nil {
				t.Fatalf("Open: %v, want %v", err, c.openErr)
			}
			if c.field != "" {
				var ce *CorruptError
				if !errors.As(err, &ce) {
					t.Fatalf("%v is not a *CorruptError", err)
				}
				if ce.Field != c.field || (c.offset != 0 && ce.Offset != c.offset) {
					t.Errorf("CorruptError field %q offset %#x, want %q %#x (%v)", ce.Field, ce.Offset, c.field, c.offset, err)
				}
				if ce.Path != p {
					t.Errorf("error names %q, not the image %q", ce.Path, p)
				}
			}
			if c.text != "" && !strings.Contains(err.Error(), c.text) {
				t.Errorf("error %q does not mention %q", err, c.text)
			}
		})
	}
}
