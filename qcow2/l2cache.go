package qcow2

import (
	"encoding/binary"
	"sync"
	"sync/atomic"
)

// DefaultL2CacheSize is the memory the L2 cache may use when
// Options.L2CacheSize is 0: 32 MiB of decoded tables, which covers 256 GiB
// of guest at 64 KiB clusters (one 64 KiB table maps 512 MiB).
const DefaultL2CacheSize = 32 << 20

// l2Table is one decoded L2 table: host-endian entries, two words per
// entry (descriptor, subcluster bitmap) with extended L2. Tables are
// immutable once published; a writer replaces the whole table.
type l2Table struct {
	entries []uint64
	ref     atomic.Bool // CLOCK reference bit
	dirty   atomic.Bool // modified by the writer, not yet on disk: never evicted
	// seq is odd while the writer updates an extended entry (descriptor
	// and bitmap) in place; readers retry around it (a seqlock).
	seq atomic.Uint64
}

// l2Cache maps L1 indices to decoded L2 tables. Lookups are lock-free (one
// atomic load); loads and evictions take mu. Memory is bounded by
// maxTables tables; eviction uses the CLOCK algorithm, but the hot lookup
// path (Image.l2Entry) does not set reference bits, so in practice tables
// leave in load order after one second chance; the default size covers
// 256 GiB of guest, so ordinary images never evict. A reader holding an
// evicted table keeps using it safely (tables are immutable).
type l2Cache struct {
	slots     []atomic.Pointer[l2Table] // by L1 index
	mu        sync.Mutex
	resident  []uint32 // L1 indices of cached tables (CLOCK ring)
	hand      int
	maxTables int
	gen       atomic.Uint64 // bumped by the writer after rewriting tables on disk
}

func newL2Cache(l1Size int, tableBytes, budget int64) *l2Cache {
	if budget <= 0 {
		budget = DefaultL2CacheSize
	}
	maxTables := int(budget / tableBytes)
	if maxTables < 2 {
		maxTables = 2
	}
	if maxTables > l1Size {
		maxTables = max(l1Size, 1)
	}
	return &l2Cache{slots: make([]atomic.Pointer[l2Table], l1Size), maxTables: maxTables}
}

// get returns the cached table for L1 index i, or nil.
func (c *l2Cache) get(i int) *l2Table {
	t := c.slots[i].Load()
	if t != nil && !t.ref.Load() {
		t.ref.Store(true)
	}
	return t
}

// put publishes t for L1 index i, evicting another table if the cache is
// full. If another goroutine published a table first, that one wins and
// is returned.
func (c *l2Cache) put(i int, t *l2Table) *l2Table {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.slots[i].Load(); old != nil {
		return old
	}
	if len(c.resident) >= c.maxTables {
		for tries := 0; ; tries++ {
			if tries > 2*len(c.resident) {
				c.resident = append(c.resident, uint32(i)) // all dirty: grow until the writer flushes
				break
			}
			if c.hand >= len(c.resident) {
				c.hand = 0
			}
			victim := c.resident[c.hand]
			vt := c.slots[victim].Load()
			if vt != nil && (vt.ref.Load() || vt.dirty.Load()) {
				vt.ref.Store(false)
				c.hand++
				continue
			}
			c.slots[victim].Store(nil)
			c.resident[c.hand] = uint32(i)
			c.hand++
			break
		}
	} else {
		c.resident = append(c.resident, uint32(i))
	}
	t.ref.Store(true)
	c.slots[i].Store(t)
	return t
}

// invalidate drops the table of L1 index i (for the write path).
func (c *l2Cache) invalidate(i int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.slots[i].Store(nil)
	for k, v := range c.resident {
		if v == uint32(i) {
			c.resident = append(c.resident[:k], c.resident[k+1:]...)
			if c.hand > k {
				c.hand--
			}
			break
		}
	}
}

// decodeTable converts a big-endian table into host-endian words.
func decodeTable(raw []byte) []uint64 {
	out := make([]uint64, len(raw)/8)
	for i := range out {
		out[i] = binary.BigEndian.Uint64(raw[i*8:])
	}
	return out
}

// encodeTable converts host-endian words into a big-endian table.
func encodeTable(t []uint64) []byte {
	raw := make([]byte, len(t)*8)
	for i, e := range t {
		binary.BigEndian.PutUint64(raw[i*8:], e)
	}
	return raw
}

// replace publishes t as the table of L1 index i even if one is cached,
// making it resident. Dirty tables are never evicted (put skips them),
// so the cache may exceed its budget until the next flush.
func (c *l2Cache) replace(i int, t *l2Table) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t.ref.Store(true)
	if c.slots[i].Load() == nil {
		c.resident = append(c.resident, uint32(i))
	}
	c.slots[i].Store(t)
}

// bump tells in-flight loads from disk that tables were rewritten: a
// load that started before must not publish what it read.
func (c *l2Cache) bump() { c.gen.Add(1) }

// budget returns the memory budget the cache was made with.
func (c *l2Cache) budget(tableBytes int64) int64 { return int64(c.maxTables) * tableBytes }
