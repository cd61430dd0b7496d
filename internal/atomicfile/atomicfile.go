// Package atomicfile writes a file so that readers see either the old
// content or the complete new content, never a part, and so that nothing a
// user had is lost. It is the one place where imgtool decides how a file it
// writes is created, locked, given its mode, synced and put in place.
//
// A write goes: Create (or CreateTemp) → write through the returned File →
// Commit, or Abort on any failure. Create:
//
//   - follows a destination that is a symlink, so the link's target is
//     replaced and the link stays, as qemu-img writes through a link;
//   - opens an existing destination and takes QEMU's write lock on it (see
//     internal/imagelock), so a running qemu, qemu-io or qemu-img that has
//     the image open, or an image this very process holds open for reading
//     (a source chain), makes Create fail with a *LockError instead of the
//     other user's data going to a deleted inode;
//   - makes the new file with mode 0666 (or Options.Perm) masked by the
//     umask, or, when replacing, with the mode and owner (where permitted)
//     of the file it replaces;
//   - writes into an unnamed O_TMPFILE file in the destination's directory
//     where the filesystem has them, so a crash or kill -9 leaves nothing
//     behind; elsewhere into a temp file named .NAME.imgtool-tmp-PID-RAND
//     there, and removes stale ones of that pattern (their process gone and
//     their lock free) on the next Create of the same destination.
//
// Commit syncs the file, puts it in place (linkat or rename) and syncs the
// directory, unless Options.Sync is NoSync (qemu's -t unsafe).
package atomicfile

import (
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/imgtool/imgtool/internal/imagelock"
)

// Sync is the durability policy of a write.
type Sync uint8

const (
	// Durable (the default) fsyncs the file before it is put in place and
	// the directory after, so a power cut leaves the old or the new file
	// complete. qemu-img's -t writeback and none keep this.
	Durable Sync = iota
	// NoSync skips both fsyncs, as qemu-img's -t unsafe does. A crash may
	// leave the destination empty or partial; a process kill still cannot.
	NoSync
)

// ParseCache maps a qemu-img -t cache mode onto a Sync policy:
// "writeback" (also ""), "none", "directsync" and "writethrough" are
// Durable, "unsafe" is NoSync.
func ParseCache(mode string) (Sync, error) {
	switch mode {
	case "", "writeback", "none", "directsync", "writethrough":
		return Durable, nil
	case "unsafe":
		return NoSync, nil
	}
	return Durable, fmt.Errorf("atomicfile: cache mode %q (want writeback, none, writethrough, directsync or unsafe)", mode)
}

// Options says how to write. The zero value is a durable write of a file
// with mode 0666 masked by the umask.
type Options struct {
	// Perm is the mode of a new file before the umask; 0 means 0666. A
	// replaced file keeps its own mode.
	Perm fs.FileMode
	// Sync is the durability policy; the zero value is Durable.
	Sync Sync
	// Named makes the temp file a named file in the destination's
	// directory (TempPath returns its name), for writers that reopen it by
	// a path whose directory matters, such as a qcow2 image with a
	// relative backing file. A kill leaves it behind until the next
	// Create of the same destination removes it.
	Named bool
	// NoLock does not take QEMU's lock on an existing destination: for
	// files no QEMU opens (store metadata, layout blobs and indexes),
	// where two writers of the same file must not fail, the last one
	// winning, and for a caller that holds the destination locked itself,
	// such as a rewrite that reads the old image while it writes the new.
	NoLock bool
	// KeepExisting leaves an existing destination alone at Commit and
	// drops the new content, for content-addressed files where an
	// existing file already holds the same bytes.
	KeepExisting bool
}

// LockError is returned when an existing destination is in use: another
// process, or another open file in this one, holds a QEMU image lock that
// forbids writing it. It reads like qemu-img's message. errors.Is(err,
// imagelock.ErrLocked) holds.
type LockError struct {
	Path string
	Err  *imagelock.ConflictError
}

func (e *LockError) Error() string {
	shared := ""
	if e.Err.Shared {
		shared = "shared "
	}
	msg := fmt.Sprintf("%s: Failed to get %s%q lock\nIs another process using the image [%s]?", e.Path, shared, e.Err.Perm.String(), e.Path)
	if len(e.Err.Holders) > 0 {
		hs := make([]string, len(e.Err.Holders))
		for i, h := range e.Err.Holders {
			hs[i] = h.String()
		}
		msg += " (in use by " + strings.Join(hs, ", ") + ")"
	}
	return msg
}

