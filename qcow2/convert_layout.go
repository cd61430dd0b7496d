package qcow2

import (
	"encoding/binary"
	"slices"

	"github.com/imgtool/imgtool/internal/zero"
)

// clusterWriter lays out a new qcow2 image sequentially: cluster 0 holds
// the header, the L1 table follows, then data in the order it arrives,
// and finish appends the L2 tables and the refcount structures and
// writes the header. It is used by one goroutine.
type clusterWriter struct {
	out        directWriter // the output file (O_DIRECT for aligned writes under -t none)
	h          *Header
	cs         int64
	cb         uint32
	extL2      bool
	words      int64 // 64-bit words per L2 entry
	backing    bool
	prealloc   bool
	writeZeros bool // full preallocation: zeros are written, not holes
	maxRef     uint64

	l1Off    int64
	l1       []uint64
	l2       map[int64][]uint64
	refs     []uint32 // refcount per host cluster
	next     int64    // first free cluster-aligned host offset
	freeByte int64    // qemu's free_byte_offset: where packing continues, 0 if none

	segs []segment // writes queued since the last takeSegments
}

func newClusterWriter(out directWriter, h *Header, prealloc, full bool) *clusterWriter {
	cs := h.ClusterSize()
	w := &clusterWriter{
		out: out, h: h, cs: cs, cb: h.ClusterBits,
		extL2:      h.ExtendedL2(),
		words:      1,
		backing:    h.BackingFile != "",
		prealloc:   prealloc,
		writeZeros: full,
		l1:         make([]uint64, h.L1Size),
		l2:         map[int64][]uint64{},
	}
	if w.extL2 {
		w.words = 2
	}
	// refs holds uint32 counts.
	w.maxRef = min(refcountMax(h.RefcountOrder), 1<<32-1)
	w.ref(0, 1) // header
	w.next = cs
	if l1Bytes := int64(h.L1Size) * 8; l1Bytes > 0 {
		w.l1Off = cs
		n := (l1Bytes + cs - 1) / cs
		for i := range n {
			w.ref(1+i, 1)
		}
		w.next += n * cs
	}
	return w
}

// ref adds d to the refcount of host cluster c.
func (w *clusterWriter) ref(c int64, d uint32) {
	for int64(len(w.refs)) <= c {
		w.refs = append(w.refs, make([]uint32, max(1024, len(w.refs)))...)
	}
	w.refs[c] += d
}

// entry returns the L2 entry words of guest cluster vc, creating its
// table.
func (w *clusterWriter) entry(vc int64) []uint64 {
	l2Entries := w.cs / 8 / w.words
	l1i := vc / l2Entries
	t := w.l2[l1i]
	if t == nil {
		t = make([]uint64, w.cs/8)
		w.l2[l1i] = t
	}
	i := (vc % l2Entries) * w.words
	return t[i : i+w.words]
}

func (w *clusterWriter) setZero(vc int64) {
	e := w.entry(vc)
	if w.extL2 {
		e[0], e[1] = 0, bitmapAllocMask<<32
		return
	}
	e[0] = entryZero
}

// writeData stores n whole guest clusters from vc at the next free host
// clusters (data holds them, the last one possibly short).
func (w *clusterWriter) writeData(vc, n int64, data []byte) error {
	host := w.next
	zeros := w.prealloc && !w.writeZeros && n == 1 && zero.Is(data)
	if !zeros {
		if err := w.write(data, host); err != nil {
			return err
		}
	}
	for i := range n {
		e := w.entry(vc + i)
		e[0] = uint64(dataEntry(host + i*w.cs))
		if w.extL2 {
			e[1] = bitmapAllocMask
		}
		w.ref((host+i*w.cs)>>w.cb, 1)
	}
	w.next += n * w.cs
	return nil
}

// writeCompressed packs the compressed bytes of guest cluster vc after
// the previous ones, as QEMU's qcow2_alloc_bytes does: into the rest of
// the current host cluster when they fit, running on into the next host
// cluster when that is the next free one, else at a new cluster.
func (w *clusterWriter) writeCompressed(vc int64, data []byte) error {
	size := int64(len(data))
	off := w.freeByte
	if off != 0 && uint64(w.refs[off>>w.cb]) >= w.maxRef {
		off = 0
	}
	free := w.cs - off&(w.cs-1)
	if off == 0 || free < size {
		if off == 0 || (off+w.cs-1)&^(w.cs-1) != w.next {
			off = w.next
		}
		w.next = (off + size + w.cs - 1) &^ (w.cs - 1)
	}
	for c := off >> w.cb; c <= (off+size-1)>>w.cb; c++ {
		w.ref(c, 1)
	}
	w.freeByte = off + size
	if w.freeByte&(w.cs-1) == 0 {
		w.freeByte = 0
	}
	if err := w.write(data, off); err != nil {
		return err
	}
	e := w.entry(vc)
	e[0] = uint64(compressedEntry(w.cb, off, size))
	if w.extL2 {
		e[1] = 0
	}
	return nil
}

