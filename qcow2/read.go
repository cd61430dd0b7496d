package qcow2

import (
	"fmt"
	"io"
)

// ReadAt reads guest bytes of the chain at off. It follows io.ReaderAt:
// a read reaching past Size returns the bytes before it and io.EOF. It
// returns an error matching ErrCannotRead for encrypted images and images
// with an external data file. Safe for concurrent use.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("qcow2: %s: negative offset %d", img.path, off)
	}
	if err := img.Readable(); err != nil {
		return 0, err
	}
	if off >= img.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), img.size-off))
	err := img.walk(off, int64(n), 0, false, func(e Extent, layer *Image) error {
		dst := p[e.Start-off : e.Start-off+e.Length]
		switch e.Kind {
		case KindData:
			return layer.readHost(dst, e.HostOffset)
		case KindCompressed:
			return layer.readCompressed(dst, e.Start)
		default:
			clear(dst)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// readCompressed fills dst with guest bytes at guest offset off, all of
// which lie in compressed clusters of this image. Whole clusters are
// decompressed in place; a partial cluster goes through the decompressor's
// last-cluster cache, so small sequential reads decompress each cluster
// once.
func (img *Image) readCompressed(dst []byte, off int64) error {
	for len(dst) > 0 {
		vc := off >> img.clusterBits
		in := off - vc<<img.clusterBits
		if in == 0 && int64(len(dst)) >= img.clusterSize {
			// A whole cluster: decompress in place.
			if err := img.decompressCluster(vc, dst[:img.clusterSize]); err != nil {
				return err
			}
			dst = dst[img.clusterSize:]
			off += img.clusterSize
			continue
		}
		entry, _, err := img.lookup(vc)
		if err != nil {
			return err
		}
		d := img.decompressor
		if k, ok := d.cached(entry, dst, in); ok {
			dst = dst[k:]
			off += int64(k)
			continue
		}
		buf := d.getCluster()
		if err := img.decompressCluster(vc, *buf); err != nil {
			d.putCluster(buf)
			return err
		}
		k := copy(dst, (*buf)[in:])
		d.remember(entry, buf)
		dst = dst[k:]
		off += int64(k)
	}
	return nil
}

// decompressCluster decompresses guest cluster vc, which must be a
// compressed cluster, into out (cluster size bytes).
func (img *Image) decompressCluster(vc int64, out []byte) error {
	entry, _, err := img.lookup(vc)
	if err != nil {
		return err
	}
	if !entry.compressed() {
		return fmt.Errorf("qcow2: %s: cluster %d changed while reading", img.path, vc)
	}
	hoff, size := entry.compressedLocation(img.clusterBits)
	src := img.decompressor.getInput(size)
	defer img.decompressor.putInput(src)
	if err := img.readHost(*src, hoff); err != nil {
		return err
	}
	if err := img.decompressor.decompress(out, *src); err != nil {
		return &CorruptError{Path: img.path, Field: "compressed cluster", Offset: hoff,
			Reason: fmt.Sprintf("guest cluster %d: %v", vc, err)}
	}
	return nil
}
