// Package syncfs flushes a whole filesystem with syncfs(2): one call
// instead of an fsync per file after unpacking a layer or building a
// chain image.
package syncfs

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Sync flushes the filesystem holding dir. Errors name dir.
func Sync(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("%s: %w", dir, err)
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		return fmt.Errorf("syncfs %s: %w", dir, err)
	}
	return nil
}
