package dedup

import (
	"fmt"
	"math/bits"
)

// FastCDC chunk size bounds (Xia et al., "FastCDC: a Fast and Efficient
// Content-Defined Chunking Approach for Data Deduplication", USENIX ATC
// 2016), with normalized chunking at level 2.
const (
	CDCMinSize = 16 << 10  // no cut before this many bytes
	CDCAvgSize = 64 << 10  // the expected chunk size
	CDCMaxSize = 256 << 10 // always cut here
)

// Normalized chunking: before the average size a cut needs 2 more zero
// bits than log2(avg) (harder), after it 2 fewer (easier), which narrows
// the distribution of chunk sizes around the average. The masks test the
// high bits of the gear hash, which depend on the last 64 bytes.
var (
	cdcMaskS = maskTop(bits.Len(CDCAvgSize-1) + 2)
	cdcMaskL = maskTop(bits.Len(CDCAvgSize-1) - 2)
)

func maskTop(n int) uint64 { return ^uint64(0) << (64 - n) }

// gearTable is FastCDC's table of 256 random 64-bit values, here made by
// splitmix64 from a fixed seed so that chunk boundaries are stable across
// versions and machines. It is never modified.
var gearTable = func() (t [256]uint64) {
	x := uint64(0x6a09e667f3bcc909)
	for i := range t {
		x += 0x9e3779b97f4a7c15
		z := x
		z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
		z = (z ^ z>>27) * 0x94d049bb133111eb
		t[i] = z ^ z>>31
	}
	return t
}()

// cdcCut returns the length of the first chunk of data. With final false
// and fewer than CDCMaxSize bytes it may return 0: more data is needed.
func cdcCut(data []byte, final bool) int {
	n := len(data)
	if n <= CDCMinSize {
		if final {
			return n
		}
		return 0
	}
	if n > CDCMaxSize {
		n = CDCMaxSize
	}
	normal := min(n, CDCAvgSize)
	var fp uint64
	i := CDCMinSize
	for ; i < normal; i++ {
		fp = fp<<1 + gearTable[data[i]]
		if fp&cdcMaskS == 0 {
			return i + 1
		}
	}
	for ; i < n; i++ {
		fp = fp<<1 + gearTable[data[i]]
		if fp&cdcMaskL == 0 {
			return i + 1
		}
	}
	if n == CDCMaxSize || final {
		return n
	}
	return 0
}

// Chunker splits a stream written to it into FastCDC chunks and calls emit
// with each chunk (valid only during the call) in order. The boundaries
// depend only on the content, not on how it is split into writes.
//
// Concurrency: a Chunker is used by one goroutine. Memory: 2 x CDCMaxSize.
type Chunker struct {
	emit func(chunk []byte) error
	buf  []byte
	r    int // start of pending bytes in buf
	err  error
}

// NewChunker returns a Chunker calling emit for each chunk.
func NewChunker(emit func(chunk []byte) error) *Chunker {
	return &Chunker{emit: emit, buf: make([]byte, 0, 2*CDCMaxSize)}
}

// Write adds p to the stream. An error from emit is returned and sticks.
func (c *Chunker) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n := len(p)
	for len(p) > 0 {
		if len(c.buf) == cap(c.buf) {
			// Move the pending bytes (< CDCMaxSize) to the front.
			m := copy(c.buf, c.buf[c.r:])
			c.buf, c.r = c.buf[:m], 0
		}
		k := copy(c.buf[len(c.buf):cap(c.buf)], p)
		c.buf, p = c.buf[:len(c.buf)+k], p[k:]
		for len(c.buf)-c.r >= CDCMaxSize {
			cut := cdcCut(c.buf[c.r:], false)
			if err := c.emit(c.buf[c.r : c.r+cut]); err != nil {
				c.err = err
				return n - len(p), err
			}
			c.r += cut
		}
	}
	return n, nil
}

// Close emits the chunks of what is pending (the end of the stream).
func (c *Chunker) Close() error {
	if c.err != nil {
		return c.err
	}
	for c.r < len(c.buf) {
		cut := cdcCut(c.buf[c.r:], true)
		if cut <= 0 {
			return fmt.Errorf("dedup: internal error: no FastCDC cut in %d bytes", len(c.buf)-c.r)
		}
		if err := c.emit(c.buf[c.r : c.r+cut]); err != nil {
			c.err = err
			return err
		}
		c.r += cut
	}
	c.err = errClosed
	return nil
}

var errClosed = fmt.Errorf("dedup: chunker closed")
