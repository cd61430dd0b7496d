package qcow2

import (
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/klauspost/compress/zstd"

	"github.com/imgtool/imgtool/internal/inflate"
)

// decompressor turns compressed clusters back into clusters. It is safe
// for concurrent use; buffers and inflaters are pooled so steady-state
// decompression does not allocate.
type decompressor struct {
	kind        uint8
	clusterSize int64
	clusters    sync.Pool // *[]byte of clusterSize
	inputs      sync.Pool // *[]byte of up to 2*clusterSize
	inflaters   sync.Pool // *inflate.Decoder
	last        lastCluster
	zstdOnce    sync.Once
	zdec        *zstd.Decoder
	zerr        error
}

// lastCluster caches the most recently decompressed cluster, keyed by its
// L2 descriptor (host offset and size), for reads of part of a cluster.
type lastCluster struct {
	mu    sync.Mutex
	entry l2Entry // 0: empty
	buf   *[]byte
}

// cached copies cluster bytes from offset in into dst if the cluster with
// L2 descriptor entry is cached.
func (d *decompressor) cached(entry l2Entry, dst []byte, in int64) (int, bool) {
	d.last.mu.Lock()
	defer d.last.mu.Unlock()
	if d.last.entry != entry || d.last.buf == nil {
		return 0, false
	}
	return copy(dst, (*d.last.buf)[in:]), true
}

// remember makes buf (a decompressed cluster) the cached one; the cache
// owns it from now on.
func (d *decompressor) remember(entry l2Entry, buf *[]byte) {
	d.last.mu.Lock()
	old := d.last.buf
	d.last.entry, d.last.buf = entry, buf
	d.last.mu.Unlock()
	if old != nil {
		d.putCluster(old)
	}
}

// forget empties the cache; the write path calls it when it frees or
// rewrites compressed clusters.
func (d *decompressor) forget() {
	d.last.mu.Lock()
	d.last.entry = 0
	d.last.mu.Unlock()
}

func newDecompressor(kind uint8, clusterSize int64) *decompressor {
	return &decompressor{kind: kind, clusterSize: clusterSize}
}

// close releases the zstd decoder's goroutines, if one was started.
func (d *decompressor) close() {
	d.zstdOnce.Do(func() { d.zerr = ErrClosed })
	if d.zdec != nil {
		d.zdec.Close()
	}
}

func (d *decompressor) getCluster() *[]byte {
	if b, ok := d.clusters.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, d.clusterSize)
	return &b
}

func (d *decompressor) putCluster(b *[]byte) { d.clusters.Put(b) }

// getInput returns a buffer of n bytes; n is at most 2 cluster sizes
// (the largest compressed size the descriptor can express).
func (d *decompressor) getInput(n int64) *[]byte {
	if b, ok := d.inputs.Get().(*[]byte); ok && int64(cap(*b)) >= n {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, max(n, 2*d.clusterSize))
	return &b
}

func (d *decompressor) putInput(b *[]byte) { d.inputs.Put(b) }

// decompress fills out (one cluster) from src. As in QEMU, the
// compressed stream must produce at least a full cluster; bytes after
// the stream (the start of the next compressed cluster sharing the last
// sector) are ignored.
func (d *decompressor) decompress(out, src []byte) error {
	switch d.kind {
	case CompressionDeflate:
		return d.inflate(out, src)
	case CompressionZstd:
		return d.unzstd(out, src)
	}
	return fmt.Errorf("%w: compression type %d", ErrUnsupportedFeature, d.kind)
}

func (d *decompressor) inflate(out, src []byte) error {
	dec, _ := d.inflaters.Get().(*inflate.Decoder)
	if dec == nil {
		dec = new(inflate.Decoder)
	}
	err := dec.Decode(out, src)
	d.inflaters.Put(dec)
	if err != nil {
		return fmt.Errorf("deflate: %w", err)
	}
	return nil
}

func (d *decompressor) unzstd(out, src []byte) error {
	d.zstdOnce.Do(func() {
		d.zdec, d.zerr = zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(0),
			zstd.WithDecoderMaxMemory(uint64(4*d.clusterSize)),
			zstd.WithDecoderMaxWindow(uint64(max(4*d.clusterSize, 1<<20))))
	})
	if d.zerr != nil {
		return d.zerr
	}
	n, err := zstdFrameLen(src)
	if err != nil {
		return err
	}
	// Decode into a scratch buffer with slack past the cluster: the
	// decoder only takes its fast path when it may over-write a little.
	scratch := d.getInput(d.clusterSize + zstdSlack)
	defer d.putInput(scratch)
	res, err := d.zdec.DecodeAll(src[:n], (*scratch)[:0])
	if err != nil {
		return fmt.Errorf("zstd: %w", err)
	}
	if len(res) != len(out) {
		return fmt.Errorf("zstd: frame decodes to %d bytes, want %d", len(res), len(out))
	}
	copy(out, res)
	return nil
}

// zstdSlack is the room past a cluster the zstd decoder needs for its
// fast path.
const zstdSlack = 4096

// zstdFrameLen returns the length of the zstd frame at the start of src
// by walking its block headers (RFC 8878), so that bytes after it are
// not mistaken for another frame.
func zstdFrameLen(src []byte) (int, error) {
	if len(src) < 6 || binary.LittleEndian.Uint32(src) != 0xfd2fb528 {
		return 0, fmt.Errorf("zstd: no frame magic")
	}
	fhd := src[4]
	pos := 5
	single := fhd&0x20 != 0
	if !single {
		pos++ // window descriptor
	}
	pos += [4]int{0, 1, 2, 4}[fhd&3]
	switch fhd >> 6 {
	case 0:
		if single {
			pos++
		}
	case 1:
		pos += 2
	case 2:
		pos += 4
	case 3:
		pos += 8
	}
	for {
		if pos+3 > len(src) {
			return 0, errZstdFrame
		}
		bh := uint32(src[pos]) | uint32(src[pos+1])<<8 | uint32(src[pos+2])<<16
		pos += 3
		size := int(bh >> 3)
		switch (bh >> 1) & 3 {
		case 1: // RLE
			size = 1
		case 3:
			return 0, fmt.Errorf("zstd: reserved block type")
		}
		if size > len(src)-pos {
			return 0, errZstdFrame
		}
		pos += size
		if bh&1 != 0 {
			break
		}
	}
	if fhd&4 != 0 {
		pos += 4
		if pos > len(src) {
			return 0, errZstdFrame
		}
	}
	return pos, nil
}
