package qcow2

import (
	"fmt"
	"math"
	"os"

	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zstd"
)

// clusterCompressor compresses whole clusters for one goroutine.
type clusterCompressor interface {
	// compress appends the compressed form of src to dst.
	compress(dst, src []byte) ([]byte, error)
	// compressDense is compress for a cluster that looksIncompressible:
	// it tries only what is cheap, and ok false (out holding dst's bytes
	// only) says to store src uncompressed.
	compressDense(dst, src []byte) (out []byte, ok bool, err error)
}

// compressorFactory hands out one clusterCompressor per worker.
type compressorFactory interface {
	get() clusterCompressor
	close()
}

// deflateWindow is the window QEMU inflates compressed clusters with
// (zlib window bits -12): back references must stay within 4 KiB.
const deflateWindow = 4096

func newCompressorFactory(kind uint8, clusterSize int64, workers int) (compressorFactory, error) {
	switch kind {
	case CompressionDeflate:
		return deflateFactory{}, nil
	case CompressionZstd:
		enc, err := zstd.NewWriter(nil,
			zstd.WithEncoderLevel(zstd.SpeedDefault),
			zstd.WithEncoderCRC(false),
			zstd.WithEncoderConcurrency(workers),
			zstd.WithWindowSize(max(zstd.MinWindowSize, int(min(clusterSize, zstd.MaxWindowSize)))),
		)
		if err != nil {
			return nil, fmt.Errorf("qcow2: zstd encoder: %w", err)
		}
		// Clusters that look incompressible get the fastest level: it
		// gives up on random data quickly, and still finds the long
		// repeats a byte histogram can't see.
		fast, err := zstd.NewWriter(nil,
			zstd.WithEncoderLevel(zstd.SpeedFastest),
			zstd.WithEncoderCRC(false),
			zstd.WithEncoderConcurrency(workers),
			zstd.WithWindowSize(max(zstd.MinWindowSize, int(min(clusterSize, zstd.MaxWindowSize)))),
		)
		if err != nil {
			enc.Close()
			return nil, fmt.Errorf("qcow2: zstd encoder: %w", err)
		}
		return zstdFactory{enc, fast}, nil
	}
	return nil, fmt.Errorf("%w: compression type %d", ErrUnsupportedFeature, kind)
}

type deflateFactory struct{}

func (deflateFactory) get() clusterCompressor { return &deflater{} }
func (deflateFactory) close()                 {}

// deflater writes raw deflate (no zlib header) with QEMU's 4 KiB window.
type deflater struct {
	w   *flate.Writer
	out appendWriter
}

type appendWriter struct{ b []byte }

func (a *appendWriter) Write(p []byte) (int, error) {
	a.b = append(a.b, p...)
	return len(p), nil
}

func (d *deflater) compress(dst, src []byte) ([]byte, error) {
	d.out.b = dst
	if d.w == nil {
		w, err := flate.NewWriterWindow(&d.out, deflateWindow)
		if err != nil {
			return dst, fmt.Errorf("qcow2: deflate: %w", err)
		}
		d.w = w
	} else {
		d.w.Reset(&d.out)
	}
	if _, err := d.w.Write(src); err != nil {
		return dst, fmt.Errorf("qcow2: deflate: %w", err)
	}
	if err := d.w.Close(); err != nil {
		return dst, fmt.Errorf("qcow2: deflate: %w", err)
	}
	out := d.out.b
	d.out.b = nil
	return out, nil
}

// compressDense stores the cluster uncompressed: with QEMU's 4 KiB
// window, deflate finds no repeats a sampled histogram would miss.
func (d *deflater) compressDense(dst, src []byte) ([]byte, bool, error) { return dst, false, nil }

// zstdFactory shares its encoders: EncodeAll is safe for concurrent use
// and writes one bare frame per call, as QEMU stores a cluster.
type zstdFactory struct{ enc, fast *zstd.Encoder }

func (z zstdFactory) get() clusterCompressor { return z }
func (z zstdFactory) close()                 { z.enc.Close(); z.fast.Close() }

func (z zstdFactory) compress(dst, src []byte) ([]byte, error) {
	return z.enc.EncodeAll(src, dst), nil
}

func (z zstdFactory) compressDense(dst, src []byte) ([]byte, bool, error) {
	out := z.fast.EncodeAll(src, dst)
	if len(out)-len(dst) >= len(src) {
		return out[:len(dst)], false, nil // keeps what the buffer grew to
	}
	return out, true, nil
}

// looksIncompressible reports whether the bytes of a cluster are close to
// uniformly distributed, from a sample: 64 bytes of every 512 (all of a
// cluster up to 4 KiB). Random and already compressed or encrypted data
// does; text, code, tables and file system metadata don't. It costs an
// eighth of a pass over the cluster, against a whole compression that
// would gain nothing, as it does for qemu-img.
func looksIncompressible(b []byte) bool {
	var hist [256]uint32
	n := 0
	if len(b) <= 4096 {
		for _, c := range b {
			hist[c]++
		}
		n = len(b)
	} else {
		for off := 0; off+64 <= len(b); off += 512 {
			for _, c := range b[off : off+64] {
				hist[c]++
			}
			n += 64
		}
	}
	if n < 256 {
		return false
	}
	h := 0.0 // Shannon entropy of the sample, in bits per byte
	inv := 1 / float64(n)
	for _, v := range hist {
		if v != 0 {
			p := float64(v) * inv
			h -= p * math.Log2(p)
		}
	}
	// A uniform source sampled n times shows about 8 - 255/(2n ln 2)
	// bits; allow a tenth of a bit below that.
	return h > 8-255/(2*float64(n)*math.Ln2)-0.1
}

// writeAll writes p at off, reporting a short write as an error.
func writeAll(f *os.File, p []byte, off int64) error {
	n, err := f.WriteAt(p, off)
	if err == nil && n != len(p) {
		err = fmt.Errorf("short write at %#x: %d of %d bytes", off, n, len(p))
	}
	return err
}