// segment is bytes of a job to write at a host offset; contiguous
// segments form one vectored write.
type segment struct {
	off  int64
	bufs [][]byte
	n    int64
}

// write queues p (which must stay valid until the job's segments are
// written) for host offset off.
func (w *clusterWriter) write(p []byte, off int64) error {
	if k := len(w.segs) - 1; k >= 0 && w.segs[k].off+w.segs[k].n == off && len(w.segs[k].bufs) < 1024 {
		w.segs[k].bufs = append(w.segs[k].bufs, p)
		w.segs[k].n += int64(len(p))
		return nil
	}
	w.segs = append(w.segs, segment{off: off, bufs: [][]byte{p}, n: int64(len(p))})
	return nil
}

// takeSegments returns the queued writes and starts a new queue.
func (w *clusterWriter) takeSegments() []segment {
	s := w.segs
	w.segs = nil
	return s
}

// writeSegments performs queued writes; safe to call from several
// goroutines for disjoint segments.
func writeSegments(out directWriter, segs []segment) error {
	for _, s := range segs {
		if err := pwritev(out.pick(s.bufs, s.off), s.bufs, s.off); err != nil {
			return err
		}
	}
	return nil
}

// finish writes the L2 tables, L1 table, refcount blocks and table, and
// the header.
func (w *clusterWriter) finish() error {
	cs := w.cs
	// L2 tables in guest order.
	keys := make([]int64, 0, len(w.l2))
	for k := range w.l2 {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if len(keys) > 0 {
		tables := make([]byte, int64(len(keys))*cs)
		for i, k := range keys {
			t := tables[int64(i)*cs:]
			for j, e := range w.l2[k] {
				binary.BigEndian.PutUint64(t[j*8:], e)
			}
			host := w.next + int64(i)*cs
			w.l1[k] = uint64(tableEntry(host))
			w.ref(host>>w.cb, 1)
		}
		if err := w.write(tables, w.next); err != nil {
			return err
		}
		w.next += int64(len(keys)) * cs
	}
	if len(w.l1) > 0 {
		raw := make([]byte, (int64(len(w.l1))*8+cs-1)/cs*cs)
		for i, e := range w.l1 {
			binary.BigEndian.PutUint64(raw[i*8:], e)
		}
		if err := w.write(raw, w.l1Off); err != nil {
			return err
		}
	}
	// Refcount blocks, then the table, after everything else; they count
	// themselves.
	used := w.next >> w.cb
	perBlock := cs * 8 >> w.h.RefcountOrder
	var blocks, table int64
	for {
		nb := (used + blocks + table + perBlock - 1) / perBlock
		nt := (nb*8 + cs - 1) / cs
		if nb == blocks && nt == table {
			break
		}
		blocks, table = nb, nt
	}
	for c := used; c < used+blocks+table; c++ {
		w.ref(c, 1)
	}
	meta := make([]byte, (blocks+table)*cs)
	order := w.h.RefcountOrder
	for c := int64(0); c < used+blocks+table; c++ {
		if c >= int64(len(w.refs)) || w.refs[c] == 0 {
			continue
		}
		blk := meta[c/perBlock*cs : (c/perBlock+1)*cs]
		setRefcount(blk, order, c%perBlock, uint64(w.refs[c]))
	}
	tbl := meta[blocks*cs:]
	for i := range blocks {
		binary.BigEndian.PutUint64(tbl[i*8:], uint64(w.next+i*cs))
	}
	if err := w.write(meta, w.next); err != nil {
		return err
	}
	w.h.L1TableOffset = uint64(w.l1Off)
	w.h.RefcountTableOffset = uint64(w.next + blocks*cs)
	w.h.RefcountTableClusters = uint32(table)
	w.next += (blocks + table) * cs
	hdr, err := w.h.MarshalBinary()
	if err != nil {
		return err
	}
	if err := w.write(hdr, 0); err != nil {
		return err
	}
	return writeSegments(w.out, w.takeSegments())
}
