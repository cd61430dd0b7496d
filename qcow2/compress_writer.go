package qcow2

import (
	"fmt"
	"os"

	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zstd"
)

// clusterCompressor compresses whole clusters for one goroutine.
type clusterCompressor interface {
	// compress appends the compressed form of src to dst.
	compress(dst, src []byte) ([]byte, error)
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
		return zstdFactory{enc}, nil
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

// zstdFactory shares one encoder: EncodeAll is safe for concurrent use
// and writes one bare frame per call, as QEMU stores a cluster.
type zstdFactory struct{ enc *zstd.Encoder }

func (z zstdFactory) get() clusterCompressor { return z }
func (z zstdFactory) close()                 { z.enc.Close() }

func (z zstdFactory) compress(dst, src []byte) ([]byte, error) {
	return z.enc.EncodeAll(src, dst), nil
}

// writeAll writes p at off, reporting a short write as an error.
func writeAll(f *os.File, p []byte, off int64) error {
	n, err := f.WriteAt(p, off)
	if err == nil && n != len(p) {
		err = fmt.Errorf("short write at %#x: %d of %d bytes", off, n, len(p))
	}
	return err
}
