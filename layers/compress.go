package layers

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// Compression is the compression of a layer blob.
type Compression int

const (
	// Gzip is the default compression of Create (media type ...tar+gzip).
	Gzip Compression = iota
	// None stores the tar as is (media type ...tar).
	None
	// Zstd compresses with zstd (media type ...tar+zstd).
	Zstd
)

// OCI layer media types. Create only produces these; reading also accepts
// the deprecated and Docker types listed in ParseMediaType.
const (
	MediaTypeTar     = "application/vnd.oci.image.layer.v1.tar"
	MediaTypeTarGzip = "application/vnd.oci.image.layer.v1.tar+gzip"
	MediaTypeTarZstd = "application/vnd.oci.image.layer.v1.tar+zstd"
)

// MediaType returns the OCI layer media type for c.
func (c Compression) MediaType() string {
	switch c {
	case None:
		return MediaTypeTar
	case Zstd:
		return MediaTypeTarZstd
	default:
		return MediaTypeTarGzip
	}
}

func (c Compression) String() string {
	switch c {
	case None:
		return "none"
	case Zstd:
		return "zstd"
	case Gzip:
		return "gzip"
	}
	return fmt.Sprintf("Compression(%d)", int(c))
}

// ParseCompression parses "gzip", "zstd" or "none" (also "" for gzip and
// "tar"/"uncompressed" for none).
func ParseCompression(s string) (Compression, error) {
	switch strings.ToLower(s) {
	case "", "gzip", "gz":
		return Gzip, nil
	case "zstd", "zst":
		return Zstd, nil
	case "none", "tar", "uncompressed":
		return None, nil
	}
	return 0, fmt.Errorf("%w: compression %q (want gzip, zstd or none)", ErrUnsupported, s)
}

// ParseMediaType returns the compression of a layer media type: the OCI
// types, their deprecated non-distributable variants and Docker's
// rootfs.diff.tar(.gzip|.zstd) types.
func ParseMediaType(mt string) (Compression, error) {
	switch mt {
	case MediaTypeTar,
		"application/vnd.oci.image.layer.nondistributable.v1.tar",
		"application/vnd.docker.image.rootfs.diff.tar":
		return None, nil
	case MediaTypeTarGzip,
		"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
		"application/vnd.docker.image.rootfs.diff.tar.gzip",
		"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip":
		return Gzip, nil
	case MediaTypeTarZstd,
		"application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
		"application/vnd.docker.image.rootfs.diff.tar.zstd":
		return Zstd, nil
	}
	return 0, fmt.Errorf("%w: layer media type %q", ErrUnsupported, mt)
}

var (
	gzipMagic = []byte{0x1f, 0x8b}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// detectCompression looks at the first bytes of a blob. Anything that is
// neither gzip nor zstd is taken to be a tar; the tar reader rejects it if
// it is not.
func detectCompression(br *bufio.Reader) Compression {
	head, _ := br.Peek(4)
	switch {
	case bytes.HasPrefix(head, zstdMagic):
		return Zstd
	case bytes.HasPrefix(head, gzipMagic):
		return Gzip
	}
	return None
}

// newDecompressor returns a reader of the decompressed stream. Errors from
// the decoder come back as *CorruptError with the offset counted by cnt.
func newDecompressor(c Compression, r io.Reader, cnt *int64, lim Limits) (io.ReadCloser, error) {
	switch c {
	case None:
		return io.NopCloser(r), nil
	case Gzip:
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, classifyDecodeError(err, cnt)
		}
		return &decodeReader{r: zr, close: zr.Close, cnt: cnt}, nil
	case Zstd:
		mem := lim.ZstdMaxMemory
		zr, err := zstd.NewReader(r,
			zstd.WithDecoderMaxWindow(min(lim.ZstdMaxWindow, mem)),
			zstd.WithDecoderMaxMemory(mem),
			zstd.WithDecoderConcurrency(min(4, runtime.GOMAXPROCS(0))),
			zstd.WithDecoderLowmem(false))
		if err != nil {
			return nil, classifyDecodeError(err, cnt)
		}
		return &decodeReader{r: zr, close: func() error { zr.Close(); return nil }, cnt: cnt}, nil
	}
	return nil, fmt.Errorf("%w: %v", ErrUnsupported, c)
}

// decodeReader turns decoder errors into CorruptError / ErrLimitExceeded.
type decodeReader struct {
	r     io.Reader
	close func() error
	cnt   *int64
	err   error
}

func (d *decodeReader) Read(p []byte) (int, error) {
	if d.err != nil {
		return 0, d.err
	}
	n, err := d.r.Read(p)
	if err != nil && err != io.EOF {
		d.err = classifyDecodeError(err, d.cnt)
		return n, d.err
	}
	return n, err
}

func (d *decodeReader) Close() error { return d.close() }

// sourceError marks an error of the underlying blob reader, which is
// passed through rather than reported as corruption.
type sourceError struct{ err error }

func (e *sourceError) Error() string { return "reading layer blob: " + e.err.Error() }
func (e *sourceError) Unwrap() error { return e.err }

