package qcow2

import (
	"encoding/binary"
	"fmt"
)

// refBlock is one refcount block as stored (big-endian, packed).
type refBlock struct {
	data  []byte
	dirty bool
}

// refcounts is the writable view of an image's refcount structures. It
// keeps every refcount block it touched in memory and writes dirty ones
// back on flush, so refcounts reach the disk before the L2 tables that
// use them (see flush.go).
//
// refcounts is not safe for concurrent use: the writer's metadata mutex
// guards it.
type refcounts struct {
	st       storage
	path     string
	cb       uint32 // cluster bits
	cs       int64
	order    uint32
	maxVal   uint64
	perBlock int64 // entries per refcount block

	table      []uint64 // refcount table entries, len = tableClusters*cs/8
	tableOff   int64
	tableDirty bool
	// tableMoved: the table lives at tableOff now, but the header still
	// names oldTableOff; flush writes the table and then the header.
	tableMoved       bool
	oldTableOff      int64
	oldTableClusters int64

	blocks map[int64]*refBlock // by refcount table index

	// end is the number of clusters in use or allocated: every cluster at
	// or past it has refcount 0.
	end int64
	// freeHint is a cluster index at or below the first free cluster.
	freeHint int64

	// meta records which clusters hold metadata (overlap guard).
	meta *metaMap
}

func newRefcounts(st storage, path string, h *Header, fileSize int64, meta *metaMap) (*refcounts, error) {
	r := &refcounts{
		st:       st,
		path:     path,
		cb:       h.ClusterBits,
		cs:       h.ClusterSize(),
		order:    h.RefcountOrder,
		perBlock: h.ClusterSize() * 8 >> h.RefcountOrder,
		tableOff: int64(h.RefcountTableOffset),
		blocks:   map[int64]*refBlock{},
		meta:     meta,
	}
	r.maxVal = refcountMax(r.order)
	raw := make([]byte, int64(h.RefcountTableClusters)<<h.ClusterBits)
	if err := readFull(st, raw, r.tableOff); err != nil {
		return nil, fmt.Errorf("qcow2: reading refcount table of %s: %w", path, err)
	}
	r.table = decodeTable(raw)
	r.end = (fileSize + r.cs - 1) >> r.cb
	for i, e := range r.table {
		off := refTableEntry(e).blockOffset()
		if off == 0 {
			continue
		}
		if off%r.cs != 0 {
			return nil, &CorruptError{Path: path, Field: "refcount table entry", Offset: r.tableOff + int64(i)*8, Reason: fmt.Sprintf("refcount block offset %#x is not cluster aligned", off)}
		}
		if off >= maxHostOffset {
			return nil, &CorruptError{Path: path, Field: "refcount table entry", Offset: r.tableOff + int64(i)*8, Reason: fmt.Sprintf("refcount block offset %#x is out of range", off)}
		}
		r.end = max(r.end, off>>r.cb+1)
		meta.add(off>>r.cb, 1, metaRefBlock)
	}
	return r, nil
}

// block returns the refcount block for table index idx, loading it, or
// nil when the table has no block there.
func (r *refcounts) block(idx int64) (*refBlock, error) {
	if b := r.blocks[idx]; b != nil {
		return b, nil
	}
	if idx >= int64(len(r.table)) {
		return nil, nil
	}
	off := refTableEntry(r.table[idx]).blockOffset()
	if off == 0 {
		return nil, nil
	}
	b := &refBlock{data: make([]byte, r.cs)}
	if err := readFull(r.st, b.data, off); err != nil {
		return nil, fmt.Errorf("qcow2: reading refcount block at %#x of %s: %w", off, r.path, err)
	}
	r.blocks[idx] = b
	return b, nil
}

func (r *refcounts) getIn(b *refBlock, i int64) uint64 {
	return getRefcount(b.data, r.order, i)
}

func (r *refcounts) setIn(b *refBlock, i int64, v uint64) {
	setRefcount(b.data, r.order, i, v)
	b.dirty = true
}

// get returns the refcount of cluster c.
func (r *refcounts) get(c int64) (uint64, error) {
	if c >= r.end {
		return 0, nil
	}
	b, err := r.block(c / r.perBlock)
	if err != nil || b == nil {
		return 0, err
	}
	return r.getIn(b, c%r.perBlock), nil
}

