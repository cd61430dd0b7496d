package qcow2

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// FuzzOpen feeds arbitrary files to Open and, when they open, to Info,
// Map, Extents and reads. Nothing may panic, hang or allocate without
// bound; errors are fine. Seeded with the qemu-img generated fixtures.
func FuzzOpen(f *testing.F) {
	for _, name := range fixtures {
		b, err := os.ReadFile(fixture(name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(Magic))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(dir, "fuzz.qcow2")
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		// NoBacking: fuzzed backing names must not open real files.
		img, err := Open(p, Options{NoBacking: true, ForceShare: true, L2CacheSize: 1 << 20})
		if err != nil {
			return
		}
		defer img.Close()
		img.Info()
		if img.Size() <= 16<<20 {
			img.Map()
		}
		buf := make([]byte, 64<<10)
		for _, off := range []int64{0, img.Size() / 2, img.Size() - 1000} {
			if off >= 0 {
				img.ReadAt(buf, off)
			}
		}
		img.Extents(0, min(img.Size(), 64<<20))
	})
}

// FuzzParseHeader runs the header parser (extensions, feature names,
// limits) without file I/O, and re-encodes what it accepts: the encoding
// must parse again to the same extensions and backing name.
func FuzzParseHeader(f *testing.F) {
	for _, name := range fixtures {
		b, err := os.ReadFile(fixture(name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b[:min(len(b), 4096)], int64(len(b)))
	}
	f.Fuzz(func(t *testing.T, data []byte, fileSize int64) {
		h, err := parseHeader("fuzz", data, fileSize)
		if err != nil {
			return
		}
		out, err := h.MarshalBinary()
		if err != nil {
			return
		}
		buf := make([]byte, max(len(data), len(out)))
		copy(buf, out)
		h2, err := parseHeader("fuzz", buf, fileSize)
		if err != nil {
			t.Fatalf("re-encoded header does not parse: %v", err)
		}
		if h2.BackingFile != h.BackingFile || len(h2.Extensions) != len(h.Extensions) {
			t.Fatalf("round trip changed the header: %+v -> %+v", h, h2)
		}
	})
}

// TestMarshalUnalignedHeaderLength: a v3 header_length that is not a
// multiple of 8 puts the extensions at unaligned offsets; re-encoding must
// keep every extension (FuzzParseHeader found this losing them).
func TestMarshalUnalignedHeaderLength(t *testing.T) {
	h := &Header{Version: 3, ClusterBits: 16, Size: 1 << 20, RefcountOrder: 4, HeaderLength: 106,
		L1Size: 1, L1TableOffset: 3 << 16, RefcountTableOffset: 1 << 16, RefcountTableClusters: 1}
	h.Extensions = []Extension{{Type: 0x1234, Data: nil}, {Type: 0x5678, Data: []byte{1, 2, 3}}, {Type: 0x9abc, Data: nil}}
	out, err := h.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if got := binary.BigEndian.Uint32(out[100:]); got != 106 {
		t.Fatalf("header_length %d", got)
	}
	h2, err := parseHeader("t", append(out, make([]byte, 512)...), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(h.Extensions, h2.Extensions, cmpopts.EquateEmpty()); diff != "" {
		t.Fatalf("extensions changed (-want +got):\n%s", diff)
	}
}
