package qcow2

import (
	"fmt"
	"os"

	"github.com/imgtool/imgtool/internal/imagelock"
)

// lockChain takes QEMU-compatible image locks after Open: the writable
// top image was locked as a writer when its writer was set up; every
// other image of the chain gets a reader lock (consistent read, refusing
// writers), unless opts.ForceShare. A held lock is released when its
// file is closed.
func (img *Image) lockChain(opts *Options) error {
	if opts.ForceShare {
		return nil
	}
	for l := img; l != nil; l = l.backing {
		if l == img && img.w != nil {
			continue
		}
		f, ok := any(l.f).(*os.File)
		if !ok || f == nil {
			continue
		}
		if _, err := imagelock.Acquire(f, imagelock.Reader); err != nil {
			return fmt.Errorf("qcow2: %w", err)
		}
	}
	return nil
}

// afterOpen runs once Open has opened the chain: it sets up writing and
// takes the image locks.
func (img *Image) afterOpen(opts *Options) error {
	if opts.Writable {
		if err := img.openWriter(opts); err != nil {
			return err
		}
	}
	return img.lockChain(opts)
}
