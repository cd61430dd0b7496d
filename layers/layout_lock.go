package layers

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// lockIndex takes an exclusive flock(2) on the layout directory for a
// read-modify-write of index.json and returns the function that releases
// it. flock locks belong to the open file description, so the lock
// serialises writers in this process (goroutines) and in other imgtool
// processes; tools that do not take it (umoci, skopeo) are not excluded.
// Locking the directory itself adds no file to the layout.
func (l *Layout) lockIndex() (func(), error) {
	d, err := os.Open(l.dir)
	if err != nil {
		return nil, err
	}
	for {
		err = unix.Flock(int(d.Fd()), unix.LOCK_EX)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("layers: locking %s: %w", l.dir, err)
	}
	return func() {
		unix.Flock(int(d.Fd()), unix.LOCK_UN)
		d.Close()
	}, nil
}
