package qcow2

import (
	"fmt"
	"io"
	"os"
)

// storage is the file an image lives in. *os.File satisfies it through
// osStorage; tests plug in internal/faultfile to simulate power loss.
// Implementations must allow concurrent ReadAt and WriteAt calls.
type storage interface {
	io.ReaderAt
	io.WriterAt
	// Sync makes every completed write durable.
	Sync() error
	// Truncate sets the file size.
	Truncate(size int64) error
	// Size reports the current file size.
	Size() (int64, error)
	Close() error
}

// osStorage adapts *os.File to storage.
type osStorage struct{ *os.File }

var _ storage = osStorage{}

func (s osStorage) Size() (int64, error) {
	fi, err := s.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// readFull reads exactly len(p) bytes at off; bytes past the end of the
// file read as zeros (a file may end inside its last cluster).
func readFull(st storage, p []byte, off int64) error {
	n, err := st.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == io.EOF || err == nil {
		clear(p[n:])
		return nil
	}
	return err
}

// writeFull writes p at off and reports a short write as an error.
func writeFull(st storage, p []byte, off int64) error {
	n, err := st.WriteAt(p, off)
	if err != nil {
		return err
	}
	if n != len(p) {
		return fmt.Errorf("short write at %#x: %d of %d bytes", off, n, len(p))
	}
	return nil
}
