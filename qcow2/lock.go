package qcow2

import (
	"errors"
	"fmt"
	"os"
	"time"

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
		if l == img && (img.w != nil || img.rw != nil) {
			continue
		}
		f, ok := any(l.f).(*os.File)
		if !ok || f == nil {
			continue
		}
		if _, err := acquireLock(f, imagelock.Reader); err != nil {
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

// acquireLock takes image locks, retrying for a moment on a conflict: a
// child process forked by this very process (os/exec elsewhere) shares
// our open files until it execs, so a lock we just released can linger
// briefly. A real holder is reported after about a quarter second.
func acquireLock(f *os.File, mode imagelock.Mode) (*imagelock.Lock, error) {
	for try := 0; ; try++ {
		l, err := imagelock.Acquire(f, mode)
		if err == nil || try == 8 || !errors.Is(err, imagelock.ErrLocked) {
			return l, err
		}
		time.Sleep(time.Duration(try+1) * 5 * time.Millisecond)
	}
}
