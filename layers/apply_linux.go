package layers

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/imgtool/imgtool/internal/zero"
	"golang.org/x/sys/unix"
)

// applier applies the entries of one layer onto a tree. It is used by one
// goroutine.
type applier struct {
	root    int // O_PATH fd of the target directory
	dir     string
	opts    ApplyOptions
	owners  bool
	devices bool
	euid    int
	// seen holds every entry name of this layer (duplicates are errors);
	// created maps names unpacked by this layer to whether they are dirs;
	// ancestors holds the parent dirs of created names. Whiteouts and
	// opaque markers spare these.
	seen      map[string]struct{}
	created   map[string]bool
	ancestors map[string]struct{}
	whiteouts map[string]struct{} // overlay format: whiteout devices made
	dirs      []dirAttr
	parents   map[string]int // cache of resolved parent dir fds
	stale     []int          // fds dropped from parents, closed after the entry
	buf       []byte
}

// dirAttr is the mode and times of a directory, set after all entries.
type dirAttr struct {
	name  string
	mode  uint32
	atime time.Time
	mtime time.Time
}

func newApplier(dir string, opts ApplyOptions) (*applier, error) {
	root, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("layers: open %s: %w", dir, err)
	}
	euid := os.Geteuid()
	a := &applier{
		root:      root,
		dir:       dir,
		opts:      opts,
		euid:      euid,
		owners:    !opts.IgnoreOwners && (euid == 0 || len(opts.UIDMap) > 0 || len(opts.GIDMap) > 0),
		devices:   euid == 0,
		seen:      make(map[string]struct{}),
		created:   make(map[string]bool),
		ancestors: make(map[string]struct{}),
		whiteouts: make(map[string]struct{}),
		parents:   make(map[string]int),
	}
	if opts.AllowDevices != nil {
		a.devices = *opts.AllowDevices
	}
	return a, nil
}

func (a *applier) close() {
	a.dropParents()
	a.closeStale()
	unix.Close(a.root)
}

// dropParents empties the parent cache. The fds stay open until the end
// of the current entry, which may still use one.
func (a *applier) dropParents() {
	for _, fd := range a.parents {
		a.stale = append(a.stale, fd)
	}
	clear(a.parents)
}

func (a *applier) closeStale() {
	for _, fd := range a.stale {
		unix.Close(fd)
	}
	a.stale = a.stale[:0]
}

// openInRoot opens name (a clean name) inside the root, following
// symlinks as if the root were "/".
func (a *applier) openInRoot(name string, flags uint64) (int, error) {
	how := unix.OpenHow{
		Flags:   flags | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	}
	for range 16 {
		fd, err := unix.Openat2(a.root, name, &how)
		if err == unix.EAGAIN || err == unix.EINTR {
			continue
		}
		return fd, err
	}
	return -1, unix.EAGAIN
}

// parent returns an O_PATH fd of directory dir inside the root, creating
// missing directories when create is set. The fd belongs to the cache.
func (a *applier) parent(dir string, create bool) (int, error) {
	if fd, ok := a.parents[dir]; ok {
		return fd, nil
	}
	fd, err := a.openInRoot(dir, unix.O_PATH|unix.O_DIRECTORY)
	if err == unix.ENOENT && create && dir != "." {
		pdir, base := splitName(dir)
		pfd, perr := a.parent(pdir, true)
		if perr != nil {
			return -1, perr
		}
		if merr := a.inDir(pfd, func() error { return unix.Mkdirat(pfd, base, 0o755) }); merr != nil && merr != unix.EEXIST {
			return -1, fmt.Errorf("create parent directory %q: %w", dir, merr)
		}
		a.markCreated(dir, true)
		fd, err = a.openInRoot(dir, unix.O_PATH|unix.O_DIRECTORY)
	}
	if err != nil {
		if err == unix.EXDEV || err == unix.ELOOP {
			return -1, fmt.Errorf("%w: parent directory %q: %v", ErrUnsafePath, dir, err)
		}
		return -1, fmt.Errorf("parent directory %q: %w", dir, err)
	}
	if len(a.parents) >= 256 {
		a.dropParents()
	}
	a.parents[dir] = fd
	return fd, nil
}

