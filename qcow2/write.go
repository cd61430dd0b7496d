package qcow2

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
)

// writer is the write half of an Image opened with Options.Writable.
//
// Locking: mu guards the metadata (refcounts, the L1 table, dirty L2
// tables, the header, the pending frees and the in-flight set). Data I/O
// runs outside mu: a write reserves its guest cluster in inflight, drops
// mu, writes the data (with its copy-on-write head and tail), and takes
// mu again only to link the new cluster into its L2 table. Writes to
// different clusters therefore overlap their data I/O; writes to the
// same cluster wait for each other. ops is held shared by reads and
// writes and exclusively by operations that rewrite whole tables
// (snapshots, resize, repair, close).
type writer struct {
	img  *Image
	st   storage
	path string

	ops sync.RWMutex

	// l1 is the active L1 table; readers load entries atomically.
	l1 atomic.Pointer[[]atomic.Uint64]
	// fileSize is the size of the file as the read path may rely on.
	fileSize atomic.Int64

	mu       sync.Mutex
	cond     *sync.Cond
	inflight map[int64]struct{}
	rc       *refcounts
	meta     *metaMap
	dirtyL2  map[int64]*l2Table // by L1 index: tables to write on flush
	l1Dirty  bool
	// frees are clusters whose refcount drops once the L2 and L1 tables
	// that stopped using them are on disk.
	frees []int64
	// dataWritten: data went to the file since the last flush.
	dataWritten bool
	lazy        bool // lazy refcounts: refcounts are written at close
	dirtyBit    bool // the dirty bit is set on disk
	err         error
	closed      bool

	zeroBuf []byte
	bufs    sync.Pool // *[]byte of one cluster, for copy-on-write
	// maxDirtyL2 bounds the dirty L2 tables kept in memory; more trigger
	// a flush.
	maxDirtyL2 int
}

// geometry helpers

func (w *writer) cs() int64      { return w.img.clusterSize }
func (w *writer) cb() uint32     { return w.img.clusterBits }
func (w *writer) l2Words() int64 { return w.cs() / 8 }
func (w *writer) scSize() int64  { return 1 << w.img.scBits }
func (w *writer) entryWords() int64 {
	if w.img.extL2 {
		return 2
	}
	return 1
}

// lockAll waits for the reads and writes in flight and excludes new
// ones (ops), then takes the metadata mutex, for an operation that
// rewrites whole tables. unlockAll releases both.
func (w *writer) lockAll() {
	w.ops.Lock()
	w.mu.Lock()
}

func (w *writer) unlockAll() {
	w.mu.Unlock()
	w.ops.Unlock()
}

// clustersFor returns the number of clusters n bytes occupy.
func (w *writer) clustersFor(n int64) int64 { return (n + w.cs() - 1) >> w.cb() }

// fail records the first metadata write failure in the sticky w.err and
// returns err; after it the image refuses writes (its on-disk state is
// still consistent, possibly with leaks).
func (w *writer) fail(err error) error {
	if err == nil {
		return nil
	}
	if w.err == nil {
		w.err = err
	}
	if errors.Is(err, ErrCorrupt) {
		// Invalid metadata (or a write that would have overwritten it):
		// mark the image corrupt, as QEMU does, so that it opens
		// read-only until repaired.
		w.markCorrupt()
	}
	return err
}

// WriteAt writes p at guest offset off. Writes may have any offset and
// length inside the guest size; they allocate clusters and copy the rest
// of a cluster from the backing chain as needed. Data reaches the disk
// on Flush or Close. Safe for concurrent use with other reads and writes.
// A raw image writes p to its file at off (raw_write.go).
func (img *Image) WriteAt(p []byte, off int64) (int, error) {
	if img.rw != nil {
		return img.rw.writeAt(img, p, off)
	}
	w := img.w
	if w == nil {
		return 0, fmt.Errorf("%w: %s", ErrReadOnly, img.path)
	}
	if off < 0 || off > img.size || int64(len(p)) > img.size-off {
		return 0, fmt.Errorf("qcow2: %s: write of %d bytes at %d is outside the image (%d bytes)", img.path, len(p), off, img.size)
	}
	w.ops.RLock()
	defer w.ops.RUnlock()
	if err := w.usable(); err != nil {
		return 0, err
	}
	return w.writeRange(p, off)
}

