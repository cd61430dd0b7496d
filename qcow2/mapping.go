package qcow2

import (
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync/atomic"
)

// subType is the state of one (sub)cluster, as QEMU classifies it.
type subType uint8

const (
	subUnallocated      subType = iota // reads from the backing file
	subUnallocatedAlloc                // host cluster exists but this subcluster reads from the backing file
	subZeroPlain                       // reads as zeros, no host cluster
	subZeroAlloc                       // reads as zeros, host cluster preallocated
	subNormal                          // data at a host offset
	subCompressed                      // compressed cluster
)

// lookup returns the L2 descriptor and subcluster bitmap (0 without
// extended L2) of guest cluster vc. An unallocated L2 table yields 0, 0.
// This is the hot path: a cached table costs one atomic load.
func (img *Image) lookup(vc int64) (entry l2Entry, bitmap uint64, err error) {
	if e, ok := img.cachedEntry(vc); ok {
		return e, 0, nil
	}
	return img.lookupSlow(vc)
}

// cachedEntry returns the standard L2 entry of guest cluster vc if its
// table is cached: one atomic load and an index, small enough to inline
// into the extent walk.
func (img *Image) cachedEntry(vc int64) (l2Entry, bool) {
	t := img.l2.slots[vc>>img.l2Bits].Load()
	if t == nil || img.extL2 {
		return 0, false
	}
	// Atomic: the writer updates standard entries of its own tables in
	// place (an atomic load is a plain load on common CPUs).
	return l2Entry(atomic.LoadUint64(&t.entries[vc&img.l2Mask])), true
}

// lookupSlow is lookup for extended L2 entries and on a cache miss (it
// loads the table).
//
//go:noinline
func (img *Image) lookupSlow(vc int64) (entry l2Entry, bitmap uint64, err error) {
	l1i := int(vc >> img.l2Bits)
	l2i := int(vc & img.l2Mask)
	t := img.l2.get(l1i)
	if t == nil {
		if t, err = img.loadL2(l1i); err != nil || t == nil {
			return 0, 0, err
		}
	}
	if img.extL2 {
		// The writer may change descriptor and bitmap together in place:
		// read both between two equal, even sequence numbers.
		for {
			s1 := t.seq.Load()
			if s1&1 == 0 {
				e := atomic.LoadUint64(&t.entries[2*l2i])
				b := atomic.LoadUint64(&t.entries[2*l2i+1])
				if t.seq.Load() == s1 {
					return l2Entry(e), b, nil
				}
			}
			runtime.Gosched()
		}
	}
	return l2Entry(atomic.LoadUint64(&t.entries[l2i])), 0, nil
}

// loadL2 reads, decodes and caches the L2 table of L1 index l1i. It
// returns nil for an unallocated table.
func (img *Image) loadL2(l1i int) (*l2Table, error) {
	if int64(l1i) >= img.l1Len() {
		return nil, nil
	}
	off := img.l1Get(int64(l1i)).l2Offset()
	if off == 0 {
		return nil, nil
	}
	fieldOff := int64(img.hdr.L1TableOffset) + int64(l1i)*8
	if off&(img.clusterSize-1) != 0 {
		return nil, img.corrupt("L1 entry", fieldOff, "L2 table offset %#x is not cluster aligned", off)
	}
	if off+img.clusterSize > img.fileSizeNow() {
		return nil, img.corrupt("L1 entry", fieldOff, "L2 table at %#x lies past the end of the file (%d bytes)", off, img.fileSizeNow())
	}
	gen := img.l2.gen.Load()                             // a writer's flush in between makes this read stale
	rawBuf := img.decompressor.getInput(img.clusterSize) // pooled; only the decoded table is kept
	defer img.decompressor.putInput(rawBuf)
	raw := *rawBuf
	n, err := img.r.ReadAt(raw, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("qcow2: reading L2 table of %s at %#x: %w", img.path, off, err)
	}
	if n < len(raw) {
		// The table lay inside the file a moment ago: the file shrank
		// under us, and the pooled buffer's tail is another table's.
		return nil, fmt.Errorf("qcow2: %s changed while it was read: the L2 table at %#x ends past the file's end", img.path, off)
	}
	if img.l2.gen.Load() != gen {
		return img.loadL2(l1i)
	}
	return img.l2.put(l1i, &l2Table{entries: decodeTable(raw)}), nil
}

// l2EntryOffset returns the file offset of the L2 entry of guest cluster
// vc, for error messages.
func (img *Image) l2EntryOffset(vc int64) int64 {
	l1i := int(vc >> img.l2Bits)
	base := img.l1Get(int64(l1i)).l2Offset()
	size := int64(8)
	if img.extL2 {
		size = 16
	}
	return base + (vc&img.l2Mask)*size
}

// classify returns the type of subcluster sc (0 without extended L2) of
// guest cluster vc with the given entry, and for allocated types the
// host offset of the cluster. It validates the entry as QEMU does.
func (img *Image) classify(vc int64, entry l2Entry, bitmap uint64, sc uint) (subType, int64, error) {
	if entry.compressed() {
		if img.extL2 && bitmap != 0 {
			return 0, 0, img.corrupt("L2 entry", img.l2EntryOffset(vc), "compressed cluster with a subcluster bitmap %#x", bitmap)
		}
		return subCompressed, -1, nil
	}
	host := entry.host()
	if !img.extL2 {
		if entry.zero() {
			if host == 0 {
				return subZeroPlain, -1, nil
			}
			if err := img.checkHost(vc, host); err != nil {
				return 0, 0, err
			}
			return subZeroAlloc, host, nil
		}
		if host == 0 {
			return subUnallocated, -1, nil
		}
		if err := img.checkHost(vc, host); err != nil {
			return 0, 0, err
		}
		return subNormal, host, nil
	}
	if host == 0 {
		if bitmap&bitmapAllocMask != 0 {
			return 0, 0, img.corrupt("L2 entry", img.l2EntryOffset(vc), "unallocated cluster with subcluster allocation bits %#x", bitmap&bitmapAllocMask)
		}
		if bitmap&(1<<(32+sc)) != 0 {
			return subZeroPlain, -1, nil
		}
		return subUnallocated, -1, nil
	}
	if (bitmap>>32)&bitmap != 0 {
		return 0, 0, img.corrupt("L2 entry", img.l2EntryOffset(vc), "subclusters %#x are both allocated and zero", (bitmap>>32)&bitmap&bitmapAllocMask)
	}
	if err := img.checkHost(vc, host); err != nil {
		return 0, 0, err
	}
	switch {
	case bitmap&(1<<(32+sc)) != 0:
		return subZeroAlloc, host, nil
	case bitmap&(1<<sc) != 0:
		return subNormal, host, nil
	}
	return subUnallocatedAlloc, host, nil
}

func (img *Image) checkHost(vc int64, host int64) error {
	if host&(img.clusterSize-1) != 0 {
		return img.corrupt("L2 entry", img.l2EntryOffset(vc), "cluster offset %#x is not cluster aligned", host)
	}
	return nil
}
