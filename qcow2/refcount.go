package qcow2

import (
	"errors"
	"fmt"
	"io"
)

// Refcount geometry. refcount_bits = 1 << refcount_order; a refcount
// block holds cluster_size*8/refcount_bits entries; widths under 8 bits
// pack least-significant bit first; wider ones are big-endian.

// refcountBlockEntries returns the number of entries in one refcount block.
func (img *Image) refcountBlockEntries() int64 {
	return img.clusterSize * 8 >> img.hdr.RefcountOrder
}

// loadRefcountTable reads the refcount table once (bounded to 8 MiB by
// parseHeader).
func (img *Image) loadRefcountTable() error {
	img.refOnce.Do(func() {
		h := img.hdr
		raw := make([]byte, int64(h.RefcountTableClusters)<<h.ClusterBits)
		if _, err := img.r.ReadAt(raw, int64(h.RefcountTableOffset)); err != nil && !errors.Is(err, io.EOF) {
			img.refErr = fmt.Errorf("qcow2: reading refcount table of %s: %w", img.path, err)
			return
		}
		img.refTable = decodeTable(raw)
	})
	return img.refErr
}

// refcountReader reads refcounts of consecutive clusters, keeping the last
// refcount block. Not safe for concurrent use.
type refcountReader struct {
	img      *Image
	blockOff int64
	block    []byte
}

// refcount returns the refcount of host cluster c; clusters beyond the
// refcount table have refcount 0.
func (r *refcountReader) refcount(c int64) (uint64, error) {
	img := r.img
	if err := img.loadRefcountTable(); err != nil {
		return 0, err
	}
	per := img.refcountBlockEntries()
	ti := c / per
	if ti >= int64(len(img.refTable)) {
		return 0, nil
	}
	boff := refTableEntry(img.refTable[ti]).blockOffset()
	if boff == 0 {
		return 0, nil
	}
	fieldOff := int64(img.hdr.RefcountTableOffset) + ti*8
	if boff&(img.clusterSize-1) != 0 {
		return 0, img.corrupt("refcount table entry", fieldOff, "refcount block offset %#x is not cluster aligned", boff)
	}
	if boff+img.clusterSize > img.fileSize {
		return 0, img.corrupt("refcount table entry", fieldOff, "refcount block at %#x lies past the end of the file", boff)
	}
	if r.block == nil || r.blockOff != boff {
		if r.block == nil {
			r.block = make([]byte, img.clusterSize)
		}
		if _, err := img.r.ReadAt(r.block, boff); err != nil && !errors.Is(err, io.EOF) {
			return 0, fmt.Errorf("qcow2: reading refcount block of %s at %#x: %w", img.path, boff, err)
		}
		r.blockOff = boff
	}
	return getRefcount(r.block, img.hdr.RefcountOrder, c%per), nil
}

// metadataPreallocated mirrors QEMU's heuristic
// (qcow2_detect_metadata_preallocation): if clearly more clusters have a
// refcount than the file occupies on disk, data clusters were
// preallocated without data, and block status asks the file system which
// parts are holes. Errors count as "no".
func (img *Image) metadataPreallocated() bool {
	img.preOnce.Do(func() {
		alloc, ok := allocatedSize(img.f)
		if !ok {
			return
		}
		real := alloc / img.clusterSize
		threshold := max(real*10/9, real+2)
		end := (img.fileSize + img.clusterSize - 1) / img.clusterSize
		r := &refcountReader{img: img}
		count := int64(0)
		for c := int64(0); c < end && count < threshold; c++ {
			rc, err := r.refcount(c)
			if err != nil {
				return
			}
			if rc != 0 {
				count++
			}
		}
		img.prealloc = count >= threshold
	})
	return img.prealloc
}