// writeRange writes p at off cluster by cluster; ops is held.
func (w *writer) writeRange(p []byte, off int64) (int, error) {
	if w.img.hdr.BackingFile != "" && w.img.backing == nil {
		// Copy-on-write would copy zeros instead of the backing data.
		return 0, fmt.Errorf("%w: %s was opened without its backing file (Options.NoBacking); writing data needs the backing chain", ErrReadOnly, w.path)
	}
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		vc := pos >> w.cb()
		in := pos - vc<<w.cb()
		if in == 0 && int64(len(p)-done) >= w.cs() {
			// Whole clusters go in one batch.
			n := min(int64(len(p)-done)>>w.cb(), maxBatchClusters)
			k := int(n << w.cb())
			if err := w.writeWhole(vc, n, p[done:done+k]); err != nil {
				return done, err
			}
			done += k
			continue
		}
		n := int(min(int64(len(p)-done), w.cs()-in))
		if err := w.writeCluster(vc, in, p[done:done+n]); err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}

// maxBatchClusters bounds the clusters one writeWhole call reserves.
const maxBatchClusters = 512

// writeWhole writes n whole guest clusters starting at vc0. Clusters the
// image owns are overwritten in place; the others get freshly allocated,
// contiguous host clusters, linked into their L2 tables once the data is
// written. No copy-on-write is needed: every byte is new.
func (w *writer) writeWhole(vc0, n int64, data []byte) error {
	w.mu.Lock()
	for i := range n {
		w.reserve(vc0 + i)
	}
	releaseAll := func() {
		for i := range n {
			w.release(vc0 + i)
		}
	}
	old := make([]l2Entry, n)
	hosts := make([]int64, n)
	var fresh int64
	for i := range n {
		entry, bitmap, err := w.entry(vc0 + i)
		if err != nil {
			releaseAll()
			w.mu.Unlock()
			return err
		}
		old[i] = entry
		host := entry.host()
		owned := !entry.compressed() && host != 0 && entry.copied() &&
			(w.img.extL2 && bitmap == bitmapAllocMask || !w.img.extL2 && !entry.zero())
		if owned {
			hosts[i] = host
		} else {
			hosts[i] = -1
			fresh++
		}
	}
	if fresh > 0 {
		if err := w.beforeAlloc(); err != nil {
			releaseAll()
			w.mu.Unlock()
			return err
		}
		base, err := w.rc.alloc(fresh)
		if err != nil {
			releaseAll()
			w.mu.Unlock()
			return w.fail(err)
		}
		for i := range n {
			if hosts[i] < 0 {
				hosts[i] = base
				base += w.cs()
			}
		}
	}
	w.dataWritten = true
	w.mu.Unlock()

	// Write runs of contiguous host clusters with one call each.
	var werr error
	for i := int64(0); i < n && werr == nil; {
		j := i + 1
		for j < n && hosts[j] == hosts[j-1]+w.cs() {
			j++
		}
		off, length := hosts[i], (j-i)<<w.cb()
		if werr = w.meta.check(off, length, metaNone); werr == nil {
			werr = writeFull(w.st, data[i<<w.cb():j<<w.cb()], off)
		}
		i = j
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	defer releaseAll()
	if werr != nil {
		for i := range n {
			if hosts[i] != old[i].host() || !old[i].copied() {
				w.rc.add(hosts[i]>>w.cb(), -1) //nolint:errcheck // just allocated
			}
		}
		return w.fail(fmt.Errorf("qcow2: writing %s: %w", w.path, werr))
	}
	var t *l2Table
	live := false
	tl1 := int64(-1)
	for i := range n {
		if hosts[i] == old[i].host() && old[i].copied() && !old[i].compressed() {
			continue // overwritten in place
		}
		vc := vc0 + i
		l1i := vc >> w.img.l2Bits
		if l1i != tl1 {
			if t != nil && !live {
				w.publishL2(tl1, t)
			}
			var err error
			if t, err = w.liveL2(l1i); err != nil {
				return w.fail(err)
			}
			live = t != nil
			if !live {
				if t, err = w.writableL2(l1i); err != nil {
					return w.fail(err)
				}
			}
			tl1 = l1i
		}
		k := (vc & w.img.l2Mask) * w.entryWords()
		if live {
			w.storeEntry(t, vc&w.img.l2Mask, dataEntry(hosts[i]), bitmapAllocMask)
		} else {
			t.entries[k] = uint64(dataEntry(hosts[i]))
			if w.img.extL2 {
				t.entries[k+1] = bitmapAllocMask
			}
		}
		w.freeEntry(old[i])
	}
	if t != nil && !live {
		w.publishL2(tl1, t)
	}
	return w.maybeFlush()
}

// refusal returns why the writer takes no more work: ErrClosed, or the
// sticky error of an earlier metadata write failure (nil: none). mu held.
func (w *writer) refusal() error {
	if w.closed {
		return ErrClosed
	}
	return w.err
}

func (w *writer) usable() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return ErrClosed
	}
	if w.err != nil {
		return fmt.Errorf("qcow2: %s: an earlier metadata write failed: %w", w.path, w.err)
	}
	return nil
}