func (e *LockError) Unwrap() error { return e.Err }

// File is a file being written. Write through the embedded *os.File (its
// Name is the temp file's, not the destination's), then call Commit or
// Abort. Abort after Commit does nothing, so `defer f.Abort()` is the
// usual pattern. A File is not safe for concurrent Commit/Abort; writes
// through the *os.File are as safe as os.File's.
type File struct {
	*os.File
	opts Options
	dir  string
	dst  string // resolved destination; "" for CreateTemp until CommitAs
	name string // temp file name; "" for an O_TMPFILE file
	held *os.File
	// the replaced file's mode and owner, when there is one
	replacing bool
	oldInfo   fs.FileInfo
	done      bool
}

// Create starts writing path. It fails with a *LockError when an existing
// path is in use (see the package comment).
func Create(path string, opts Options) (*File, error) {
	dst, err := resolve(path)
	if err != nil {
		return nil, err
	}
	f := &File{opts: opts, dir: filepath.Dir(dst), dst: dst}
	if err := f.lockDest(); err != nil {
		return nil, err
	}
	removeStale(f.dir, "."+filepath.Base(dst)+tmpMark)
	if err := f.open("." + filepath.Base(dst) + tmpMark); err != nil {
		f.release()
		return nil, err
	}
	if err := f.keepOwnerAndMode(); err != nil {
		f.Abort()
		return nil, err
	}
	return f, nil
}

// WriteFile replaces path with b whole: Create, one write, Commit.
// Readers see the old or the new content, and after a crash the file is
// one or the other.
func WriteFile(path string, b []byte, opts Options) error {
	f, err := Create(path, opts)
	if err != nil {
		return err
	}
	defer f.Abort()
	if _, err := f.Write(b); err != nil {
		return err
	}
	return f.Commit()
}

// CreateTemp starts writing a file in dir whose name is given later, to
// CommitAs (a content-addressed blob named after its digest).
func CreateTemp(dir string, opts Options) (*File, error) {
	f := &File{opts: opts, dir: dir}
	if err := f.open(tmpMark[1:]); err != nil {
		return nil, err
	}
	return f, nil
}

const tmpMark = ".imgtool-tmp-"

// Path is the resolved destination (after following symlinks); "" before
// CommitAs for a CreateTemp file.
func (f *File) Path() string { return f.dst }

// TempPath is a path by which the file being written can be reopened
// before Commit: the temp file's name, or /proc/self/fd/N for an unnamed
// file. Its directory is the destination's only with Options.Named.
func (f *File) TempPath() string {
	if f.name != "" {
		return f.name
	}
	return "/proc/self/fd/" + strconv.Itoa(int(f.File.Fd()))
}

// Commit puts the written file in place of the destination given to
// Create.
func (f *File) Commit() error {
	if f.dst == "" {
		return errors.New("atomicfile: Commit of a CreateTemp file (use CommitAs)")
	}
	return f.commit()
}

// CommitAs puts the written file at path, which is locked and whose mode is
// kept as Create would.
func (f *File) CommitAs(path string) error {
	if f.done {
		return errors.New("atomicfile: commit after Commit or Abort")
	}
	dst, err := resolve(path)
	if err != nil {
		f.Abort()
		return err
	}
	if filepath.Dir(dst) != filepath.Clean(f.dir) {
		f.Abort()
		return fmt.Errorf("atomicfile: %s is not in %s, where the file was written", dst, f.dir)
	}
	f.dst = dst
	if err := f.lockDest(); err != nil {
		f.Abort()
		return err
	}
	if err := f.keepOwnerAndMode(); err != nil {
		f.Abort()
		return err
	}
	return f.commit()
}

