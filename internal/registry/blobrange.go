package registry

import (
	"bytes"
	"container/list"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	digest "github.com/opencontainers/go-digest"
)

// Defaults of RangeOptions.
const (
	// DefaultBlockSize is the unit of range reads and of the cache: small
	// enough that reading a qcow2's metadata (64 KiB clusters) fetches
	// little more than the metadata, while sequential reads are coalesced
	// into larger requests (MaxRunBlocks).
	DefaultBlockSize = 64 << 10
	// DefaultCacheSize caps the bytes the block cache holds.
	DefaultCacheSize = 64 << 20
	// DefaultReadAhead is how far past a sequential read the reader
	// fetches ahead (bytes).
	DefaultReadAhead = 16 << 20
	// MaxRunBlocks is the most blocks one range request asks for.
	MaxRunBlocks = 32
	// seqThreshold is how many blocks' worth of sequential reads start
	// the read-ahead.
	seqThreshold = 8
)

// RangeOptions configure range readers. The zero value means the
// defaults; readers that share a RangeCache share its options.
type RangeOptions struct {
	// BlockSize is the read and cache unit in bytes, a multiple of 512
	// (default DefaultBlockSize).
	BlockSize int64
	// CacheSize caps the cached bytes (default DefaultCacheSize; at
	// least a few blocks). Blocks being fetched count against it too, so
	// memory stays bounded by about CacheSize plus one request per job.
	CacheSize int64
	// ReadAhead is how many bytes past a sequential read are fetched in
	// the background (default DefaultReadAhead; negative disables).
	ReadAhead int64
	// Jobs caps the range requests in flight (default the client's Jobs).
	Jobs int
}

// RangeCache is the block cache and request limiter that range readers
// share: an LRU of blocks keyed by blob and block index, capped in bytes,
// and one in-flight fetch per block (readers that want a block being
// fetched wait for it). Safe for concurrent use.
type RangeCache struct {
	opts RangeOptions
	sem  chan struct{}

	mu     sync.Mutex
	lru    *list.List // of *block, most recent first
	blocks map[blockKey]*block
	used   int64 // bytes of cached and in-flight blocks
}

type blockKey struct {
	blob digest.Digest
	idx  int64
}

// block is a cached block or one being fetched (done open).
type block struct {
	key  blockKey
	elem *list.Element // in lru once fetched
	done chan struct{}
	data []byte
	err  error
}

// NewRangeCache returns a cache for range readers with o's options
// (defaults filled in; jobs defaults to DefaultJobs).
func NewRangeCache(o RangeOptions) (*RangeCache, error) {
	if o.BlockSize == 0 {
		o.BlockSize = DefaultBlockSize
	}
	if o.BlockSize < 512 || o.BlockSize%512 != 0 || o.BlockSize > 16<<20 {
		return nil, fmt.Errorf("%w: range block size %d (want a multiple of 512 up to 16 MiB)", ErrInvalidOptions, o.BlockSize)
	}
	if o.CacheSize == 0 {
		o.CacheSize = DefaultCacheSize
	}
	if o.CacheSize < 4*o.BlockSize {
		return nil, fmt.Errorf("%w: range cache of %d bytes holds fewer than 4 blocks of %d", ErrInvalidOptions, o.CacheSize, o.BlockSize)
	}
	if o.ReadAhead == 0 {
		o.ReadAhead = DefaultReadAhead
	}
	if o.ReadAhead > o.CacheSize/4 {
		o.ReadAhead = o.CacheSize / 4
	}
	if o.Jobs < 0 {
		return nil, fmt.Errorf("%w: range jobs %d", ErrInvalidOptions, o.Jobs)
	}
	if o.Jobs == 0 {
		o.Jobs = DefaultJobs
	}
	return &RangeCache{opts: o, sem: make(chan struct{}, o.Jobs), lru: list.New(), blocks: map[blockKey]*block{}}, nil
}

// Options returns the cache's options with defaults filled in.
func (c *RangeCache) Options() RangeOptions { return c.opts }

// Used returns the bytes the cache holds (cached and in-flight blocks).
func (c *RangeCache) Used() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.used
}

// evictLocked drops least recently used fetched blocks until the cache
// fits its cap (in-flight blocks are not in the LRU and stay).
func (c *RangeCache) evictLocked() {
	for c.used > c.opts.CacheSize {
		e := c.lru.Back()
		if e == nil {
			return
		}
		b := e.Value.(*block)
		c.lru.Remove(e)
		delete(c.blocks, b.key)
		c.used -= int64(len(b.data))
	}
}

