package qcow2

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.ReaderAt
	n int64
}

func (c *countingReader) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	c.n += int64(n)
	return n, err
}

// TestOpenReaderAt opens the fixture chain from in-memory bytes through
// OpenBacking and checks that it reads as Open of the files does; that
// a backing name from a reader never reaches the file system without
// OpenBacking; that a loop of names is caught; and that the header read
// stays within the image's cluster 0.
func TestOpenReaderAt(t *testing.T) {
	dir := t.TempDir()
	base := copyFixture(t, "chain/base.qcow2", dir, "base.qcow2")
	top := copyFixture(t, "chain/top.qcow2", dir, "top.qcow2")
	setBacking(t, top, "base.qcow2", "qcow2")
	files := map[string][]byte{}
	for _, p := range []string{base, top} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		files[filepath.Base(p)] = b
	}
	var asked []Reference
	open := func(r Reference) (io.ReaderAt, int64, error) {
		asked = append(asked, r)
		b, ok := files[r.Name]
		if !ok {
			return nil, 0, os.ErrNotExist
		}
		return bytes.NewReader(b), int64(len(b)), nil
	}
	want, err := Open(top, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer want.Close()
	got, err := OpenReaderAt("mem/top.qcow2", bytes.NewReader(files["top.qcow2"]), int64(len(files["top.qcow2"])), Options{OpenBacking: open})
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	if len(asked) != 1 || asked[0].Name != "base.qcow2" || asked[0].Path != "mem/base.qcow2" || asked[0].Image != "mem/top.qcow2" {
		t.Errorf("OpenBacking asked %+v", asked)
	}
	if got.Backing() == nil || got.Size() != want.Size() {
		t.Fatalf("chain: backing %v, size %d want %d", got.Backing(), got.Size(), want.Size())
	}
	a, b := make([]byte, want.Size()), make([]byte, want.Size())
	if _, err := want.ReadAt(a, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := got.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Error("chain read from readers differs from the files")
	}

	// Without OpenBacking the backing name is refused.
	if _, err := OpenReaderAt("mem/top.qcow2", bytes.NewReader(files["top.qcow2"]), int64(len(files["top.qcow2"])), Options{}); !errors.Is(err, ErrRefused) {
		t.Errorf("no OpenBacking: %v, want ErrRefused", err)
	}
	// NoBacking reads the header only, within cluster 0.
	cr := &countingReader{r: bytes.NewReader(files["top.qcow2"])}
	img, err := OpenReaderAt("mem/top.qcow2", cr, int64(len(files["top.qcow2"])), Options{NoBacking: true})
	if err != nil {
		t.Fatal(err)
	}
	if cr.n > 4+max(4096, img.ClusterSize())+int64(img.Header().L1Size)*8 { // magic probe, header, L1
		t.Errorf("opening read %d bytes, more than max(4 KiB, cluster 0) and the L1 table", cr.n)
	}
	img.Close()
	// A name loop: top names itself.
	self := func(r Reference) (io.ReaderAt, int64, error) {
		b := files["top.qcow2"]
		return bytes.NewReader(b), int64(len(b)), nil
	}
	loop := copyFixture(t, "chain/top.qcow2", dir, "loop.qcow2")
	setBacking(t, loop, "loop.qcow2", "qcow2")
	lb, _ := os.ReadFile(loop)
	files["top.qcow2"] = lb
	if _, err := OpenReaderAt("mem/loop.qcow2", bytes.NewReader(lb), int64(len(lb)), Options{OpenBacking: self}); !errors.Is(err, ErrChainLoop) {
		t.Errorf("name loop: %v, want ErrChainLoop", err)
	}
	// A reader that is an io.Closer is closed with the image.
	cl := &closeCounter{ReaderAt: bytes.NewReader(files["base.qcow2"])}
	img, err = OpenReaderAt("mem/base.qcow2", cl, int64(len(files["base.qcow2"])), Options{})
	if err != nil {
		t.Fatal(err)
	}
	img.Close()
	if cl.closed != 1 {
		t.Errorf("reader closed %d times with the image, want 1", cl.closed)
	}
	// Writable is refused.
	if _, err := OpenReaderAt("mem/x", bytes.NewReader(lb), int64(len(lb)), Options{Writable: true}); err == nil {
		t.Error("writable OpenReaderAt accepted")
	}
}

type closeCounter struct {
	io.ReaderAt
	closed int
}

func (c *closeCounter) Close() error {
	c.closed++
	return nil
}