// reserve waits until no other write works on guest cluster vc and
// claims it. Called with mu held.
func (w *writer) reserve(vc int64) {
	for {
		if _, busy := w.inflight[vc]; !busy {
			w.inflight[vc] = struct{}{}
			return
		}
		w.cond.Wait()
	}
}

func (w *writer) release(vc int64) {
	delete(w.inflight, vc)
	w.cond.Broadcast()
}

// writeCluster writes data at byte in of guest cluster vc.
func (w *writer) writeCluster(vc, in int64, data []byte) error {
	img := w.img
	w.mu.Lock()
	w.reserve(vc)
	entry, bitmap, err := w.entry(vc)
	if err == nil {
		err = w.validEntry(vc, entry, bitmap)
	}
	if err != nil {
		w.release(vc)
		defer w.mu.Unlock()
		return w.fail(err)
	}
	host := entry.host()
	compressed := entry.compressed()
	owned := !compressed && host != 0 && entry.copied()
	var s0, s1 uint // touched subclusters (extended L2)
	if img.extL2 {
		s0 = uint(in >> img.scBits)
		s1 = uint((in + int64(len(data)) - 1) >> img.scBits)
	}
	touched := uint64(0)
	if img.extL2 {
		touched = (uint64(1)<<(s1+1) - 1) &^ (uint64(1)<<s0 - 1)
	}
	// Fast path: the cluster is ours and every touched byte is already
	// allocated data: write in place.
	if owned && ((!img.extL2 && !entry.zero()) || (img.extL2 && bitmap&touched == touched)) {
		w.release(vc)
		w.dataWritten = true
		w.mu.Unlock()
		if err := w.meta.check(host+in, int64(len(data)), metaNone); err != nil {
			return w.lockedFail(err)
		}
		if err := writeFull(w.st, data, host+in); err != nil {
			return fmt.Errorf("qcow2: writing %s at %#x: %w", w.path, host+in, err)
		}
		return nil
	}
	if err := w.beforeAlloc(); err != nil {
		w.release(vc)
		w.mu.Unlock()
		return err
	}
	target := host
	if !owned {
		if target, err = w.rc.alloc(1); err != nil {
			w.release(vc)
			w.mu.Unlock()
			return w.fail(err)
		}
	}
	w.dataWritten = true
	w.mu.Unlock()

	// Build what goes to the host cluster: the data plus the bytes of
	// the cluster (or of the touched subclusters) it does not cover,
	// read from the current guest state.
	cstart := vc << w.cb()
	var wStart, wEnd int64 // byte range of the cluster written
	var newEntry l2Entry
	var newBitmap uint64
	switch {
	case !img.extL2:
		wStart, wEnd = 0, w.cs()
		newEntry = dataEntry(target)
	case compressed:
		wStart, wEnd = 0, w.cs()
		newEntry = dataEntry(target)
		newBitmap = bitmapAllocMask
	case host != 0 && !owned:
		// Shared cluster: copy all of it.
		wStart, wEnd = 0, w.cs()
		newEntry = dataEntry(target)
		newBitmap = (bitmap | touched) &^ (touched << 32)
	default:
		wStart, wEnd = int64(s0)<<img.scBits, int64(s1+1)<<img.scBits
		newEntry = dataEntry(target)
		newBitmap = (bitmap | touched) &^ (touched << 32)
	}
	bp := w.getBuf()
	defer w.bufs.Put(bp)
	buf := (*bp)[:wEnd-wStart]
	end := in + int64(len(data))
	var cerr error
	if in > wStart {
		cerr = w.readGuest(buf[:in-wStart], cstart+wStart)
	}
	if cerr == nil && end < wEnd {
		cerr = w.readGuest(buf[end-wStart:], cstart+end)
	}
	copy(buf[in-wStart:], data)
	if cerr == nil {
		cerr = w.meta.check(target+wStart, wEnd-wStart, metaNone)
		if cerr == nil {
			cerr = writeFull(w.st, buf, target+wStart)
		}
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	defer w.release(vc)
	if cerr != nil {
		if target != host {
			// The cluster was never linked: give it back.
			w.rc.add(target>>w.cb(), -1) //nolint:errcheck // it was just allocated
		}
		return w.fail(fmt.Errorf("qcow2: writing %s: %w", w.path, cerr))
	}
	if err := w.setEntry(vc, newEntry, newBitmap); err != nil {
		return w.fail(err)
	}
	if target != host {
		w.freeEntry(entry)
	}
	return w.maybeFlush()
}

func (w *writer) getBuf() *[]byte {
	if b, ok := w.bufs.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, w.cs())
	return &b
}