func (a *applier) markCreated(name string, isDir bool) {
	a.created[name] = isDir
	for d, _ := splitName(name); d != "."; d, _ = splitName(d) {
		if _, ok := a.ancestors[d]; ok {
			break
		}
		a.ancestors[d] = struct{}{}
	}
}

// entry applies one tar entry.
func (a *applier) entry(hdr *tar.Header, r entryReader) error {
	defer a.closeStale()
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil
	}
	name, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	if _, dup := a.seen[name]; dup {
		return fmt.Errorf("%w: %q", ErrDuplicateEntry, name)
	}
	a.seen[name] = struct{}{}
	dir, base := splitName(name)
	if wh, ok := strings.CutPrefix(base, whiteoutPrefix); ok {
		return a.whiteout(dir, wh)
	}
	if name == "." && hdr.Typeflag != tar.TypeDir {
		return fmt.Errorf("%w: the root must be a directory, not type %q", ErrUnsafePath, hdr.Typeflag)
	}
	pfd, err := a.parent(dir, true)
	if err != nil {
		return err
	}
	var st unix.Stat_t
	exists := true
	if err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if err != unix.ENOENT {
			return fmt.Errorf("lstat: %w", err)
		}
		exists = false
	}
	isDir := exists && st.Mode&unix.S_IFMT == unix.S_IFDIR

	switch hdr.Typeflag {
	case tar.TypeDir:
		_, wasWhiteout := a.whiteouts[name]
		if !isDir {
			if exists {
				if err := a.removeAt(pfd, base); err != nil {
					return err
				}
			}
			if err := a.inDir(pfd, func() error { return unix.Mkdirat(pfd, base, 0o700) }); err != nil {
				return fmt.Errorf("mkdir: %w", err)
			}
		}
		a.markCreated(name, true)
		if wasWhiteout {
			// A whiteout followed by a directory in the same layer
			// replaces the lower directory: make it opaque.
			if err := a.setOpaque(pfd, base); err != nil {
				return err
			}
		}
		fd, err := unix.Openat(pfd, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open directory: %w", err)
		}
		defer unix.Close(fd)
		if err := a.chown(hdr, func(uid, gid int) error { return unix.Fchown(fd, uid, gid) }); err != nil {
			return err
		}
		if isDir {
			if err := a.dropStaleXattrs(fd, hdr); err != nil {
				return err
			}
		}
		if err := a.setXattrs(hdr, func(k string, v []byte) error { return unix.Fsetxattr(fd, k, v, 0) }, true); err != nil {
			return err
		}
		a.dirs = append(a.dirs, dirAttr{name: name, mode: tarMode(hdr), atime: hdr.AccessTime, mtime: hdr.ModTime})
		return nil

	case tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse:
		if err := a.replace(pfd, base, exists, isDir); err != nil {
			return err
		}
		return a.regular(pfd, base, name, hdr, r)

	case tar.TypeSymlink:
		if hdr.Linkname == "" {
			return fmt.Errorf("%w: symlink with an empty target", ErrUnsupported)
		}
		if err := a.replace(pfd, base, exists, isDir); err != nil {
			return err
		}
		if err := a.inDir(pfd, func() error { return unix.Symlinkat(hdr.Linkname, pfd, base) }); err != nil {
			return fmt.Errorf("symlink: %w", err)
		}
		a.markCreated(name, false)
		return a.finishNode(pfd, base, hdr, false)

	case tar.TypeLink:
		return a.hardlink(pfd, base, name, hdr, exists, isDir)

	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		mode := uint32(unix.S_IFIFO)
		switch hdr.Typeflag {
		case tar.TypeChar:
			mode = unix.S_IFCHR
		case tar.TypeBlock:
			mode = unix.S_IFBLK
		}
		if hdr.Typeflag != tar.TypeFifo {
			if a.opts.Overlay && hdr.Typeflag == tar.TypeChar && hdr.Devmajor == 0 && hdr.Devminor == 0 {
				return fmt.Errorf("%w: a char device 0/0 would read as a whiteout in overlay format", ErrUnsupported)
			}
			if !a.devices {
				if a.opts.SkipDevices {
					return nil
				}
				return fmt.Errorf("%w: %s device %d:%d", ErrDevicesNotPermitted, typeName(hdr.Typeflag), hdr.Devmajor, hdr.Devminor)
			}
		}
		if err := a.replace(pfd, base, exists, isDir); err != nil {
			return err
		}
		dev := int(unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor)))
		if err := a.inDir(pfd, func() error { return unix.Mknodat(pfd, base, mode|0o600, dev) }); err != nil {
			if err == unix.EPERM {
				return fmt.Errorf("%w: mknod: %v", ErrDevicesNotPermitted, err)
			}
			return fmt.Errorf("mknod: %w", err)
		}
		a.markCreated(name, false)
		return a.finishNode(pfd, base, hdr, true)
	}
	return fmt.Errorf("%w: tar entry type %q", ErrUnsupported, hdr.Typeflag)
}

