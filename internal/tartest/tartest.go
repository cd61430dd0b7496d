// Package tartest builds tar archives for tests, including hostile ones
// that a well-behaved writer would never produce: names with "..",
// absolute names, links out of the tree, duplicate entries, PAX bombs,
// truncated and corrupt compressed streams.
//
// It is a conformance helper: layer readers are tested against what it
// builds. Only tests import it.
package tartest

import (
	"archive/tar"
	"bytes"
	"fmt"
	"strings"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// Entry is one tar entry: a header and, for regular files, its content.
type Entry struct {
	Header tar.Header
	Body   []byte
}

// Epoch is the mtime the constructors give entries.
var Epoch = time.Unix(1700000000, 0).UTC()

func hdr(name string, typ byte, mode int64) tar.Header {
	return tar.Header{Name: name, Typeflag: typ, Mode: mode, ModTime: Epoch, Format: tar.FormatPAX}
}

// Dir is a directory entry (mode 0755).
func Dir(name string) Entry { return Entry{Header: hdr(name, tar.TypeDir, 0o755)} }

// File is a regular file (mode 0644).
func File(name, content string) Entry {
	e := Entry{Header: hdr(name, tar.TypeReg, 0o644), Body: []byte(content)}
	e.Header.Size = int64(len(content))
	return e
}

// Symlink is a symlink to target.
func Symlink(name, target string) Entry {
	e := Entry{Header: hdr(name, tar.TypeSymlink, 0o777)}
	e.Header.Linkname = target
	return e
}

// Hardlink is a hard link to target.
func Hardlink(name, target string) Entry {
	e := Entry{Header: hdr(name, tar.TypeLink, 0o644)}
	e.Header.Linkname = target
	return e
}

// Char is a character device.
func Char(name string, major, minor int64) Entry {
	e := Entry{Header: hdr(name, tar.TypeChar, 0o600)}
	e.Header.Devmajor, e.Header.Devminor = major, minor
	return e
}

// Block is a block device.
func Block(name string, major, minor int64) Entry {
	e := Char(name, major, minor)
	e.Header.Typeflag = tar.TypeBlock
	return e
}

// Fifo is a named pipe.
func Fifo(name string) Entry { return Entry{Header: hdr(name, tar.TypeFifo, 0o644)} }

// Whiteout hides name (a path) from lower layers: DIR/.wh.BASE.
func Whiteout(name string) Entry {
	dir, base := "", name
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		dir, base = name[:i+1], name[i+1:]
	}
	return File(dir+".wh."+base, "")
}

// Opaque marks dir opaque: DIR/.wh..wh..opq.
func Opaque(dir string) Entry {
	if dir != "" && !strings.HasSuffix(dir, "/") {
		dir += "/"
	}
	return File(dir+".wh..wh..opq", "")
}

// With returns e after applying f to its header.
func (e Entry) With(f func(h *tar.Header)) Entry { f(&e.Header); return e }

// Xattr returns e with an xattr set (PAX SCHILY.xattr.*).
func (e Entry) Xattr(name, value string) Entry {
	recs := make(map[string]string, len(e.Header.PAXRecords)+1)
	for k, v := range e.Header.PAXRecords {
		recs[k] = v
	}
	recs["SCHILY.xattr."+name] = value
	e.Header.PAXRecords = recs
	return e
}

// Tar writes the entries into an uncompressed tar. It does not validate
// names: hostile names go in as given.
func Tar(entries ...Entry) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.Header
		if err := tw.WriteHeader(&h); err != nil {
			panic(fmt.Sprintf("tartest: header %q: %v", h.Name, err))
		}
		if _, err := tw.Write(e.Body); err != nil {
			panic(fmt.Sprintf("tartest: body %q: %v", h.Name, err))
		}
	}
	if err := tw.Close(); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

// Gzip compresses b.
func Gzip(b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	zw.Close()
	return buf.Bytes()
}

// Zstd compresses b, declaring the given window size in the frame header
// (0: the encoder's default).
func Zstd(b []byte, window int) []byte {
	opts := []zstd.EOption{zstd.WithEncoderConcurrency(1)}
	if window > 0 {
		opts = append(opts, zstd.WithWindowSize(window))
	}
	zw, err := zstd.NewWriter(nil, opts...)
	if err != nil {
		panic(err)
	}
	defer zw.Close()
	return zw.EncodeAll(b, nil)
}

// PAXBomb returns a tar whose single entry carries a PAX record of n
// bytes.
func PAXBomb(n int) []byte {
	e := File("bomb", "x").With(func(h *tar.Header) {
		h.PAXRecords = map[string]string{"SCHILY.xattr.user.bomb": strings.Repeat("A", n)}
	})
	return Tar(e)
}

// RawPAXHeader returns a tar holding a raw PAX extended header that
// declares a size of size bytes, followed by body (padded to a 512-byte
// block) and nothing else. archive/tar's writer refuses to produce PAX
// headers over 1 MiB; this does not, and a body shorter than size makes a
// header that promises more than the stream holds.
func RawPAXHeader(size int64, body []byte) []byte {
	var b bytes.Buffer
	block := make([]byte, 512)
	copy(block, "PaxHeaders/bomb")
	copy(block[100:], "0000644\x00")
	copy(block[108:], "0000000\x00")
	copy(block[116:], "0000000\x00")
	copy(block[124:], fmt.Sprintf("%011o\x00", size))
	copy(block[136:], "00000000000\x00")
	block[156] = 'x'
	copy(block[257:], "ustar\x0000")
	copy(block[148:], "        ")
	sum := 0
	for _, c := range block {
		sum += int(c)
	}
	copy(block[148:], fmt.Sprintf("%06o\x00 ", sum))
	b.Write(block)
	b.Write(body)
	if r := len(body) % 512; r != 0 {
		b.Write(make([]byte, 512-r))
	}
	return b.Bytes()
}