func (f *File) commit() (err error) {
	if f.done {
		return errors.New("atomicfile: commit after Commit or Abort")
	}
	defer func() {
		if err != nil {
			f.Abort()
		}
	}()
	fail := func(err error) error { return fmt.Errorf("atomicfile: writing %s: %w", f.dst, err) }
	if f.opts.KeepExisting {
		if _, err := os.Lstat(f.dst); err == nil {
			f.Abort()
			return nil
		}
	}
	if f.opts.Sync == Durable {
		if err := f.File.Sync(); err != nil {
			return fail(err)
		}
	}
	if f.name == "" {
		err := f.linkTo(f.dst)
		switch {
		case err == nil:
		case errors.Is(err, fs.ErrExist) && f.opts.KeepExisting:
			f.Abort()
			return nil
		case errors.Is(err, fs.ErrExist):
			// Replacing: link under a temp name, then rename over.
			name, err := f.linkUnderTempName()
			if err != nil {
				return fail(err)
			}
			f.name = name
			if err := os.Rename(name, f.dst); err != nil {
				return fail(err)
			}
			f.name = ""
		default:
			return fail(err)
		}
	} else {
		if err := os.Rename(f.name, f.dst); err != nil {
			return fail(err)
		}
		f.name = ""
	}
	f.done = true
	cerr := f.File.Close()
	f.release()
	if f.opts.Sync == Durable {
		if err := SyncDir(f.dir); err != nil {
			return err
		}
	}
	if cerr != nil {
		return fail(cerr)
	}
	return nil
}

// Abort drops the new content: it closes and removes the temp file and
// releases the destination's lock. It is safe after Commit (then it does
// nothing) and more than once.
func (f *File) Abort() {
	if f.done {
		return
	}
	f.done = true
	f.File.Close()
	if f.name != "" {
		os.Remove(f.name)
		f.name = ""
	}
	f.release()
}

func (f *File) release() {
	if f.held != nil {
		f.held.Close()
		f.held = nil
	}
}

// SyncDir fsyncs a directory, so a rename or link in it is durable.
// Filesystems that cannot sync directories are not an error.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("atomicfile: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) && !errors.Is(err, syscall.EINVAL) {
		return fmt.Errorf("atomicfile: syncing %s: %w", dir, err)
	}
	return nil
}

// resolve follows symlinks in the last element of path (and the links
// they lead to), so that a link is written through; a dangling link
// resolves to the missing target, which is created.
func resolve(path string) (string, error) {
	if strings.HasSuffix(path, "/") {
		// A directory name: Clean would drop the slash and make
		// "new/" the file "new" (qemu-img: "Is a directory").
		return "", fmt.Errorf("atomicfile: %w", &fs.PathError{Op: "create", Path: path, Err: syscall.EISDIR})
	}
	p := filepath.Clean(path)
	for range 40 {
		fi, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			return p, nil
		}
		if err != nil {
			return "", fmt.Errorf("atomicfile: %w", err)
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			if !fi.Mode().IsRegular() {
				return "", fmt.Errorf("atomicfile: %s is not a regular file (%s); refusing to replace it", path, fi.Mode().Type())
			}
			return p, nil
		}
		t, err := os.Readlink(p)
		if err != nil {
			return "", fmt.Errorf("atomicfile: %w", err)
		}
		if !filepath.IsAbs(t) {
			t = filepath.Join(filepath.Dir(p), t)
		}
		p = filepath.Clean(t)
	}
	return "", fmt.Errorf("atomicfile: %s: %w", path, syscall.ELOOP)
}

// lockDest opens an existing destination and takes QEMU's write lock on
// it, held until Commit or Abort.
func (f *File) lockDest() error {
	if f.opts.NoLock {
		fi, err := os.Stat(f.dst)
		if err == nil && !fi.Mode().IsRegular() {
			return fmt.Errorf("atomicfile: %s is not a regular file (%s); refusing to replace it", f.dst, fi.Mode().Type())
		}
		if err == nil {
			f.replacing = true
			f.oldInfo = fi
		}
		return nil
	}
	h, err := os.OpenFile(f.dst, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("atomicfile: opening %s: %w", f.dst, err)
	}
	fi, err := h.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		h.Close()
		if err == nil {
			err = fmt.Errorf("not a regular file (%s); refusing to replace it", fi.Mode().Type())
		}
		return fmt.Errorf("atomicfile: %s: %w", f.dst, err)
	}
	if err := acquireWriteLock(h); err != nil {
		h.Close()
		var ce *imagelock.ConflictError
		if errors.As(err, &ce) {
			return &LockError{Path: f.dst, Err: ce}
		}
		return fmt.Errorf("atomicfile: locking %s: %w", f.dst, err)
	}
	f.release()
	f.held = h
	f.replacing = true
	f.oldInfo = fi
	return nil
}

