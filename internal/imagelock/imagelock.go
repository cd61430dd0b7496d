// Package imagelock implements QEMU's image locking protocol, so that
// imgtool and QEMU (qemu-system, qemu-img, qemu-io) see each other's use of
// an image file.
//
// QEMU's file driver takes open-file-description (OFD) read locks on single
// bytes of the image file: byte 100+i while it holds permission i, and byte
// 200+i while it refuses to share permission i with others. Before using a
// permission it checks that nobody refuses to share it, and before refusing
// to share one it checks that nobody holds it. The permissions, by bit
// index, are consistent-read (0), write (1), write-unchanged (2) and
// resize (3).
//
// Locks belong to the open file description, so they conflict across
// processes and across separate opens within one process, and they vanish
// when the file is closed.
package imagelock

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Perm is a set of QEMU block permissions.
type Perm uint8

// The permissions QEMU's file driver locks, in bit order.
const (
	ConsistentRead Perm = 1 << iota
	Write
	WriteUnchanged
	Resize

	// All is every permission.
	All = ConsistentRead | Write | WriteUnchanged | Resize
)

const (
	permBase   = 100
	sharedBase = 200
	numPerms   = 4
)

var permNames = [numPerms]string{"consistent read", "write", "write unchanged", "resize"}

// String names the permissions in p, as QEMU's messages do.
func (p Perm) String() string {
	var names []string
	for i := range numPerms {
		if p&(1<<i) != 0 {
			names = append(names, permNames[i])
		}
	}
	return strings.Join(names, ", ")
}

// Modes used by imgtool, matching what qemu-io and qemu-img request.
var (
	// Reader is a consistent read that refuses concurrent writers, as
	// qemu-img info or qemu-io -r without -U.
	Reader = Mode{Perm: ConsistentRead, Shared: ConsistentRead | WriteUnchanged}
	// Writer reads, writes and resizes, and shares only reading.
	Writer = Mode{Perm: ConsistentRead | Write | Resize, Shared: ConsistentRead | WriteUnchanged}
	// ForceShare reads without refusing anything (-U / --force-share).
	ForceShare = Mode{Perm: ConsistentRead, Shared: All}
)

// Mode is what an opener asks for: the permissions it uses and the ones it
// lets others use at the same time.
type Mode struct {
	Perm   Perm
	Shared Perm
}

// Holder is a process that holds a lock byte on the file.
type Holder struct {
	PID     int
	Command string
}

func (h Holder) String() string {
	if h.Command == "" {
		return fmt.Sprintf("pid %d", h.PID)
	}
	return fmt.Sprintf("%s (pid %d)", h.Command, h.PID)
}

// ErrLocked is matched (errors.Is) by every *ConflictError.
var ErrLocked = errors.New("imagelock: image is in use")

// ConflictError says which permission could not be had and who blocks it.
type ConflictError struct {
	Path string
	// Perm is the single permission in conflict.
	Perm Perm
	// Shared is true when the conflict was over sharing Perm (another
	// process uses it and we refuse to share it), as in QEMU's "Failed to
	// get shared lock" message.
	Shared  bool
	Holders []Holder
}

func (e *ConflictError) Error() string {
	var b strings.Builder
	if e.Shared {
		fmt.Fprintf(&b, "%s: failed to get shared %q lock", e.Path, e.Perm.String())
	} else {
		fmt.Fprintf(&b, "%s: failed to get %q lock", e.Path, e.Perm.String())
	}
	if len(e.Holders) > 0 {
		hs := make([]string, len(e.Holders))
		for i, h := range e.Holders {
			hs[i] = h.String()
		}
		fmt.Fprintf(&b, ": the image is in use by %s", strings.Join(hs, ", "))
	} else {
		b.WriteString(": is another process using the image?")
	}
	return b.String()
}

func (e *ConflictError) Is(target error) bool { return target == ErrLocked }

// Lock is the set of lock bytes one open file holds. It is released by
// Release or by closing the file. A Lock is not safe for concurrent use.
type Lock struct {
	f    *os.File
	mode Mode
}

// Acquire takes QEMU-compatible locks on f for mode. It fails with a
// *ConflictError when another open file description holds a conflicting
// lock, naming the processes that hold it where /proc tells. On failure
// no lock bytes stay held.
func Acquire(f *os.File, mode Mode) (*Lock, error) {
	l := &Lock{f: f}
	if err := l.Change(mode); err != nil {
		return nil, err
	}
	return l, nil
}

// Mode reports the mode currently held.
func (l *Lock) Mode() Mode { return l.mode }

// Change switches the held lock bytes to mode, as QEMU does when it
// reopens an image read-write. On failure the previous mode stays held.
func (l *Lock) Change(mode Mode) error {
	old := l.mode
	if err := l.apply(mode); err != nil {
		l.apply(old) //nolint:errcheck // best effort to restore; the first error is what matters
		return err
	}
	if err := l.check(mode); err != nil {
		l.apply(old) //nolint:errcheck
		return err
	}
	l.mode = mode
	return nil
}