// BlobRange is an io.ReaderAt over the bytes [Offset, Offset+Size) of a
// registry blob, read by HTTP range requests through the repository's
// authenticated transport, with the RangeCache's blocks, read-ahead on
// sequential reads and parallel requests. Blocks are aligned on the
// window, not the blob, so aligned reads of the window (qcow2 clusters)
// map to whole blocks. Safe for concurrent ReadAt calls. The bytes are
// not verified against the digest: a lazy reader never sees the whole
// blob.
type BlobRange struct {
	repo   *Repo
	d      digest.Digest
	off    int64
	size   int64
	cache  *RangeCache
	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	streams [maxStreams]stream // sequential readers (parallel workers each read on)
	tick    int64
}

// RangeReader returns a reader of size bytes of blob d from byte offset
// off, with its blocks in cache (nil: a cache of its own with default
// options). It makes no request: the first ReadAt does. ctx bounds every
// request; Close cancels the read-ahead.
func (r *Repo) RangeReader(ctx context.Context, d digest.Digest, off, size int64, cache *RangeCache) (*BlobRange, error) {
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("registry: blob digest %q: %w", d, err)
	}
	if off < 0 || size < 0 {
		return nil, fmt.Errorf("registry: blob %s: window of %d bytes at %d", d, size, off)
	}
	if cache == nil {
		var err error
		if cache, err = NewRangeCache(RangeOptions{Jobs: r.c.opts.Jobs}); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	return &BlobRange{repo: r, d: d, off: off, size: size, cache: cache, ctx: ctx, cancel: cancel}, nil
}

// stream is one sequential reader of a BlobRange: convert's parallel
// workers each read their own part of a level in order.
type stream struct {
	end   int64 // window offset after its last read
	run   int64 // bytes it has read sequentially up to end
	raEnd int64 // block after the last one its read-ahead claimed
	used  int64 // tick of its last read (0: unused)
}

// maxStreams is how many sequential readers a BlobRange follows at once.
const maxStreams = 8

// Size returns the window's size.
func (b *BlobRange) Size() int64 { return b.size }

// Close cancels the reader's requests. Cached blocks stay in the cache.
func (b *BlobRange) Close() error {
	b.cancel()
	return nil
}

// Seed puts data, bytes of the window at off that the caller read by
// other means (a request that also covered what precedes the window),
// into the cache: the whole blocks it covers; blocks the cache holds or
// is fetching are left alone.
func (b *BlobRange) Seed(off int64, data []byte) {
	bs := b.cache.opts.BlockSize
	c := b.cache
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := (off + bs - 1) / bs; i < b.nblocks(); i++ {
		start, n := i*bs-off, b.blockLen(i)
		if start+n > int64(len(data)) {
			break
		}
		key := blockKey{b.d, i}
		if _, ok := c.blocks[key]; ok {
			continue
		}
		blk := &block{key: key, done: make(chan struct{}), data: bytes.Clone(data[start : start+n])}
		close(blk.done)
		c.blocks[key] = blk
		blk.elem = c.lru.PushFront(blk)
		c.used += n
	}
	c.evictLocked()
}

// ReadAt reads len(p) bytes at window offset off; it returns io.EOF with
// fewer bytes at the end of the window.
func (b *BlobRange) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("registry: blob %s: read at negative offset %d", b.d, off)
	}
	if off >= b.size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	want := min(int64(len(p)), b.size-off)
	bs := b.cache.opts.BlockSize
	first, last := off/bs, (off+want-1)/bs
	b.readAhead(off, want, last)
	blocks, err := b.blocks(first, last)
	if err != nil {
		return 0, err
	}
	n := 0
	for i, data := range blocks {
		start := int64(0)
		if i == 0 {
			start = off - first*bs
		}
		n += copy(p[n:want], data[start:])
	}
	if int64(n) < int64(len(p)) {
		return n, io.EOF
	}
	return n, nil
}

