package layers

import (
	"bufio"
	"bytes"
	stdgzip "compress/gzip"
	"io"
	"math/rand/v2"
	"testing"
)

func gzipParallel(t *testing.T, data []byte, conc int) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := newCompressor(Gzip, &buf, conc, DefaultGzipLevel)
	must(t, err)
	_, err = w.Write(data)
	must(t, err)
	must(t, w.Close())
	must(t, w.Close()) // a second Close is harmless
	return buf.Bytes()
}

func decompress(blob []byte) ([]byte, error) {
	var cnt int64
	br := bufio.NewReaderSize(bytes.NewReader(blob), 64<<10)
	lim, _ := Limits{}.withDefaults()
	d, err := newDecompressor(detectCompression(br), br, &cnt, lim)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return io.ReadAll(d)
}

// TestParallelGzip: the multi-member stream is the same whatever the
// concurrency, and both the standard library and our reader read it.
func TestParallelGzip(t *testing.T) {
	data := make([]byte, 5<<20+12345)
	r := rand.New(rand.NewPCG(1, 1))
	for i := range data {
		data[i] = byte(r.IntN(16))
	}
	blob := gzipParallel(t, data, 3)
	if !bytes.Equal(blob, gzipParallel(t, data, 1)) {
		t.Error("output depends on the concurrency")
	}
	zr, err := stdgzip.NewReader(bytes.NewReader(blob))
	must(t, err)
	std, err := io.ReadAll(zr)
	must(t, err)
	if !bytes.Equal(std, data) {
		t.Fatal("compress/gzip reads other bytes")
	}
	got, err := decompress(blob)
	must(t, err)
	if !bytes.Equal(got, data) {
		t.Fatal("our reader reads other bytes")
	}
	empty := gzipParallel(t, nil, 2)
	if got, err := decompress(empty); err != nil || len(got) != 0 {
		t.Errorf("empty stream: %q %v", got, err)
	}
}
