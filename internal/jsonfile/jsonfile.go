// Package jsonfile reads and writes the small JSON records of the layer
// store and of VM chain directories: reads are capped at 1 MiB, writes
// replace the file atomically (internal/atomicfile).
package jsonfile

import (
	"encoding/json"
	"fmt"
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