func typeName(t byte) string {
	switch t {
	case tar.TypeChar:
		return "char"
	case tar.TypeBlock:
		return "block"
	}
	return strconv.Quote(string(t))
}

// tarMode returns the permission bits of hdr including setuid, setgid and
// sticky.
func tarMode(hdr *tar.Header) uint32 { return uint32(hdr.Mode) & 0o7777 }

// replace removes what stands at base unless nothing does.
func (a *applier) replace(pfd int, base string, exists, isDir bool) error {
	if !exists {
		return nil
	}
	if base == "." {
		return fmt.Errorf("%w: cannot replace the root", ErrUnsafePath)
	}
	return a.removeAt(pfd, base)
}

// removeAt removes base (recursively for a directory) without following
// symlinks, and forgets cached parents that may have pointed into it.
func (a *applier) removeAt(pfd int, base string) error {
	a.dropParents()
	if err := a.inDir(pfd, func() error { return removeAllAt(pfd, base, a.euid != 0) }); err != nil {
		return fmt.Errorf("remove existing %q: %w", base, err)
	}
	return nil
}

// inDir runs op, which creates or removes an entry of the directory pfd.
// As non-root, a lower layer's read-only directory (mode 0555, say)
// refuses that; then the directory is made writable for the owner while
// op runs again, and its mode restored.
func (a *applier) inDir(pfd int, op func() error) error {
	err := op()
	if a.euid == 0 || (err != unix.EACCES && err != unix.EPERM) {
		return err
	}
	var st unix.Stat_t
	if unix.Fstat(pfd, &st) != nil || st.Mode&0o300 == 0o300 || st.Uid != uint32(a.euid) {
		return err
	}
	proc := "/proc/self/fd/" + strconv.Itoa(pfd)
	if unix.Fchmodat(unix.AT_FDCWD, proc, st.Mode&0o7777|0o300, 0) != nil {
		return err
	}
	err = op()
	if rerr := unix.Fchmodat(unix.AT_FDCWD, proc, st.Mode&0o7777, 0); err == nil && rerr != nil {
		err = rerr
	}
	return err
}