func (w *writer) lockedFail(err error) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.fail(err)
}

// readGuest reads the current guest content at off into p; bytes past
// the guest size read as zeros.
func (w *writer) readGuest(p []byte, off int64) error {
	n, err := w.img.ReadAt(p, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	clear(p[n:])
	return nil
}

// validEntry checks an L2 entry before the writer acts on it: a host
// offset must be cluster aligned and inside the file, and an extended
// bitmap consistent.
func (w *writer) validEntry(vc int64, entry l2Entry, bitmap uint64) error {
	img := w.img
	if entry.compressed() {
		return nil
	}
	host := entry.host()
	if host&(w.cs()-1) != 0 {
		return img.corrupt("L2 entry", img.l2EntryOffset(vc), "cluster offset %#x is not cluster aligned", host)
	}
	if img.extL2 && bitmapInvalid(host, bitmap) {
		return img.corrupt("L2 entry", img.l2EntryOffset(vc), "invalid subcluster bitmap %#x", bitmap)
	}
	return nil
}

// entry returns the L2 entry and bitmap of guest cluster vc. mu held.
func (w *writer) entry(vc int64) (l2Entry, uint64, error) {
	l1i := vc >> w.img.l2Bits
	if l1i >= w.img.l1Len() || w.img.l1Get(l1i).l2Offset() == 0 {
		return 0, 0, nil
	}
	return w.img.lookup(vc)
}

// freeEntry schedules the release of the host clusters an L2 entry no
// longer in use pointed at: a normal or preallocated cluster, or the
// host clusters a compressed one spans.
func (w *writer) freeEntry(entry l2Entry) {
	if entry.compressed() {
		// Its bytes may be reused once freed: drop the decompressed copy.
		w.img.decompressor.forget()
		off, size := entry.compressedLocation(w.img.clusterBits)
		off &^= 511
		for c := off >> w.cb(); c <= (off+size-1)>>w.cb(); c++ {
			w.frees = append(w.frees, c)
		}
		return
	}
	if host := entry.host(); host != 0 {
		w.frees = append(w.frees, host>>w.cb())
	}
}

// beforeAlloc sets the dirty bit before the first allocation of a lazy
// refcounts image. mu held.
func (w *writer) beforeAlloc() error {
	if !w.lazy || w.dirtyBit {
		return nil
	}
	w.img.hdr.IncompatibleFeatures |= IncompatDirty
	if err := w.writeHeader(); err != nil {
		return w.fail(err)
	}
	if err := w.st.Sync(); err != nil {
		return w.fail(err)
	}
	w.dirtyBit = true
	return nil
}

// setEntry stores the L2 entry of guest cluster vc, allocating or
// copying the L2 table as needed. mu held.
func (w *writer) setEntry(vc int64, entry l2Entry, bitmap uint64) error {
	l1i := vc >> w.img.l2Bits
	if t, err := w.liveL2(l1i); err != nil {
		return err
	} else if t != nil {
		w.storeEntry(t, vc&w.img.l2Mask, entry, bitmap)
		return nil
	}
	t, err := w.writableL2(l1i)
	if err != nil {
		return err
	}
	i := (vc & w.img.l2Mask) * w.entryWords()
	t.entries[i] = uint64(entry)
	if w.img.extL2 {
		t.entries[i+1] = bitmap
	}
	w.publishL2(l1i, t)
	return nil
}

// storeEntry updates entry i of a live table in place: one atomic store
// for a standard entry; for an extended one, descriptor and bitmap inside
// the table's seqlock. mu held.
func (w *writer) storeEntry(t *l2Table, i int64, entry l2Entry, bitmap uint64) {
	if !w.img.extL2 {
		atomic.StoreUint64(&t.entries[i], uint64(entry))
		return
	}
	t.seq.Add(1)
	atomic.StoreUint64(&t.entries[2*i], uint64(entry))
	atomic.StoreUint64(&t.entries[2*i+1], bitmap)
	t.seq.Add(1)
}

// liveL2 returns the published L2 table of l1i, pinned as dirty, when
// its entries can be updated in place (storeEntry): the table is the
// image's own (COPIED in L1). It returns nil for tables that must first
// be allocated or copied. mu held.
func (w *writer) liveL2(l1i int64) (*l2Table, error) {
	img := w.img
	if l1i >= img.l1Len() {
		return nil, nil
	}
	l1e := img.l1Get(l1i)
	if l1e.l2Offset() == 0 || !l1e.copied() {
		return nil, nil
	}
	t := w.dirtyL2[l1i]
	if t == nil {
		if t = img.l2.get(int(l1i)); t == nil {
			var err error
			if t, err = img.loadL2(int(l1i)); err != nil || t == nil {
				return nil, err
			}
		}
	}
	// Dirty before (re)publishing: an eviction racing with us either
	// sees the flag or is undone by replace.
	t.dirty.Store(true)
	w.img.l2.replace(int(l1i), t)
	w.dirtyL2[l1i] = t
	return t, nil
}

// writableL2 returns a private copy of the L2 table of l1i that the
// caller modifies and then publishes. A missing table is allocated; a
// shared one (no COPIED flag in L1) is copied to a new cluster. mu held.
func (w *writer) writableL2(l1i int64) (*l2Table, error) {
	img := w.img
	if l1i >= img.l1Len() {
		return nil, img.corrupt("L1 table", int64(img.hdr.L1TableOffset), "L1 index %d beyond the table (%d entries)", l1i, img.l1Len())
	}
	if err := w.beforeAlloc(); err != nil {
		return nil, err
	}
	l1e := img.l1Get(l1i)
	off := l1e.l2Offset()
	if off != 0 && l1e.copied() {
		if t := w.dirtyL2[l1i]; t != nil {
			return &l2Table{entries: slices.Clone(t.entries)}, nil
		}
		t := img.l2.get(int(l1i))
		if t == nil {
			if t, err := img.loadL2(int(l1i)); err != nil {
				return nil, err
			} else {
				return &l2Table{entries: slices.Clone(t.entries)}, nil
			}
		}
		return &l2Table{entries: slices.Clone(t.entries)}, nil
	}
	var entries []uint64
	if off != 0 {
		// Shared with a snapshot: copy the table.
		t := img.l2.get(int(l1i))
		if t == nil {
			var err error
			if t, err = img.loadL2(int(l1i)); err != nil {
				return nil, err
			}
		}
		entries = slices.Clone(t.entries)
	} else {
		entries = make([]uint64, w.l2Words())
	}
	newOff, err := w.rc.alloc(1)
	if err != nil {
		return nil, err
	}
	w.meta.add(newOff>>w.cb(), 1, metaL2)
	if off != 0 {
		w.meta.remove(off>>w.cb(), 1)
		w.frees = append(w.frees, off>>w.cb())
	}
	// Readers must find the table in the cache before the L1 entry
	// points at a cluster that holds nothing yet on disk.
	w.publishL2(l1i, &l2Table{entries: entries})
	img.l1Set(l1i, tableEntry(newOff))
	w.l1Dirty = true
	return &l2Table{entries: slices.Clone(entries)}, nil
}

// publishL2 makes t the table of l1i for readers and marks it dirty.
func (w *writer) publishL2(l1i int64, t *l2Table) {
	t.dirty.Store(true)
	w.dirtyL2[l1i] = t
	w.img.l2.replace(int(l1i), t)
}

// maybeFlush writes metadata back when too many L2 tables are dirty. mu
// held.
func (w *writer) maybeFlush() error {
	if len(w.dirtyL2) <= w.maxDirtyL2 {
		return nil
	}
	return w.flushLocked()
}
