package qcow2

import (
	"math/rand/v2"
	"testing"
)

// TestRefcountCodec stores random refcounts of every width and reads them
// back, checking that neighbours keep their values.
func TestRefcountCodec(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for order := uint32(0); order <= maxRefcountOrder; order++ {
		const n = 64
		blk := make([]byte, n<<order/8)
		want := make([]uint64, n)
		for range 4 * n {
			i := r.Int64N(n)
			v := r.Uint64() & refcountMax(order)
			setRefcount(blk, order, i, v)
			want[i] = v
			for j := range int64(n) {
				if got := getRefcount(blk, order, j); got != want[j] {
					t.Fatalf("order %d: entry %d = %d after storing %d at %d, want %d", order, j, got, v, i, want[j])
				}
			}
		}
	}
}

func TestRefcountMax(t *testing.T) {
	want := []uint64{1, 3, 15, 255, 65535, 1<<32 - 1, 1<<64 - 1}
	for order, w := range want {
		if got := refcountMax(uint32(order)); got != w {
			t.Errorf("refcountMax(%d) = %d, want %d", order, got, w)
		}
	}
}

// TestL2EntryCodec checks the flag accessors and that compressedEntry and
// compressedLocation are inverses for every cluster size.
func TestL2EntryCodec(t *testing.T) {
	e := dataEntry(0x12340000)
	if e.host() != 0x12340000 || !e.copied() || e.compressed() || e.zero() {
		t.Errorf("dataEntry: host %#x copied %v compressed %v zero %v", e.host(), e.copied(), e.compressed(), e.zero())
	}
	if z := l2Entry(entryZero | 0x10000); !z.zero() || z.host() != 0x10000 || z.copied() {
		t.Errorf("zero entry %#x decoded wrongly", uint64(z))
	}
	for cb := uint32(minClusterBits); cb <= maxClusterBits; cb++ {
		for _, c := range []struct{ off, size int64 }{{0x10000, 1}, {0x10001, 511}, {0x101ff, 2}, {1<<40 + 77, 1 << cb}} {
			e := compressedEntry(cb, c.off, c.size)
			if !e.compressed() || e.copied() {
				t.Fatalf("cluster bits %d: compressedEntry flags %#x", cb, uint64(e))
			}
			off, size := e.compressedLocation(cb)
			if off != c.off || (off+size)%512 != 0 || size < c.size || size >= c.size+512 {
				t.Errorf("cluster bits %d: %d bytes at %#x decode as %d bytes at %#x", cb, c.size, c.off, size, off)
			}
		}
	}
	l1 := tableEntry(0x50000)
	if l1 != 0x50000|1<<63 || l1.l2Offset() != 0x50000 || !l1.copied() {
		t.Errorf("tableEntry: %#x: offset %#x copied %v", uint64(l1), l1.l2Offset(), l1.copied())
	}
	if l1 := l1Entry(0x60000); l1.l2Offset() != 0x60000 || l1.copied() {
		t.Errorf("l1Entry without COPIED: offset %#x copied %v", l1.l2Offset(), l1.copied())
	}
	if rt := refTableEntry(1<<60 | 0x30000 | 0x1ff); rt.blockOffset() != 1<<60|0x30000 {
		t.Errorf("refTableEntry: block offset %#x", rt.blockOffset())
	}
}
