package dedup

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"hash/maphash"
	"sync"

	"github.com/imgtool/imgtool/qcow2"
)

// chunkAdder records one non-zero chunk of input in at guest offset off.
type chunkAdder interface {
	add(chunk []byte, in int32, off int64) (seen, error)
}

// strongAdder hashes every chunk with SHA-256 (ScanOptions.NoPrefilter).
type strongAdder struct{ ix *chunkIndex }

func (a strongAdder) add(chunk []byte, in int32, off int64) (seen, error) {
	d := Digest(sha256.Sum256(chunk))
	return a.ix.add(&d, in)
}

// prefilter indexes chunks by a cheap 64-bit hash (hash/maphash, AES-based
// on amd64 and arm64, many GB/s) and computes SHA-256 only for chunks whose
// cheap hash was seen before. The first chunk with a given cheap hash is
// remembered by its location; when a second one arrives, the first is read
// again (once) and both are compared by SHA-256 in the strong index. Unique
// data is thus never hashed with SHA-256; duplicated data costs one extra
// read of its first copy. A cheap-hash collision between different contents
// only costs that SHA-256 check.
//
// Memory: a weak entry (BytesPerWeakEntry) per distinct cheap hash, plus a strong entry (BytesPerIndexEntry)
// per content that occurs more than once.
//
// Concurrency: add is safe for concurrent use.
type prefilter struct {
	seed   maphash.Seed
	imgs   []*qcow2.Image
	strong *chunkIndex
	max    int64 // bound on weak entries, 0 = none
	mu     sync.Mutex
	n      int64 // weak entries
	promo  int64 // weak entries promoted to the strong index
	bufs   sync.Pool
	shards [indexShards]struct {
		mu sync.Mutex
		m  map[uint64]weakEntry
		_  [40]byte
	}
}

// weakEntry is the first chunk seen with a cheap hash.
type weakEntry struct {
	off    int64
	in     int32
	length int32
	// last is the input that last held the chunk, while only one
	// occurrence is known; promoted means the chunk (and any later one
	// with this cheap hash) is in the strong index.
	last     int32
	promoted bool
}

func newPrefilter(imgs []*qcow2.Image, strong *chunkIndex, max int64) *prefilter {
	p := &prefilter{seed: maphash.MakeSeed(), imgs: imgs, strong: strong, max: max}
	p.bufs.New = func() any { b := make([]byte, 0, 2<<20); return &b }
	for i := range p.shards {
		p.shards[i].m = make(map[uint64]weakEntry)
	}
	return p
}

func (p *prefilter) add(chunk []byte, in int32, off int64) (seen, error) {
	h := maphash.Bytes(p.seed, chunk)
	s := &p.shards[h>>56]
	s.mu.Lock()
	e, ok := s.m[h]
	if !ok {
		p.mu.Lock()
		if p.max > 0 && p.n >= p.max {
			p.mu.Unlock()
			s.mu.Unlock()
			return 0, fmt.Errorf("%w: more than %d distinct chunks", ErrIndexFull, p.max)
		}
		p.n++
		p.mu.Unlock()
		s.m[h] = weakEntry{off: off, in: in, length: int32(len(chunk)), last: in}
		s.mu.Unlock()
		return seenNew, nil
	}
	d := Digest(sha256.Sum256(chunk))
	if !e.promoted {
		// Move the first occurrence into the strong index, under the
		// shard lock so that no other chunk with this cheap hash is
		// counted meanwhile. Usually it equals chunk, whose digest is
		// then its digest too.
		bp := p.bufs.Get().(*[]byte)
		first := (*bp)[:e.length]
		img := p.imgs[e.in]
		if _, err := img.ReadAt(first, e.off); err != nil {
			p.bufs.Put(bp)
			s.mu.Unlock()
			return 0, fmt.Errorf("dedup: %s: re-reading chunk at %d: %w", img.Path(), e.off, err)
		}
		df := d
		if !bytes.Equal(first, chunk) {
			df = sha256.Sum256(first)
		}
		p.bufs.Put(bp)
		if err := p.strong.insert(&df, indexEntry{last: e.last, refs: 1}); err != nil {
			s.mu.Unlock()
			return 0, err
		}
		e.promoted = true
		s.m[h] = e
		p.mu.Lock()
		p.promo++
		p.mu.Unlock()
	}
	s.mu.Unlock()
	return p.strong.add(&d, in)
}

// BytesPerWeakEntry is the memory of one prefilter entry, rounded up: an
// 8-byte key and a 24-byte value in a Go map, between about 42 and 84
// bytes depending on how recently the map doubled (TestIndexMemory
// measured 84).
const BytesPerWeakEntry = 84

// stats returns the number of distinct chunks (the strong index plus the
// chunks seen once) and the index memory.
func (p *prefilter) stats() (chunks, bytes int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	strong := p.strong.len()
	return strong + p.n - p.promo, p.n*BytesPerWeakEntry + strong*BytesPerIndexEntry
}