// removeAllAt removes base in directory pfd and everything below it.
// As non-root (rootless), directories below are made writable first:
// they are being removed anyway.
func removeAllAt(pfd int, base string, fixPerms bool) error {
	err := unix.Unlinkat(pfd, base, 0)
	if err == nil || err == unix.ENOENT {
		return nil
	}
	if err != unix.EISDIR && err != unix.EPERM {
		return err
	}
	if fixPerms {
		chmodNoFollow(pfd, base, 0o700) //nolint:errcheck // best effort; the removal reports failure
	}
	fd, oerr := unix.Openat(pfd, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if oerr != nil {
		return err
	}
	names, rerr := readDirNames(fd)
	if rerr == nil {
		for _, n := range names {
			if rerr = removeAllAt(fd, n, fixPerms); rerr != nil {
				break
			}
		}
	}
	unix.Close(fd)
	if rerr != nil {
		return rerr
	}
	return unix.Unlinkat(pfd, base, unix.AT_REMOVEDIR)
}

// readDirNames lists a directory fd (without "." and "..").
func readDirNames(fd int) ([]string, error) {
	// os.File closes its fd; dup so that the caller keeps fd.
	dfd, err := unix.Dup(fd)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(dfd), "dir")
	defer f.Close()
	if _, err := unix.Seek(dfd, 0, io.SeekStart); err != nil {
		return nil, err
	}
	return f.Readdirnames(-1)
}

// regular writes a regular file, leaving runs of zero blocks as holes.
func (a *applier) regular(pfd int, base, name string, hdr *tar.Header, r entryReader) error {
	fd := -1
	err := a.inDir(pfd, func() error {
		var err error
		fd, err = unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		return err
	})
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	a.markCreated(name, false)
	err = a.writeContent(fd, hdr.Size, r)
	if err == nil {
		err = a.chown(hdr, func(uid, gid int) error { return unix.Fchown(fd, uid, gid) })
	}
	if err == nil {
		if cerr := unix.Fchmod(fd, tarMode(hdr)); cerr != nil {
			err = fmt.Errorf("chmod: %w", cerr)
		}
	}
	if err == nil {
		err = a.setXattrs(hdr, func(k string, v []byte) error { return unix.Fsetxattr(fd, k, v, 0) }, true)
	}
	if cerr := unix.Close(fd); err == nil && cerr != nil {
		err = fmt.Errorf("close: %w", cerr)
	}
	if err != nil {
		return err
	}
	return a.setTimes(pfd, base, hdr.AccessTime, hdr.ModTime)
}

const holeBlock = 4096

func (a *applier) writeContent(fd int, size int64, r entryReader) error {
	if len(a.buf) < int(min(size, 1<<20)) {
		a.buf = make([]byte, min(size, 1<<20))
	}
	var off int64
	for off < size {
		want := int(min(int64(len(a.buf)), size-off))
		n, err := readFull(r, a.buf[:want])
		if err != nil {
			return err
		}
		if err := writeSparse(fd, a.buf[:n], off); err != nil {
			return err
		}
		off += int64(n)
	}
	if err := unix.Ftruncate(fd, size); err != nil {
		return fmt.Errorf("truncate: %w", err)
	}
	return nil
}

