package overlay

import (
	"context"
	"fmt"

	"github.com/imgtool/imgtool/internal/lockfile"
)

// fileLock is a lock on one lock file of the store.
//
// Lock order, to keep processes from deadlocking each other: the store
// lock (store.lock) first, then a container lock, then a layer lock.
type fileLock = lockfile.Lock

// acquireLock takes the lock file at path (see lockfile.Acquire), shared
// or exclusive, waiting until it is free or ctx is done.
func acquireLock(ctx context.Context, path string, exclusive bool) (*fileLock, error) {
	l, err := lockfile.Acquire(ctx, path, exclusive)
	if err != nil {
		return nil, fmt.Errorf("overlay: %w", err)
	}
	return l, nil
}