// add changes the refcount of cluster c by delta, creating the refcount
// block (and growing the table) when needed.
func (r *refcounts) add(c int64, delta int64) (uint64, error) {
	b, err := r.ensureBlock(c / r.perBlock)
	if err != nil {
		return 0, err
	}
	i := c % r.perBlock
	v := r.getIn(b, i)
	switch {
	case delta > 0 && (v > r.maxVal-uint64(delta)):
		return v, fmt.Errorf("%w: cluster %d of %s", errRefcountOverflow, c, r.path)
	case delta < 0 && v < uint64(-delta):
		return v, &CorruptError{Path: r.path, Field: "refcount", Offset: c << r.cb, Reason: fmt.Sprintf("refcount %d of the cluster would drop below zero", v)}
	}
	v = uint64(int64(v) + delta)
	r.setIn(b, i, v)
	if delta > 0 {
		r.end = max(r.end, c+1)
	} else if v == 0 {
		r.freeHint = min(r.freeHint, c)
	}
	return v, nil
}

// set stores refcount v for cluster c (repair and rebuild).
func (r *refcounts) set(c int64, v uint64) error {
	if v > r.maxVal {
		return fmt.Errorf("%w: cluster %d of %s", errRefcountOverflow, c, r.path)
	}
	b, err := r.ensureBlock(c / r.perBlock)
	if err != nil {
		return err
	}
	r.setIn(b, c%r.perBlock, v)
	if v > 0 {
		r.end = max(r.end, c+1)
	} else {
		r.freeHint = min(r.freeHint, c)
	}
	return nil
}

// findFree returns the first run of n clusters whose refcounts are 0.
func (r *refcounts) findFree(n int64) (int64, error) {
	c := r.freeHint
	run := int64(0)
	first := true
	for {
		if c >= r.end {
			if first {
				// Everything from the hint up to the end is in use.
				r.freeHint = c
			}
			return c - run, nil
		}
		v, err := r.get(c)
		if err != nil {
			return 0, err
		}
		if v == 0 {
			if first {
				r.freeHint = c
				first = false
			}
			run++
			if run == n {
				return c - n + 1, nil
			}
		} else {
			run = 0
		}
		c++
	}
}

// ensureBlock returns the refcount block for table index idx, allocating
// it (and growing the table) when it does not exist. A new block goes
// into the first free cluster; if that cluster is covered by another
// missing block, that block is created first, covering itself.
func (r *refcounts) ensureBlock(idx int64) (*refBlock, error) {
	for {
		b, err := r.block(idx)
		if err != nil || b != nil {
			return b, err
		}
		if idx >= int64(len(r.table)) {
			if err := r.growTable(idx); err != nil {
				return nil, err
			}
			continue
		}
		c, err := r.findFree(1)
		if err != nil {
			return nil, err
		}
		cidx := c / r.perBlock
		if cidx != idx {
			cb, err := r.block(cidx)
			if err != nil {
				return nil, err
			}
			if cb == nil {
				if cidx >= int64(len(r.table)) {
					if err := r.growTable(cidx); err != nil {
						return nil, err
					}
					continue
				}
				// The block for c's range goes into c itself.
				r.newBlockAt(cidx, c)
				continue
			}
		}
		return r.newBlockAt(idx, c), nil
	}
}

// newBlockAt creates an empty refcount block for table index idx in
// cluster c and counts c. The block covering c must exist or be idx.
func (r *refcounts) newBlockAt(idx, c int64) *refBlock {
	b := &refBlock{data: make([]byte, r.cs), dirty: true}
	r.blocks[idx] = b
	r.table[idx] = uint64(c << r.cb)
	r.tableDirty = true
	r.meta.add(c, 1, metaRefBlock)
	cb := r.blocks[c/r.perBlock]
	r.setIn(cb, c%r.perBlock, 1)
	r.end = max(r.end, c+1)
	return b
}