func readFull(r entryReader, p []byte) (int, error) {
	n := 0
	for n < len(p) {
		k, err := r.read(p[n:])
		n += k
		if err == io.EOF {
			if n < len(p) {
				return n, &CorruptError{Stream: "tar", Err: io.ErrUnexpectedEOF}
			}
			break
		}
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// writeSparse writes p at off, skipping aligned all-zero blocks.
func writeSparse(fd int, p []byte, off int64) error {
	for len(p) > 0 {
		// Skip a run of zero blocks.
		z := 0
		for z+holeBlock <= len(p) && zero.Is(p[z:z+holeBlock]) {
			z += holeBlock
		}
		p, off = p[z:], off+int64(z)
		// Write up to the next zero block.
		d := 0
		for d < len(p) && (d+holeBlock > len(p) || !zero.Is(p[d:d+holeBlock])) {
			d += holeBlock
		}
		d = min(d, len(p))
		for w := p[:d]; len(w) > 0; {
			n, err := unix.Pwrite(fd, w, off)
			if err != nil {
				return fmt.Errorf("write: %w", err)
			}
			w, off = w[n:], off+int64(n)
		}
		p = p[d:]
	}
	return nil
}

// hardlink links name to the (already present) target, never a directory.
func (a *applier) hardlink(pfd int, base, name string, hdr *tar.Header, exists, isDir bool) error {
	target, err := cleanName(hdr.Linkname)
	if err != nil {
		return fmt.Errorf("%w: hardlink target: %v", ErrHardlink, err)
	}
	if target == "." || target == name {
		return fmt.Errorf("%w: hardlink to %q", ErrHardlink, hdr.Linkname)
	}
	tdir, tbase := splitName(target)
	tfd, err := a.parent(tdir, false)
	if err != nil {
		return fmt.Errorf("%w: target %q: %v", ErrHardlink, hdr.Linkname, err)
	}
	var tst unix.Stat_t
	if err := unix.Fstatat(tfd, tbase, &tst, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("%w: target %q: %v", ErrHardlink, hdr.Linkname, err)
	}
	if tst.Mode&unix.S_IFMT == unix.S_IFDIR {
		return fmt.Errorf("%w: target %q is a directory", ErrHardlink, hdr.Linkname)
	}
	if exists {
		var st unix.Stat_t
		if unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Dev == tst.Dev && st.Ino == tst.Ino {
			a.markCreated(name, false)
			return nil
		}
		if err := a.replace(pfd, base, exists, isDir); err != nil {
			return err
		}
		// Removing may have dropped the cached target parent.
		if tfd, err = a.parent(tdir, false); err != nil {
			return fmt.Errorf("%w: target %q: %v", ErrHardlink, hdr.Linkname, err)
		}
		pdir, _ := splitName(name)
		if pfd, err = a.parent(pdir, true); err != nil {
			return err
		}
	}
	// Flags 0: a symlink target is linked itself, never followed.
	if err := a.inDir(pfd, func() error { return unix.Linkat(tfd, tbase, pfd, base, 0) }); err != nil {
		return fmt.Errorf("%w: link to %q: %v", ErrHardlink, hdr.Linkname, err)
	}
	a.markCreated(name, false)
	return nil
}

// finishNode sets owner, mode, xattrs and times on a symlink, device or
// fifo without following it.
func (a *applier) finishNode(pfd int, base string, hdr *tar.Header, chmod bool) error {
	if err := a.chown(hdr, func(uid, gid int) error {
		return unix.Fchownat(pfd, base, uid, gid, unix.AT_SYMLINK_NOFOLLOW)
	}); err != nil {
		return err
	}
	if chmod {
		if err := chmodNoFollow(pfd, base, tarMode(hdr)); err != nil {
			return err
		}
	}
	path := procPath(pfd, base)
	if err := a.setXattrs(hdr, func(k string, v []byte) error { return unix.Lsetxattr(path, k, v, 0) }, false); err != nil {
		return err
	}
	return a.setTimes(pfd, base, hdr.AccessTime, hdr.ModTime)
}

// procPath names base in the directory fd pfd through /proc/self/fd; the
// magic link resolves to pfd's directory itself, so a final-component
// no-follow call on it (lsetxattr) is safe.
func procPath(pfd int, base string) string {
	return "/proc/self/fd/" + strconv.Itoa(pfd) + "/" + base
}

// chmodNoFollow changes the mode of base without following a symlink:
// it opens base with O_PATH|O_NOFOLLOW and changes the mode of that inode.
func chmodNoFollow(pfd int, base string, mode uint32) error {
	fd, err := unix.Openat(pfd, base, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return nil // symlink modes are meaningless on Linux
	}
	if err := unix.Fchmodat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(fd), mode, 0); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	return nil
}

func (a *applier) chown(hdr *tar.Header, do func(uid, gid int) error) error {
	if !a.owners {
		return nil
	}
	uid, err := mapID(a.opts.UIDMap, hdr.Uid, "uid")
	if err != nil {
		return err
	}
	gid, err := mapID(a.opts.GIDMap, hdr.Gid, "gid")
	if err != nil {
		return err
	}
	if err := do(uid, gid); err != nil {
		return fmt.Errorf("chown %d:%d: %w", uid, gid, err)
	}
	return nil
}

// setXattrs sets the xattrs of hdr that a layer may carry:
// security.capability and user.*. Overlay xattrs from the tar are dropped,
// or in overlay format escaped (trusted.overlay.X -> trusted.overlay.overlay.X,
// which overlayfs >= 6.7 shows as trusted.overlay.X). Others (trusted.*,
// security.selinux, system.*) are dropped. Failures on a symlink or
// device, where the kernel refuses user xattrs, are ignored.
func (a *applier) setXattrs(hdr *tar.Header, set func(k string, v []byte) error, strict bool) error {
	xs := xattrsOf(hdr)
	if len(xs) == 0 {
		return nil
	}
	keys := make([]string, 0, len(xs))
	for k := range xs {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	ovl := a.overlayPrefix()
	for _, k := range keys {
		name := k
		switch {
		case strings.HasPrefix(k, "trusted.overlay.") || strings.HasPrefix(k, "user.overlay."):
			if !a.opts.Overlay || !strings.HasPrefix(k, ovl) {
				continue
			}
			name = ovl + "overlay." + strings.TrimPrefix(k, ovl)
		case k == "security.capability", strings.HasPrefix(k, "user."):
		default:
			continue
		}
		if err := set(name, []byte(xs[k])); err != nil {
			if !strict && (err == unix.EPERM || err == unix.ENOTSUP) {
				continue
			}
			if a.euid != 0 && err == unix.EPERM && strings.HasPrefix(name, "security.") {
				continue
			}
			return fmt.Errorf("set xattr %s: %w", name, err)
		}
	}
	return nil
}

// dropStaleXattrs removes from an existing directory the xattrs that a
// layer carries (security.capability, user.* but not user.overlay.*) and
// that hdr does not set: a directory entry over a directory replaces its
// attributes.
func (a *applier) dropStaleXattrs(fd int, hdr *tar.Header) error {
	buf := make([]byte, 64<<10)
	n, err := unix.Flistxattr(fd, buf)
	if err != nil {
		if err == unix.ENOTSUP {
			return nil
		}
		return fmt.Errorf("list xattrs: %w", err)
	}
	want := xattrsOf(hdr)
	for name := range strings.SplitSeq(string(buf[:n]), "\x00") {
		managed := name == "security.capability" || (strings.HasPrefix(name, "user.") && !strings.HasPrefix(name, "user.overlay."))
		if _, keep := want[name]; !managed || keep {
			continue
		}
		if err := unix.Fremovexattr(fd, name); err != nil && err != unix.ENODATA {
			return fmt.Errorf("remove xattr %s: %w", name, err)
		}
	}
	return nil
}

func (a *applier) overlayPrefix() string {
	if a.opts.UserXattr {
		return "user.overlay."
	}
	return "trusted.overlay."
}

func timespec(t time.Time) unix.Timespec {
	if t.IsZero() {
		return unix.Timespec{Sec: 0, Nsec: unix.UTIME_OMIT}
	}
	return unix.NsecToTimespec(t.UnixNano())
}

func (a *applier) setTimes(pfd int, base string, atime, mtime time.Time) error {
	if atime.IsZero() {
		atime = mtime
	}
	ts := []unix.Timespec{timespec(atime), timespec(mtime)}
	if err := unix.UtimesNanoAt(pfd, base, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}

// whiteout handles DIR/.wh.NAME (wh is NAME) and DIR/.wh..wh..opq.
func (a *applier) whiteout(dir, wh string) error {
	switch {
	case wh == "":
		return fmt.Errorf("%w: bare %q", ErrBadWhiteout, whiteoutPrefix)
	case wh == ".wh..opq":
		return a.opaque(dir)
	case strings.HasPrefix(wh, whiteoutPrefix):
		return nil // other AUFS metadata (.wh..wh.plnk, ...): not content
	case wh == "." || wh == "..":
		return fmt.Errorf("%w: whiteout of %q", ErrBadWhiteout, wh)
	}
	target := wh
	if dir != "." {
		target = dir + "/" + wh
	}
	if a.opts.Overlay {
		if _, ok := a.created[target]; ok {
			return nil // present in this layer: only later layers hide it
		}
		pfd, err := a.parent(dir, true)
		if err != nil {
			return err
		}
		if err := a.inDir(pfd, func() error { return unix.Mknodat(pfd, wh, unix.S_IFCHR, 0) }); err != nil {
			if err == unix.EEXIST {
				return nil
			}
			return fmt.Errorf("overlay whiteout: mknod %q c 0 0: %w", target, err)
		}
		a.whiteouts[target] = struct{}{}
		return nil
	}
	pfd, err := a.parent(dir, false)
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			return nil // nothing below to hide
		}
		return err
	}
	return a.removeLower(pfd, target, wh)
}

// opaque hides the lower content of dir, sparing what this layer created.
func (a *applier) opaque(dir string) error {
	if a.opts.Overlay {
		pfd, err := a.parent(dir, true)
		if err != nil {
			return err
		}
		return a.setOpaque(pfd, ".")
	}
	pfd, err := a.parent(dir, false)
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			return nil
		}
		return err
	}
	return a.removeLowerChildren(pfd, dir)
}

