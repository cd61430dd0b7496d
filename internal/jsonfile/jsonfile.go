// Package jsonfile reads and writes the small JSON records of the layer
// store and of VM chain directories: reads are capped at 1 MiB, writes
// replace the file atomically (internal/atomicfile). ReadCapped reads
// other small files whole under a cap of the caller's (an OCI layout's
// index.json, a registry credential file).
package jsonfile

import (
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/imgtool/imgtool/internal/atomicfile"
)

// MaxSize is the largest file Read accepts.
const MaxSize = 1 << 20

// Read decodes the JSON file at path into v. A file larger than MaxSize
// is refused; a missing file gives an error matching fs.ErrNotExist.
func Read(path string, v any) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() > MaxSize {
		return fmt.Errorf("%s: %d bytes, more than 1 MiB", path, fi.Size())
	}
	dec := json.NewDecoder(f)
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// ReadCapped reads the whole regular file at path, of at most max bytes.
// Every error names path; a missing file gives one matching
// fs.ErrNotExist.
func ReadCapped(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	if fi.Size() > max {
		return nil, fmt.Errorf("%s: %d bytes, more than the %d allowed", path, fi.Size(), max)
	}
	b := make([]byte, fi.Size())
	if _, err := io.ReadFull(f, b); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return b, nil
}

// Write stores v, indented and newline-terminated, as the file at path
// with mode perm (before the umask; a replaced file keeps its mode).
func Write(path string, v any, perm fs.FileMode) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return WriteBytes(path, append(b, '\n'), perm)
}

// WriteBytes replaces the file at path with b: readers see the old or
// the new content, and after a crash the file is one or the other.
func WriteBytes(path string, b []byte, perm fs.FileMode) error {
	return atomicfile.WriteFile(path, b, atomicfile.Options{Perm: perm})
}
