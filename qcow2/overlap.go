package qcow2

import (
	"fmt"
	"sync"
)

// metaKind names what a metadata cluster holds.
type metaKind uint8

const (
	metaNone metaKind = iota
	metaHeader
	metaL1
	metaL2
	metaRefTable
	metaRefBlock
	metaSnapTable
	metaSnapL1
)

var metaNames = [...]string{"data", "header", "active L1 table", "active L2 table", "refcount table", "refcount block", "snapshot table", "snapshot L1 table"}

func (k metaKind) String() string {
	if int(k) < len(metaNames) {
		return metaNames[k]
	}
	return fmt.Sprintf("metadata kind %d", k)
}

// OverlapError reports a refused write: where it was going and what lives
// there.
type OverlapError struct {
	Path   string
	Offset int64 // host offset of the write
	Length int64
	Kind   string // what the write was ("data", "active L2 table", ...)
	Hit    string // the metadata it would have hit
}

func (e *OverlapError) Error() string {
	return fmt.Sprintf("qcow2: %s: refusing to write %s at %#x+%d: it overlaps the %s (image marked corrupt)", e.Path, e.Kind, e.Offset, e.Length, e.Hit)
}

// Is makes errors.Is(err, ErrOverlap) and errors.Is(err, ErrCorrupt) true.
func (e *OverlapError) Is(target error) bool { return target == ErrOverlap || target == ErrCorrupt }

// metaMap is the metadata-overlap guard: the host clusters holding the
// header, the L1 tables, the active L2 tables, the refcount structures
// and the snapshot table. Every write checks its host range against it.
// It is safe for concurrent use.
type metaMap struct {
	path string
	cb   uint32
	mu   sync.RWMutex
	m    map[int64]metaKind
}

func newMetaMap(path string, clusterBits uint32) *metaMap {
	return &metaMap{path: path, cb: clusterBits, m: map[int64]metaKind{}}
}

func (mm *metaMap) add(c, n int64, k metaKind) {
	if mm == nil {
		return
	}
	mm.mu.Lock()
	for i := range n {
		mm.m[c+i] = k
	}
	mm.mu.Unlock()
}

func (mm *metaMap) remove(c, n int64) {
	if mm == nil {
		return
	}
	mm.mu.Lock()
	for i := range n {
		delete(mm.m, c+i)
	}
	mm.mu.Unlock()
}

// check refuses a write of length bytes at off unless every metadata
// cluster it touches is of kind allowed (metaNone for data writes).
func (mm *metaMap) check(off, length int64, allowed metaKind) error {
	if mm == nil || length <= 0 {
		return nil
	}
	mm.mu.RLock()
	defer mm.mu.RUnlock()
	for c := off >> mm.cb; c <= (off+length-1)>>mm.cb; c++ {
		if k, ok := mm.m[c]; ok && k != allowed {
			return &OverlapError{Path: mm.path, Offset: off, Length: length, Kind: allowed.String(), Hit: k.String()}
		}
	}
	return nil
}