// readAhead notes a read of want bytes at off (blocks first..last) and,
// once reads have run sequentially for seqThreshold blocks' worth, keeps
// ReadAhead bytes past them fetched or being fetched: when half the
// window is used it claims the next half in one go, so the read-ahead
// requests are large. Scattered reads (qcow2 metadata) never trigger it.
func (b *BlobRange) readAhead(off, want, last int64) {
	ra := b.cache.opts.ReadAhead
	if ra <= 0 {
		return
	}
	bs := b.cache.opts.BlockSize
	raBlocks := (ra + bs - 1) / bs
	b.mu.Lock()
	b.tick++
	st := &b.streams[0]
	found := false
	for i := range b.streams {
		s := &b.streams[i]
		if s.used != 0 && off >= s.end && off-s.end < bs {
			st, found = s, true
			break
		}
		if s.used < st.used {
			st = s // least recently used, for a new stream
		}
	}
	if found {
		st.run += want
	} else {
		*st = stream{}
		st.run = want
	}
	st.end, st.used = off+want, b.tick
	if st.run < seqThreshold*bs {
		b.mu.Unlock()
		return
	}
	from := max(st.raEnd, last+1)
	if from-(last+1) > raBlocks/2 {
		b.mu.Unlock()
		return
	}
	end := min(last+1+raBlocks, b.nblocks())
	st.raEnd = max(st.raEnd, end)
	b.mu.Unlock()
	if end <= from {
		return
	}
	_, runs := b.claim(from, end-1)
	// Split the runs so that the read-ahead uses the parallel requests,
	// in pieces of at least 4 blocks.
	piece := max(4, (end-from+int64(b.cache.opts.Jobs)-1)/int64(b.cache.opts.Jobs))
	for _, run := range runs {
		for len(run) > 0 {
			k := min(int64(len(run)), piece)
			go b.fetch(run[:k])
			run = run[k:]
		}
	}
}

func (b *BlobRange) nblocks() int64 {
	bs := b.cache.opts.BlockSize
	return (b.size + bs - 1) / bs
}

// blocks returns the data of blocks first..last, fetching those not
// cached (contiguous missing blocks in one request each, the requests in
// parallel) and waiting for those being fetched.
func (b *BlobRange) blocks(first, last int64) ([][]byte, error) {
	all, runs := b.claim(first, last)
	if len(runs) > 0 {
		// Fetch all but the first run in the background, the first here.
		for _, run := range runs[1:] {
			go b.fetch(run)
		}
		b.fetch(runs[0])
	}
	out := make([][]byte, 0, len(all))
	c := b.cache
	for _, blk := range all {
		select {
		case <-blk.done:
		case <-b.ctx.Done():
			return nil, fmt.Errorf("registry: blob %s: %w", b.d, context.Cause(b.ctx))
		}
		if blk.err != nil {
			return nil, blk.err
		}
		c.mu.Lock()
		if blk.elem != nil && c.blocks[blk.key] == blk {
			c.lru.MoveToFront(blk.elem)
		}
		c.mu.Unlock()
		out = append(out, blk.data)
	}
	return out, nil
}

// claim returns the blocks first..last, cached, being fetched or new: the
// new ones are registered as in flight and also returned as runs of
// contiguous blocks (at most MaxRunBlocks each) for fetch.
func (b *BlobRange) claim(first, last int64) (all []*block, runs [][]*block) {
	c := b.cache
	c.mu.Lock()
	defer c.mu.Unlock()
	var run []*block
	for i := first; i <= last; i++ {
		key := blockKey{b.d, i}
		if blk, ok := c.blocks[key]; ok {
			all = append(all, blk)
			if len(run) > 0 {
				runs, run = append(runs, run), nil
			}
			continue
		}
		blk := &block{key: key, done: make(chan struct{})}
		c.blocks[key] = blk
		c.used += b.blockLen(i)
		all = append(all, blk)
		run = append(run, blk)
		if len(run) == MaxRunBlocks {
			runs, run = append(runs, run), nil
		}
	}
	if len(run) > 0 {
		runs = append(runs, run)
	}
	c.evictLocked()
	return all, runs
}

func (b *BlobRange) blockLen(i int64) int64 {
	bs := b.cache.opts.BlockSize
	return min(bs, b.size-i*bs)
}

// fetch reads the blocks of run (contiguous, claimed) with one range
// request and publishes each; on failure every block of the run gets the
// error and leaves the cache, so a later read tries again.
func (b *BlobRange) fetch(run []*block) {
	err := b.fetchRun(run)
	c := b.cache
	c.mu.Lock()
	for _, blk := range run {
		if err != nil {
			blk.err = err
			if c.blocks[blk.key] == blk {
				delete(c.blocks, blk.key)
			}
			c.used -= b.blockLen(blk.key.idx)
			blk.data = nil
		} else if c.blocks[blk.key] == blk {
			blk.elem = c.lru.PushFront(blk)
		}
		close(blk.done)
	}
	c.evictLocked()
	c.mu.Unlock()
}

