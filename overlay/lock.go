package overlay

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// fileLock is a flock(2) lock on one lock file of the store. flock locks
// belong to the open file description, so two goroutines of one process
// that each open the file exclude each other exactly as two processes do,
// and the kernel drops the lock when the holder dies.
//
// Lock order, to keep processes from deadlocking each other: the store
// lock (store.lock) first, then a container lock, then a layer lock.
type fileLock struct {
	f *os.File
}

// lockPollMin and lockPollMax bound the wait between two non-blocking
// flock attempts while a lock is held elsewhere. Polling (rather than a
// blocking flock) lets a waiter honour its context.
const (
	lockPollMin = time.Millisecond
	lockPollMax = 50 * time.Millisecond
)

// acquireLock opens (creating it if needed) the lock file at path and
// takes a shared or exclusive flock on it, waiting until it is free or
// ctx is done.
func acquireLock(ctx context.Context, path string, exclusive bool) (*fileLock, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("overlay: lock %s: %w", path, err)
	}
	how := unix.LOCK_SH
	if exclusive {
		how = unix.LOCK_EX
	}
	wait := lockPollMin
	for {
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		if err == nil {
			return &fileLock{f: f}, nil
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("overlay: lock %s: %w", path, err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			f.Close()
			return nil, fmt.Errorf("overlay: waiting for lock %s: %w", path, ctx.Err())
		case <-t.C:
		}
		wait = min(2*wait, lockPollMax)
	}
}

// Unlock releases the lock. It is safe to call on a nil lock and more
// than once.
func (l *fileLock) Unlock() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close() // closing the last descriptor releases the flock
	l.f = nil
	return err
}
