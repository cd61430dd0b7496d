// Package faultfile provides an in-memory file that can "lose power", for
// crash-consistency tests of on-disk formats.
//
// A File keeps two states: the durable contents, which survive a crash,
// and the writes (and truncations) issued since the last Sync, which a
// crash may drop. After the write budget set by CrashAfter is used up the
// file is crashed: every further operation fails with ErrCrashed, and
// Image returns what a disk could hold after the power cut.
//
// A File is safe for concurrent use.
package faultfile

import (
	"errors"
	"io"
	"math/rand/v2"
	"sync"
)

// ErrCrashed is returned by every operation after the power was lost.
var ErrCrashed = errors.New("faultfile: power lost")

type op struct {
	off      int64
	data     []byte // nil for a truncate
	truncate bool
	size     int64 // new size, for a truncate
}

// File is an in-memory file with crash injection.
type File struct {
	mu      sync.Mutex
	durable []byte
	pending []op
	current []byte // durable with pending applied: what reads see

	writes     int // writes and truncates issued so far
	crashAfter int // budget; <= 0: never crash
	crashed    bool
	syncs      int
}

// New returns a File holding data (durable).
func New(data []byte) *File {
	d := append([]byte(nil), data...)
	return &File{durable: d, current: append([]byte(nil), d...)}
}

// CrashAfter makes the file lose power once n more writes or truncates
// have been issued: the nth is accepted and the next operation fails.
// n <= 0 disables crashing.
func (f *File) CrashAfter(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if n <= 0 {
		f.crashAfter = 0
		return
	}
	f.crashAfter = f.writes + n
}

// Writes reports how many writes and truncates were issued so far; a test
// runs a workload once to count them, then crashes at each point.
func (f *File) Writes() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.writes
}

// Syncs reports how many times Sync succeeded.
func (f *File) Syncs() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.syncs
}

// Crashed reports whether the power was lost.
func (f *File) Crashed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.crashed
}

func (f *File) checkCrash() error {
	if f.crashed {
		return ErrCrashed
	}
	if f.crashAfter > 0 && f.writes >= f.crashAfter {
		f.crashed = true
		return ErrCrashed
	}
	return nil
}

// ReadAt reads what the file holds now, unsynced writes included.
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.crashed {
		return 0, ErrCrashed
	}
	if off < 0 {
		return 0, errors.New("faultfile: negative offset")
	}
	if off >= int64(len(f.current)) {
		return 0, io.EOF
	}
	n := copy(p, f.current[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// WriteAt records a write; it becomes durable at the next Sync.
func (f *File) WriteAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.checkCrash(); err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, errors.New("faultfile: negative offset")
	}
	f.writes++
	data := append([]byte(nil), p...)
	f.pending = append(f.pending, op{off: off, data: data})
	f.current = apply(f.current, op{off: off, data: data})
	return len(p), nil
}

// Truncate changes the size; like a write it is volatile until Sync.
func (f *File) Truncate(size int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.checkCrash(); err != nil {
		return err
	}
	if size < 0 {
		return errors.New("faultfile: negative size")
	}
	f.writes++
	o := op{truncate: true, size: size}
	f.pending = append(f.pending, o)
	f.current = apply(f.current, o)
	return nil
}

// Sync makes every write issued so far durable.
func (f *File) Sync() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.crashed {
		return ErrCrashed
	}
	f.durable = append(f.durable[:0], f.current...)
	f.pending = nil
	f.syncs++
	return nil
}

// Size reports the current size.
func (f *File) Size() (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.crashed {
		return 0, ErrCrashed
	}
	return int64(len(f.current)), nil
}

// Close does nothing; the contents stay available through Image.
func (f *File) Close() error { return nil }

// Keep chooses which unsynced operations survive a crash.
type Keep int

const (
	// KeepNone drops every write since the last Sync.
	KeepNone Keep = iota
	// KeepAll keeps every write, as if the cache was flushed just in time.
	KeepAll
	// KeepRandom keeps a random subset, in any order: what a disk with a
	// volatile write cache may do.
	KeepRandom
)

// Image returns the bytes a disk could hold after losing power now: the
// durable contents plus the unsynced operations that keep selects. Use it
// once the file has crashed (or at any time, to simulate a crash now).
func (f *File) Image(keep Keep, rng *rand.Rand) []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	img := append([]byte(nil), f.durable...)
	for _, o := range f.pending {
		switch keep {
		case KeepAll:
		case KeepRandom:
			if rng.IntN(2) == 0 {
				continue
			}
		default:
			continue
		}
		img = apply(img, o)
	}
	return img
}

func apply(buf []byte, o op) []byte {
	if o.truncate {
		if o.size <= int64(len(buf)) {
			return buf[:o.size]
		}
		return append(buf, make([]byte, o.size-int64(len(buf)))...)
	}
	end := o.off + int64(len(o.data))
	if end > int64(len(buf)) {
		buf = append(buf, make([]byte, end-int64(len(buf)))...)
	}
	copy(buf[o.off:], o.data)
	return buf
}
