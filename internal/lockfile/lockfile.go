// Package lockfile takes flock(2) locks on lock files: shared or
// exclusive, waiting until the lock is free or the context is done. The
// layer store and VM chain directories serialise their processes with it.
package lockfile

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Lock is a flock(2) lock on one lock file. flock locks belong to the
// open file description, so two goroutines of one process that each open
// the file exclude each other exactly as two processes do, and the kernel
// drops the lock when the holder dies. Unlock releases it; a Lock is not
// safe for concurrent Unlock.
type Lock struct {
	f *os.File
}

// lockPollMin and lockPollMax bound the wait between two non-blocking
// flock attempts while a lock is held elsewhere. Polling (rather than a
// blocking flock) lets a waiter honour its context.
const (
	lockPollMin = time.Millisecond
	lockPollMax = 50 * time.Millisecond
)

// Acquire opens (creating it if needed, mode 0600) the lock file at path
// and takes a shared or exclusive flock on it, waiting until it is free
// or ctx is done. Errors name the path; callers add their package prefix.
func Acquire(ctx context.Context, path string, exclusive bool) (*Lock, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	how := unix.LOCK_SH
	if exclusive {
		how = unix.LOCK_EX
	}
	wait := lockPollMin
	for {
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		if err == nil {
			return &Lock{f: f}, nil
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			f.Close()
			return nil, fmt.Errorf("waiting for lock %s: %w", path, ctx.Err())
		case <-t.C:
		}
		wait = min(2*wait, lockPollMax)
	}
}

// Unlock releases the lock. It is safe to call on a nil lock and more
// than once.
func (l *Lock) Unlock() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close() // closing the last descriptor releases the flock
	l.f = nil
	return err
}