// Release drops all lock bytes.
func (l *Lock) Release() error {
	err := l.apply(Mode{})
	l.mode = Mode{}
	return err
}

// apply sets the lock bytes for mode and clears the others.
func (l *Lock) apply(mode Mode) error {
	return l.control(func(fd int) error {
		for i := range numPerms {
			bit := Perm(1 << i)
			if err := setByte(fd, permBase+int64(i), mode.Perm&bit != 0); err != nil {
				return fmt.Errorf("%s: locking byte %d: %w", l.f.Name(), permBase+i, err)
			}
			// Mode{} holds nothing; otherwise refuse what is not shared.
			unshared := mode != (Mode{}) && mode.Shared&bit == 0
			if err := setByte(fd, sharedBase+int64(i), unshared); err != nil {
				return fmt.Errorf("%s: locking byte %d: %w", l.f.Name(), sharedBase+i, err)
			}
		}
		return nil
	})
}

// check looks for other open file descriptions whose locks conflict with mode.
func (l *Lock) check(mode Mode) error {
	return l.control(func(fd int) error {
		for i := range numPerms {
			bit := Perm(1 << i)
			if mode.Perm&bit != 0 {
				held, err := heldByOthers(fd, sharedBase+int64(i))
				if err != nil {
					return fmt.Errorf("%s: testing lock byte %d: %w", l.f.Name(), sharedBase+i, err)
				}
				if held {
					return &ConflictError{Path: l.f.Name(), Perm: bit, Holders: holders(l.f, fd, sharedBase+int64(i))}
				}
			}
			if mode.Shared&bit == 0 {
				held, err := heldByOthers(fd, permBase+int64(i))
				if err != nil {
					return fmt.Errorf("%s: testing lock byte %d: %w", l.f.Name(), permBase+i, err)
				}
				if held {
					return &ConflictError{Path: l.f.Name(), Perm: bit, Shared: true, Holders: holders(l.f, fd, permBase+int64(i))}
				}
			}
		}
		return nil
	})
}

func (l *Lock) control(fn func(fd int) error) error {
	rc, err := l.f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

func setByte(fd int, off int64, locked bool) error {
	typ := int16(unix.F_UNLCK)
	if locked {
		typ = unix.F_RDLCK
	}
	lk := unix.Flock_t{Type: typ, Whence: 0, Start: off, Len: 1}
	for {
		err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLK, &lk)
		if err == syscall.EINTR {
			continue
		}
		if locked && (err == unix.EAGAIN || err == unix.EACCES) {
			// A read lock only fails against a write lock, which QEMU
			// never takes; report it as a conflict all the same.
			return ErrLocked
		}
		return err
	}
}

// heldByOthers tests whether another open file description holds a lock
// covering byte off.
func heldByOthers(fd int, off int64) (bool, error) {
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: off, Len: 1}
	if err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_GETLK, &lk); err != nil {
		return false, err
	}
	return lk.Type != unix.F_UNLCK, nil
}

// holders finds the processes with an open file whose locks cover byte off
// of f, by reading /proc/*/fdinfo, leaving out our own descriptor ownFD.
// OFD locks carry no pid, so this is the only way to name them. It returns
// nil where /proc does not tell.
func holders(f *os.File, ownFD int, off int64) []Holder {
	fi, err := f.Stat()
	if err != nil {
		return nil
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	dev := fmt.Sprintf("%02x:%02x:%d", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	self := os.Getpid()
	own := fmt.Sprintf("/proc/%d/fdinfo/%d", self, ownFD)
	procs, _ := filepath.Glob("/proc/[0-9]*/fdinfo/*")
	seen := map[int]bool{}
	var hs []Holder
	for _, p := range procs {
		pid, err := strconv.Atoi(strings.Split(p, "/")[2])
		if err != nil || seen[pid] || p == own {
			continue
		}
		data, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(data), dev) {
			continue
		}
		if !coversByte(string(data), dev, off) {
			continue
		}
		seen[pid] = true
		if pid == self {
			hs = append(hs, Holder{PID: pid, Command: "this process"})
			continue
		}
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		hs = append(hs, Holder{PID: pid, Command: strings.TrimSpace(string(comm))})
	}
	return hs
}

// coversByte reports whether an fdinfo text has a lock line for dev whose
// range contains off. Lines look like
// "lock:\t1: OFDLCK ADVISORY  READ -1 fe:00:9979371 100 101".
func coversByte(fdinfo, dev string, off int64) bool {
	for line := range strings.Lines(fdinfo) {
		if !strings.HasPrefix(line, "lock:") {
			continue
		}
		fields := strings.Fields(line)
		for i, f := range fields {
			if f != dev || i+2 >= len(fields) {
				continue
			}
			start, err1 := strconv.ParseInt(fields[i+1], 10, 64)
			end, err2 := strconv.ParseInt(fields[i+2], 10, 64)
			if fields[i+2] == "EOF" {
				end, err2 = 1<<62, nil
			}
			if err1 == nil && err2 == nil && start <= off && off <= end {
				return true
			}
		}
	}
	return false
}
