package dedup

import (
	"crypto/sha256"
	"fmt"
	"sync"
)

// Digest is the SHA-256 of one chunk.
type Digest = [sha256.Size]byte

// indexShards is the number of independently locked parts of an index,
// selected by the first byte of the digest. 256 shards make lock contention
// between a handful of hashing workers negligible.
const indexShards = 256

// BytesPerIndexEntry is the memory one distinct chunk costs in the index,
// rounded up: a 32-byte SHA-256 key and an 8-byte value in a Go map,
// whose slots are at most 7/8 full and which doubles when it grows, so
// between about 48 and 100 bytes (TestIndexMemory measured 100 right
// after a doubling). A scan of 1 TiB of unique data at 64 KiB chunks
// (16 Mi chunks) needs at most about 1.6 GiB.
const BytesPerIndexEntry = 100

// indexEntry is what the index keeps per distinct chunk.
type indexEntry struct {
	// last is the input that most recently contained the chunk. Inputs
	// are scanned one after another, so last != current means the chunk
	// is seen in the current input for the first time.
	last int32
	// refs counts occurrences over all inputs (saturating).
	refs uint32
}

// chunkIndex maps chunk digests to what is known about them. Keys are full
// SHA-256 digests, so there is no collision check to make: two chunks with
// the same key are taken to be equal (a collision would need a SHA-256
// second preimage).
//
// Concurrency: add is safe for concurrent use.
type chunkIndex struct {
	max    int64 // maximum number of entries, 0 = unlimited
	shards [indexShards]struct {
		mu sync.Mutex
		m  map[Digest]indexEntry
		_  [40]byte // keep shards on separate cache lines
	}
	mu sync.Mutex
	n  int64
}

func newChunkIndex(max int64) *chunkIndex {
	ix := &chunkIndex{max: max}
	for i := range ix.shards {
		ix.shards[i].m = make(map[Digest]indexEntry)
	}
	return ix
}

// seen says how a chunk relates to what the index held before add.
type seen uint8

const (
	seenNew      seen = iota // first occurrence anywhere
	seenEarlier              // first in this input, seen in an earlier input
	seenInternal             // seen before in this input
)

// add records one occurrence of d in input in.
func (ix *chunkIndex) add(d *Digest, in int32) (seen, error) {
	s := &ix.shards[d[0]]
	s.mu.Lock()
	e, ok := s.m[*d]
	if !ok {
		s.mu.Unlock()
		ix.mu.Lock()
		if ix.max > 0 && ix.n >= ix.max {
			ix.mu.Unlock()
			return 0, fmt.Errorf("%w: more than %d distinct chunks", ErrIndexFull, ix.max)
		}
		ix.n++
		ix.mu.Unlock()
		s.mu.Lock()
		// Another worker may have added it meanwhile.
		if e2, ok2 := s.m[*d]; ok2 {
			ix.mu.Lock()
			ix.n--
			ix.mu.Unlock()
			e, ok = e2, true
		} else {
			s.m[*d] = indexEntry{last: in, refs: 1}
			s.mu.Unlock()
			return seenNew, nil
		}
	}
	r := seenInternal
	if e.last != in {
		r = seenEarlier
		e.last = in
	}
	if e.refs != ^uint32(0) {
		e.refs++
	}
	s.m[*d] = e
	s.mu.Unlock()
	return r, nil
}

// insert adds d with entry e unless d is present.
func (ix *chunkIndex) insert(d *Digest, e indexEntry) error {
	s := &ix.shards[d[0]]
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[*d]; ok {
		return nil
	}
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if ix.max > 0 && ix.n >= ix.max {
		return fmt.Errorf("%w: more than %d distinct chunks", ErrIndexFull, ix.max)
	}
	ix.n++
	s.m[*d] = e
	return nil
}

// len returns the number of distinct chunks.
func (ix *chunkIndex) len() int64 {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	return ix.n
}