// acquireWriteLock takes QEMU's writer lock, retrying for a moment on a
// conflict: a child forked by this process shares our files until it
// execs, so a lock just released elsewhere in the process can linger.
func acquireWriteLock(h *os.File) error {
	for try := 0; ; try++ {
		_, err := imagelock.Acquire(h, imagelock.Writer)
		if err == nil || try == 8 || !errors.Is(err, imagelock.ErrLocked) {
			return err
		}
		time.Sleep(time.Duration(try+1) * 5 * time.Millisecond)
	}
}

// open creates the temp file: O_TMPFILE unless Named or unsupported, else
// a named file with the given prefix.
func (f *File) open(prefix string) error {
	perm := f.opts.Perm.Perm()
	if perm == 0 {
		perm = 0o666
	}
	if !f.opts.Named {
		fd, err := unix.Open(f.dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, uint32(perm))
		if err == nil {
			tf := os.NewFile(uintptr(fd), filepath.Join(f.dir, "(unnamed temp file)"))
			if _, err := os.Stat("/proc/self/fd/" + strconv.Itoa(fd)); err == nil {
				// A lock marks it live, as for named ones: it counts
				// when the file gets a temp name while replacing.
				unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB) //nolint:errcheck // only a liveness hint
				f.File = tf
				return nil
			}
			tf.Close() // no /proc to linkat it from: use a name
		} else if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
			return fmt.Errorf("atomicfile: creating a file in %s: %w", f.dir, err)
		}
	}
	for range 100 {
		name := filepath.Join(f.dir, tempName(prefix))
		tf, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, perm)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("atomicfile: %w", err)
		}
		unix.Flock(int(tf.Fd()), unix.LOCK_EX|unix.LOCK_NB) //nolint:errcheck // only a liveness hint
		f.File, f.name = tf, name
		return nil
	}
	return fmt.Errorf("atomicfile: no free temp name in %s", f.dir)
}

func tempName(prefix string) string {
	return prefix + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatUint(rand.Uint64()%1e9, 10)
}

// keepOwnerAndMode gives the new file the owner (where permitted) and mode
// of the file it replaces.
func (f *File) keepOwnerAndMode() error {
	if !f.replacing {
		return nil
	}
	fi := f.oldInfo
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		// chown first: it clears set-id bits that chmod then restores.
		if err := f.File.Chown(int(st.Uid), int(st.Gid)); err != nil && !errors.Is(err, fs.ErrPermission) {
			return fmt.Errorf("atomicfile: %w", err)
		}
	}
	if err := f.File.Chmod(fi.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)); err != nil {
		return fmt.Errorf("atomicfile: %w", err)
	}
	return nil
}

// linkTo gives the unnamed file the name dst; it fails with fs.ErrExist
// when dst exists.
func (f *File) linkTo(dst string) error {
	err := unix.Linkat(unix.AT_FDCWD, f.TempPath(), unix.AT_FDCWD, dst, unix.AT_SYMLINK_FOLLOW)
	if err != nil {
		return &os.LinkError{Op: "linkat", Old: f.TempPath(), New: dst, Err: err}
	}
	return nil
}

func (f *File) linkUnderTempName() (string, error) {
	prefix := "." + filepath.Base(f.dst) + tmpMark
	for range 100 {
		name := filepath.Join(f.dir, tempName(prefix))
		err := f.linkTo(name)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		return name, err
	}
	return "", fmt.Errorf("no free temp name in %s", f.dir)
}

// removeStale removes temp files with the given name prefix whose process
// is gone and whose liveness lock is free. A file whose pid is alive (even
// if reused by another program) is left: being conservative costs disk,
// not data.
func removeStale(dir, prefix string) {
	d, err := os.Open(dir)
	if err != nil {
		return
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	for _, n := range names {
		rest, ok := strings.CutPrefix(n, prefix)
		if !ok {
			continue
		}
		pidStr, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if !ok || err != nil || pid <= 0 {
			continue
		}
		if pid == os.Getpid() || unix.Kill(pid, 0) != unix.ESRCH {
			continue
		}
		p := filepath.Join(dir, n)
		h, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
		if err != nil {
			continue
		}
		if unix.Flock(int(h.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
			if fi, err := h.Stat(); err == nil && fi.Mode().IsRegular() {
				os.Remove(p)
			}
		}
		h.Close()
	}
}