func classifyDecodeError(err error, cnt *int64) error {
	var se *sourceError
	var ce *CorruptError
	if errors.As(err, &se) || errors.As(err, &ce) || errors.Is(err, ErrLimitExceeded) {
		return err
	}
	if errors.Is(err, zstd.ErrWindowSizeExceeded) || errors.Is(err, zstd.ErrDecoderSizeExceeded) {
		return fmt.Errorf("%w: zstd window or memory above the limit at compressed offset %d: %v", ErrLimitExceeded, *cnt, err)
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return &CorruptError{Stream: "compressed", Offset: *cnt, Err: err}
}

// Compression levels, on the scale of the gzip and zstd command-line
// tools. See CreateOptions.Level.
const (
	DefaultGzipLevel = 5
	DefaultZstdLevel = 3
	MaxGzipLevel     = 9
	MaxZstdLevel     = 22
)

// compressionLevel validates a CreateOptions.Level for c and returns it
// with 0 replaced by the default of c.
func compressionLevel(c Compression, level int) (int, error) {
	maxLevel := 0
	switch c {
	case Gzip:
		maxLevel = MaxGzipLevel
		if level == 0 {
			level = DefaultGzipLevel
		}
	case Zstd:
		maxLevel = MaxZstdLevel
		if level == 0 {
			level = DefaultZstdLevel
		}
	case None:
		return 0, nil
	}
	if level < 1 || level > maxLevel {
		return 0, fmt.Errorf("%w: %v level %d (want 1 to %d)", ErrUnsupported, c, level, maxLevel)
	}
	return level, nil
}

// newCompressor returns a writer compressing into w at level (validated by
// compressionLevel). Close flushes it (and does not close w).
func newCompressor(c Compression, w io.Writer, concurrency, level int) (io.WriteCloser, error) {
	if concurrency <= 0 {
		concurrency = runtime.GOMAXPROCS(0)
	}
	switch c {
	case None:
		return nopWriteCloser{w}, nil
	case Gzip:
		return newParallelGzip(w, concurrency, level), nil
	case Zstd:
		// Concurrent blocks split the input at fixed job boundaries, so
		// the output does not depend on the concurrency as long as it is
		// at least 2 (1 disables the job split and changes the bytes).
		// The zstd levels map onto klauspost's four encoders as
		// zstd.EncoderLevelFromZstd says (1-2 fastest, 3-5 default,
		// 6-9 better, 10+ best), with its default 8 MiB window.
		return zstd.NewWriter(w,
			zstd.WithEncoderConcurrency(max(2, concurrency)),
			zstd.WithConcurrentBlocks(true),
			zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(level)))
	}
	return nil, fmt.Errorf("%w: %v", ErrUnsupported, c)
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

// gzipBlockSize is the uncompressed size of each gzip member written by
// parallelGzip. It is fixed so that the output does not depend on the
// concurrency.
const gzipBlockSize = 1 << 20

// parallelGzip compresses fixed-size blocks of its input into independent
// gzip members on several goroutines and writes them in order. A
// multi-member stream is valid gzip (RFC 1952 section 2.2) and every gzip
// reader in use (Go's, zlib's, GNU gzip) decodes it as one stream. Each
// member costs ~20 bytes and restarts the deflate window, about 0.1% on
// typical layers. It is not safe for concurrent use.
type parallelGzip struct {
	w      io.Writer
	level  int
	cur    []byte
	order  chan *gzJob // jobs in stream order, to the writer goroutine
	sem    chan struct{}
	bufs   sync.Pool
	wrote  bool // at least one member queued
	closed bool
	done   chan struct{}
	mu     sync.Mutex
	err    error
}

type gzJob struct {
	in   []byte
	out  bytes.Buffer
	err  error
	done chan struct{}
}

func newParallelGzip(w io.Writer, n, level int) *parallelGzip {
	z := &parallelGzip{
		w:     w,
		level: level,
		order: make(chan *gzJob, 2*n),
		sem:   make(chan struct{}, n),
		done:  make(chan struct{}),
	}
	z.bufs.New = func() any { b := make([]byte, 0, gzipBlockSize); return &b }
	z.cur = (*z.bufs.Get().(*[]byte))[:0]
	go z.writeLoop()
	return z
}

func (z *parallelGzip) writeLoop() {
	defer close(z.done)
	for j := range z.order {
		<-j.done
		in := j.in[:0]
		z.bufs.Put(&in)
		if z.getErr() != nil {
			continue
		}
		if j.err != nil {
			z.setErr(j.err)
			continue
		}
		if _, err := z.w.Write(j.out.Bytes()); err != nil {
			z.setErr(err)
		}
	}
}

func (z *parallelGzip) getErr() error {
	z.mu.Lock()
	defer z.mu.Unlock()
	return z.err
}

func (z *parallelGzip) setErr(err error) {
	z.mu.Lock()
	defer z.mu.Unlock()
	if z.err == nil {
		z.err = err
	}
}

func (z *parallelGzip) Write(p []byte) (int, error) {
	if z.closed {
		return 0, errors.New("layers: write to a closed gzip writer")
	}
	n := 0
	for len(p) > 0 {
		if err := z.getErr(); err != nil {
			return n, err
		}
		k := min(len(p), gzipBlockSize-len(z.cur))
		z.cur = append(z.cur, p[:k]...)
		p = p[k:]
		n += k
		if len(z.cur) == gzipBlockSize {
			z.flushBlock()
		}
	}
	return n, nil
}

func (z *parallelGzip) flushBlock() {
	j := &gzJob{in: z.cur, done: make(chan struct{})}
	z.cur = (*z.bufs.Get().(*[]byte))[:0]
	z.wrote = true
	z.sem <- struct{}{}
	go func() {
		defer func() { <-z.sem; close(j.done) }()
		j.out.Grow(len(j.in)/2 + 64)
		zw, err := gzip.NewWriterLevel(&j.out, z.level)
		if err == nil {
			_, err = zw.Write(j.in)
		}
		if err == nil {
			err = zw.Close()
		}
		j.err = err
	}()
	z.order <- j
}

// Close compresses the last block and waits for all members to be written.
func (z *parallelGzip) Close() error {
	if z.closed {
		return z.getErr()
	}
	z.closed = true
	if len(z.cur) > 0 || !z.wrote {
		z.flushBlock()
	}
	close(z.order)
	<-z.done
	return z.getErr()
}