func (b *BlobRange) fetchRun(run []*block) error {
	c := b.cache
	select {
	case c.sem <- struct{}{}:
	case <-b.ctx.Done():
		return fmt.Errorf("registry: blob %s: %w", b.d, context.Cause(b.ctx))
	}
	defer func() { <-c.sem }()
	bs := c.opts.BlockSize
	start := run[0].key.idx * bs
	n := int64(0)
	for _, blk := range run {
		n += b.blockLen(blk.key.idx)
	}
	body, err := b.repo.readRange(b.ctx, b.d, b.off+start, n)
	if err != nil {
		return err
	}
	defer body.Close()
	for _, blk := range run {
		data := make([]byte, b.blockLen(blk.key.idx))
		if _, err := io.ReadFull(body, data); err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
				err = fmt.Errorf("registry: blob %s: the registry sent less than the %d bytes asked for at %d", b.d, n, b.off+start)
			} else {
				err = fmt.Errorf("registry: blob %s: %w", b.d, err)
			}
			return err
		}
		blk.data = data
	}
	return nil
}

// ErrRangeUnsupported's message for lazy reads: what to do instead.
const pullInstead = "this registry cannot serve lazy reads; pull the image instead (imgtool pull)"

// readRange asks for n bytes of blob d at off with a Range request and
// checks that the registry honoured it: status 206, a Content-Range for
// exactly those bytes, and a Content-Length (if any) of n. A registry
// that ignores Range gets ErrRangeUnsupported saying to pull instead.
func (r *Repo) readRange(ctx context.Context, d digest.Digest, off, n int64) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.blobURL(d), nil)
	if err != nil {
		return nil, err
	}
	end := off + n - 1
	req.Header.Set("Range", "bytes="+strconv.FormatInt(off, 10)+"-"+strconv.FormatInt(end, 10))
	resp, err := r.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("registry: blob %s: %w", d, context.Cause(ctx))
		}
		return nil, r.c.WrapError(r.name.Registry, fmt.Errorf("blob %s: %w", d, err))
	}
	if resp.StatusCode != http.StatusPartialContent {
		defer resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return nil, fmt.Errorf("%w: %s answered a Range request for blob %s with the whole blob (status 200): %s", ErrRangeUnsupported, r.name.RegistryStr(), d, pullInstead)
		}
		err := transport.CheckError(resp, http.StatusPartialContent)
		if resp.StatusCode == http.StatusNotFound {
			err = fmt.Errorf("%w: blob %s in %s: %v", ErrNotFound, d, r.name, err)
		}
		return nil, r.c.WrapError(r.name.Registry, fmt.Errorf("blob %s bytes %d-%d: %w", d, off, end, err))
	}
	cr := resp.Header.Get("Content-Range")
	if !validContentRange(cr, off, end) {
		resp.Body.Close()
		return nil, fmt.Errorf("%w: %s answered a Range request for bytes %d-%d of blob %s with Content-Range %q: %s", ErrRangeUnsupported, r.name.RegistryStr(), off, end, d, cr, pullInstead)
	}
	if resp.ContentLength >= 0 && resp.ContentLength != n {
		resp.Body.Close()
		return nil, fmt.Errorf("%w: %s sent %d bytes for bytes %d-%d of blob %s: %s", ErrRangeUnsupported, r.name.RegistryStr(), resp.ContentLength, off, end, d, pullInstead)
	}
	return resp.Body, nil
}

// validContentRange reports whether cr is "bytes OFF-END/TOTAL" (TOTAL a
// number or "*").
func validContentRange(cr string, off, end int64) bool {
	want := "bytes " + strconv.FormatInt(off, 10) + "-" + strconv.FormatInt(end, 10) + "/"
	if len(cr) <= len(want) || cr[:len(want)] != want {
		return false
	}
	total := cr[len(want):]
	if total == "*" {
		return true
	}
	t, err := strconv.ParseInt(total, 10, 64)
	return err == nil && t > end
}

// ReadRange reads n bytes of blob d at off by one range request (the
// registry must honour it; see BlobRange). For small reads such as a tar
// header.
func (r *Repo) ReadRange(ctx context.Context, d digest.Digest, off int64, n int) ([]byte, error) {
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("registry: blob digest %q: %w", d, err)
	}
	if off < 0 || n <= 0 {
		return nil, fmt.Errorf("registry: blob %s: read of %d bytes at %d", d, n, off)
	}
	body, err := r.readRange(ctx, d, off, int64(n))
	if err != nil {
		return nil, err
	}
	defer body.Close()
	buf := make([]byte, n)
	if _, err := io.ReadFull(body, buf); err != nil {
		return nil, fmt.Errorf("registry: blob %s: reading bytes %d-%d: %w", d, off, off+int64(n)-1, err)
	}
	return buf, nil
}