func (a *applier) setOpaque(pfd int, base string) error {
	fd, err := unix.Openat(pfd, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opaque directory: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Fsetxattr(fd, a.overlayPrefix()+"opaque", []byte("y"), 0); err != nil {
		return fmt.Errorf("opaque directory: set xattr %sopaque: %w", a.overlayPrefix(), err)
	}
	return nil
}

// removeLower removes name (base in directory pfd) unless this layer
// created it; a directory holding created entries is kept and its other
// children removed.
func (a *applier) removeLower(pfd int, name, base string) error {
	var st unix.Stat_t
	if err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if err == unix.ENOENT {
			return nil
		}
		return fmt.Errorf("whiteout %q: %w", name, err)
	}
	_, created := a.created[name]
	_, ancestor := a.ancestors[name]
	if !created && !ancestor {
		return a.removeAt(pfd, base)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return nil
	}
	fd, err := unix.Openat(pfd, base, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("whiteout %q: %w", name, err)
	}
	defer unix.Close(fd)
	return a.removeLowerChildren(fd, name)
}

func (a *applier) removeLowerChildren(dfd int, dir string) error {
	rfd, err := unix.Openat(dfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opaque %q: %w", dir, err)
	}
	names, err := readDirNames(rfd)
	unix.Close(rfd)
	if err != nil {
		return fmt.Errorf("opaque %q: %w", dir, err)
	}
	for _, n := range names {
		child := n
		if dir != "." {
			child = dir + "/" + n
		}
		if err := a.removeLower(dfd, child, n); err != nil {
			return err
		}
	}
	return nil
}

// finishDirs sets directory modes and times, deepest first, so that
// creating entries inside did not change them.
func (a *applier) finishDirs() error {
	slices.SortStableFunc(a.dirs, func(x, y dirAttr) int {
		return strings.Count(y.name, "/") - strings.Count(x.name, "/")
	})
	for _, d := range a.dirs {
		dir, base := splitName(d.name)
		pfd, err := a.parent(dir, false)
		if err != nil {
			continue // replaced later in the layer
		}
		var st unix.Stat_t
		if unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW) != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
			continue
		}
		if err := chmodNoFollow(pfd, base, d.mode); err != nil {
			return &EntryError{Name: d.name, Err: err}
		}
		if err := a.setTimes(pfd, base, d.atime, d.mtime); err != nil {
			return &EntryError{Name: d.name, Err: err}
		}
	}
	return nil
}
