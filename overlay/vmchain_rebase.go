package overlay

import (
	"fmt"
	"os"

	"github.com/imgtool/imgtool/internal/imagelock"
	"github.com/imgtool/imgtool/qcow2"
)

// backingFormatExt is the qcow2 header extension that records the
// backing file's format.
const backingFormatExt = 0xe2792aca

// setBacking rewrites the backing file reference of the qcow2 image at
// path to name (format qcow2) without touching its data: qemu-img
// rebase -u. The caller guarantees the new backing file shows the same
// content as the old one (squash has just committed the old one into
// it). lock is an open descriptor of path holding QEMU's writer lock, so
// no VM has the image open while its header changes.
//
// The header, its extensions and the backing name live in cluster 0; the
// new header is written in one WriteAt at offset 0 and synced, so a
// crash leaves either the old or the new reference (a header of at most
// a few hundred bytes lies within one disk sector of most devices).
func setBacking(path string, lock *os.File, name string) error {
	img, err := qcow2.Open(path, qcow2.Options{Format: qcow2.FormatQcow2, NoBacking: true, ForceShare: true})
	if err != nil {
		return err
	}
	h := *img.Header()
	img.Close()
	old, err := h.MarshalBinary()
	if err != nil {
		return fmt.Errorf("overlay: header of %s: %w", path, err)
	}
	h.Extensions = append([]qcow2.Extension(nil), h.Extensions...)
	h.BackingFile = name
	h.BackingFormat = string(qcow2.FormatQcow2)
	h.SetExtension(backingFormatExt, []byte(qcow2.FormatQcow2))
	buf, err := h.MarshalBinary()
	if err != nil {
		return fmt.Errorf("overlay: header of %s: %w", path, err)
	}
	if len(buf) < len(old) {
		buf = append(buf, make([]byte, len(old)-len(buf))...) // clear the old name's tail
	}
	if _, err := lock.WriteAt(buf, 0); err != nil {
		return fmt.Errorf("overlay: rewriting the header of %s: %w", path, err)
	}
	if err := lock.Sync(); err != nil {
		return fmt.Errorf("overlay: rewriting the header of %s: %w", path, err)
	}
	return nil
}

// lockImage opens path (for reading and writing when write is set, which
// needs the file's write permission) and takes QEMU's lock in mode, failing (errors.Is imagelock.ErrLocked) when another process, a
// running VM for instance, has the image open in a conflicting way.
// Closing the returned file releases the lock.
func lockImage(path string, mode imagelock.Mode, write bool) (*os.File, error) {
	flag := os.O_RDONLY
	if write {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, fmt.Errorf("overlay: %w", err)
	}
	if _, err := imagelock.Acquire(f, mode); err != nil {
		f.Close()
		return nil, fmt.Errorf("overlay: %w", err)
	}
	return f, nil
}