// growTable moves the refcount table to the end of the image, large
// enough for index need, together with the refcount blocks that the new
// area itself needs. The old table is freed once the header names the
// new one (flush).
func (r *refcounts) growTable(need int64) error {
	start := r.end
	oldLen := int64(len(r.table))
	entriesPerCluster := r.cs / 8
	tc := max((oldLen*3/2+entriesPerCluster-1)/entriesPerCluster, (need+entriesPerCluster)/entriesPerCluster, 1)
	var missing []int64
	for {
		missing = missing[:0]
		limit := tc * entriesPerCluster
		// Blocks needed to cover [start, start+tc+len(missing)).
		nb := int64(0)
		for {
			areaEnd := start + tc + nb
			missing = missing[:0]
			for idx := start / r.perBlock; idx <= (areaEnd-1)/r.perBlock; idx++ {
				if idx < oldLen && r.table[idx] != 0 {
					continue
				}
				missing = append(missing, idx)
			}
			if int64(len(missing)) == nb {
				break
			}
			nb = int64(len(missing))
		}
		maxIdx := need
		if len(missing) > 0 {
			maxIdx = max(maxIdx, missing[len(missing)-1])
		}
		if maxIdx < limit {
			break
		}
		tc = (maxIdx + entriesPerCluster) / entriesPerCluster
	}
	if tc<<r.cb > maxRefcountTable {
		return fmt.Errorf("qcow2: %s: refcount table would exceed %d MiB", r.path, maxRefcountTable>>20)
	}
	if r.tableMoved {
		// An earlier move is not flushed yet: the table it allocated is
		// dropped at once (the header never named it).
		for c := r.tableOff >> r.cb; c < r.tableOff>>r.cb+oldLen/entriesPerCluster; c++ {
			if _, err := r.add(c, -1); err != nil {
				return err
			}
			r.meta.remove(c, 1)
		}
	} else {
		r.oldTableOff = r.tableOff
		r.oldTableClusters = oldLen / entriesPerCluster
	}
	table := make([]uint64, tc*entriesPerCluster)
	copy(table, r.table)
	r.table = table
	r.tableOff = start << r.cb
	r.tableMoved = true
	r.tableDirty = true
	r.meta.add(start, tc, metaRefTable)
	for i, idx := range missing {
		c := start + tc + int64(i)
		r.blocks[idx] = &refBlock{data: make([]byte, r.cs), dirty: true}
		r.table[idx] = uint64(c << r.cb)
		r.meta.add(c, 1, metaRefBlock)
	}
	end := start + tc + int64(len(missing))
	r.end = max(r.end, end)
	for c := start; c < end; c++ {
		b, err := r.block(c / r.perBlock)
		if err != nil {
			return err
		}
		r.setIn(b, c%r.perBlock, 1)
	}
	return nil
}

// alloc allocates n contiguous clusters with refcount 1 and returns the
// first one's host offset.
func (r *refcounts) alloc(n int64) (int64, error) {
	for {
		c, err := r.findFree(n)
		if err != nil {
			return 0, err
		}
		// Make sure every block covering the run exists; creating one may
		// take a cluster of the run, so look again afterwards.
		created := false
		for idx := c / r.perBlock; idx <= (c+n-1)/r.perBlock; idx++ {
			b, err := r.block(idx)
			if err != nil {
				return 0, err
			}
			if b == nil {
				if _, err := r.ensureBlock(idx); err != nil {
					return 0, err
				}
				created = true
			}
		}
		if created {
			continue
		}
		for i := range n {
			if _, err := r.add(c+i, 1); err != nil {
				return 0, err
			}
		}
		return c << r.cb, nil
	}
}

// dirty reports whether anything is waiting to be written.
func (r *refcounts) dirty() bool {
	if r.tableDirty || r.tableMoved {
		return true
	}
	for _, b := range r.blocks {
		if b.dirty {
			return true
		}
	}
	return false
}

// writeBlocks writes every dirty refcount block (not the table).
func (r *refcounts) writeBlocks() (bool, error) {
	wrote := false
	for idx, b := range r.blocks {
		if !b.dirty {
			continue
		}
		off := refTableEntry(r.table[idx]).blockOffset()
		if err := r.meta.check(off, r.cs, metaRefBlock); err != nil {
			return wrote, err
		}
		if err := writeFull(r.st, b.data, off); err != nil {
			return wrote, fmt.Errorf("qcow2: writing refcount block of %s: %w", r.path, err)
		}
		b.dirty = false
		wrote = true
	}
	return wrote, nil
}

// writeTable writes the refcount table if it changed.
func (r *refcounts) writeTable() (bool, error) {
	if !r.tableDirty {
		return false, nil
	}
	buf := make([]byte, len(r.table)*8)
	for i, e := range r.table {
		binary.BigEndian.PutUint64(buf[i*8:], e)
	}
	if err := r.meta.check(r.tableOff, int64(len(buf)), metaRefTable); err != nil {
		return false, err
	}
	if err := writeFull(r.st, buf, r.tableOff); err != nil {
		return false, fmt.Errorf("qcow2: writing refcount table of %s: %w", r.path, err)
	}
	r.tableDirty = false
	return true, nil
}

// tableClusters returns the size of the (new) table in clusters.
func (r *refcounts) tableClusters() int64 { return int64(len(r.table)) * 8 >> r.cb }

// releaseRange drops one reference from each cluster that the n bytes at
// off (a metadata table being replaced) occupy. n == 0 releases nothing.
// The caller writes the refcounts.
func (w *writer) releaseRange(off, n int64) error {
	if n <= 0 {
		return nil
	}
	for c := off >> w.cb(); c <= (off+n-1)>>w.cb(); c++ {
		if _, err := w.rc.add(c, -1); err != nil {
			return err
		}
	}
	return nil
}
