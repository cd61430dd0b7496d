package overlay

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// MountMethod chooses the system call interface for overlay mounts.
type MountMethod int

const (
	// MountAuto (the default) tries MountNewAPI and falls back to
	// MountLegacy on kernels older than 6.8.
	MountAuto MountMethod = iota
	// MountNewAPI uses fsopen/fsconfig/fsmount/move_mount and hands the
	// kernel one lower layer per fsconfig("lowerdir+") call (kernel >=
	// 6.8), so no option string limits the stack. Paths of 256 bytes or
	// more (fsconfig's string limit) go by O_PATH descriptor (kernel >= 6.13).
	MountNewAPI
	// MountLegacy uses mount(2), whose options must fit in one page. When
	// the absolute paths do not fit, it mounts from a thread whose working
	// directory is the store, naming layers by their short l/ links
	// (Docker's scheme), which fits about 250 layers.
	MountLegacy
)

// maxStack is overlayfs' limit on lower layers (OVL_MAX_STACK).
const maxStack = 500

// mountSpec is one overlay mount. Lower is top first. Paths are absolute;
// the *Rel fields are the same directories relative to Dir (the store),
// used by the legacy short-name path.
type mountSpec struct {
	Target    string
	Lower     []string
	LowerRel  []string
	Upper     string // empty for a read-only mount
	Work      string
	UpperRel  string
	WorkRel   string
	Dir       string
	ReadOnly  bool
	UserXattr bool
}

// mountOverlay mounts sp with the given method.
func mountOverlay(sp *mountSpec, method MountMethod) error {
	if len(sp.Lower) == 0 {
		return fmt.Errorf("overlay: mount %s: no lower layers", sp.Target)
	}
	if len(sp.Lower) > maxStack {
		return fmt.Errorf("%w: %d lower layers, overlayfs takes at most %d", ErrTooManyLayers, len(sp.Lower), maxStack)
	}
	switch method {
	case MountNewAPI:
		err, _ := mountNewAPI(sp)
		return err
	case MountLegacy:
		return mountLegacy(sp)
	case MountAuto:
		err, fallback := mountNewAPI(sp)
		if fallback {
			return mountLegacy(sp)
		}
		if errors.Is(err, unix.EINVAL) {
			// Before 6.5 overlayfs had no fs_context of its own: the
			// kernel gathers fsconfig keys into one option string and
			// only fails at create. mount(2) tells the real story.
			if lerr := mountLegacy(sp); lerr != nil {
				return fmt.Errorf("%w (and mount(2): %v)", err, lerr)
			}
			return nil
		}
		return err
	}
	return fmt.Errorf("overlay: unknown mount method %d", method)
}

// mountError classifies a mount failure: lack of privilege or of
// overlayfs support wraps ErrMountUnsupported.
func mountError(target, how string, err error, detail string) error {
	if detail != "" {
		detail = " (" + detail + ")"
	}
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOSYS) {
		return fmt.Errorf("%w at %s: %s: %v%s", ErrMountUnsupported, target, how, err, detail)
	}
	return fmt.Errorf("overlay: mount %s: %s: %w%s", target, how, err, detail)
}

// mountNewAPI mounts with the new mount API. fallback reports that the
// kernel lacks it (or lowerdir+), so that mount(2) should be tried.
func mountNewAPI(sp *mountSpec) (err error, fallback bool) {
	fsfd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		if errors.Is(err, unix.ENOSYS) {
			return mountError(sp.Target, "fsopen", err, ""), true
		}
		return mountError(sp.Target, "fsopen overlay", err, ""), false
	}
	defer unix.Close(fsfd)
	fail := func(what string, err error) error {
		return mountError(sp.Target, what, err, fsMessages(fsfd))
	}
	if err := unix.FsconfigSetString(fsfd, "source", "overlay"); err != nil {
		return fail("fsconfig source", err), false
	}
	for i, p := range sp.Lower {
		if err := fsconfigPath(fsfd, "lowerdir+", "lowerdir+", p); err != nil {
			// Kernels before 6.8 reject the key itself.
			return fail("fsconfig lowerdir+ "+p, err), i == 0 && errors.Is(err, unix.EINVAL)
		}
	}
	if sp.Upper != "" {
		if err := fsconfigPath(fsfd, "upperdir", "upperdir+", sp.Upper); err != nil {
			return fail("fsconfig upperdir "+sp.Upper, err), false
		}
		if err := fsconfigPath(fsfd, "workdir", "workdir+", sp.Work); err != nil {
			return fail("fsconfig workdir "+sp.Work, err), false
		}
	}
	for _, kv := range mountOptions(sp) {
		if err := unix.FsconfigSetString(fsfd, kv[0], kv[1]); err != nil {
			return fail("fsconfig "+kv[0]+"="+kv[1], err), false
		}
	}
	if sp.UserXattr {
		if err := unix.FsconfigSetFlag(fsfd, "userxattr"); err != nil {
			return fail("fsconfig userxattr", err), false
		}
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return fail("fsconfig create", err), false
	}
	attr := 0
	if sp.ReadOnly {
		attr |= unix.MOUNT_ATTR_RDONLY
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, attr)
	if err != nil {
		return fail("fsmount", err), false
	}
	defer unix.Close(mfd)
	if err := unix.MoveMount(mfd, "", unix.AT_FDCWD, sp.Target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fail("move_mount", err), false
	}
	return nil, false
}

// mountOptions are the options every mount sets. index=off as Docker and
// containerd do (no inode index; the upper dir may be mounted on other
// lower dirs); redirect_dir=off and metacopy=off so that the upper dir
// never holds redirects or metadata-only copies, which a layer cannot
// express (Create rejects them). With userxattr the kernel forces
// redirect_dir=nofollow (no redirects created) and refuses any other
// value, so the option is left out there.
func mountOptions(sp *mountSpec) [][2]string {
	o := [][2]string{{"index", "off"}, {"metacopy", "off"}}
	if !sp.UserXattr {
		o = append(o, [2]string{"redirect_dir", "off"})
	}
	return o
}

// fsconfigPathMax: fsconfig copies string values with strndup_user(v, 256).
const fsconfigPathMax = 256

// fsconfigPath passes a directory to fsconfig: as a string when it fits,
// else as an O_PATH descriptor under fdKey (kernel >= 6.13).
func fsconfigPath(fsfd int, strKey, fdKey, path string) error {
	if len(path) < fsconfigPathMax {
		return unix.FsconfigSetString(fsfd, strKey, path)
	}
	fd, err := unix.Open(path, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.FsconfigSetFd(fsfd, fdKey, fd)
}

// fsMessages drains the messages the kernel logged on an fs context
// ("e overlay: ..." lines) into one string.
func fsMessages(fsfd int) string {
	var msgs []string
	buf := make([]byte, 4096)
	for range 32 {
		n, err := unix.Read(fsfd, buf)
		if err != nil || n <= 0 {
			break
		}
		msgs = append(msgs, strings.TrimSpace(string(buf[:n])))
	}
	return strings.Join(msgs, "; ")
}

// legacyEscape escapes the characters mount(2) overlay options split on.
func legacyEscape(p string) string {
	r := strings.NewReplacer(`\`, `\\`, `,`, `\,`, `:`, `\:`)
	return r.Replace(p)
}

func legacyOptions(lower []string, upper, work string, sp *mountSpec) string {
	var b strings.Builder
	b.WriteString("lowerdir=")
	for i, p := range lower {
		if i > 0 {
			b.WriteByte(':')
		}
		b.WriteString(legacyEscape(p))
	}
	if upper != "" {
		b.WriteString(",upperdir=" + legacyEscape(upper) + ",workdir=" + legacyEscape(work))
	}
	for _, kv := range mountOptions(sp) {
		b.WriteString("," + kv[0] + "=" + kv[1])
	}
	if sp.UserXattr {
		b.WriteString(",userxattr")
	}
	return b.String()
}

// mountLegacy mounts with mount(2). The option string must be shorter
// than a page; if the absolute paths make it longer, the mount runs on a
// thread with a private working directory (the store) and names layers by
// their short relative links.
func mountLegacy(sp *mountSpec) error {
	var flags uintptr
	if sp.ReadOnly {
		flags |= unix.MS_RDONLY
	}
	page := os.Getpagesize()
	data := legacyOptions(sp.Lower, sp.Upper, sp.Work, sp)
	if len(data) < page {
		if err := unix.Mount("overlay", sp.Target, "overlay", flags, data); err != nil {
			return mountError(sp.Target, "mount(2)", err, "")
		}
		return nil
	}
	if len(sp.LowerRel) != len(sp.Lower) || sp.Dir == "" {
		return fmt.Errorf("%w: the mount options of %d layers need %d bytes, more than a page", ErrTooManyLayers, len(sp.Lower), len(data))
	}
	data = legacyOptions(sp.LowerRel, sp.UpperRel, sp.WorkRel, sp)
	if len(data) >= page {
		return fmt.Errorf("%w: even with short names the mount options of %d layers need %d bytes, more than a page (kernel >= 6.8 has no such limit)", ErrTooManyLayers, len(sp.Lower), len(data))
	}
	target, err := filepath.Abs(sp.Target)
	if err != nil {
		return err
	}
	if err := mountInDir(sp.Dir, target, data, flags); err != nil {
		return mountError(sp.Target, "mount(2) with short names", err, "")
	}
	return nil
}

// mountInDir calls mount(2) on a dedicated OS thread whose working
// directory is dir, so relative paths in data resolve there without
// touching the process's working directory.
func mountInDir(dir, target, data string, flags uintptr) error {
	errc := make(chan error, 1)
	go func() {
		// The thread's fs_struct is unshared and never restored: the
		// goroutine exits still locked, so the runtime ends the thread.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			errc <- fmt.Errorf("unshare(CLONE_FS): %w", err)
			return
		}
		if err := unix.Chdir(dir); err != nil {
			errc <- err
			return
		}
		errc <- unix.Mount("overlay", target, "overlay", flags, data)
	}()
	return <-errc
}

// unmount detaches the mount at target.
func unmount(target string) error {
	if err := unix.Unmount(target, 0); err != nil {
		return fmt.Errorf("overlay: umount %s: %w", target, err)
	}
	return nil
}

// mountFSType returns the filesystem type mounted at target (the topmost
// mount there), or "" when nothing is mounted on target itself.
func mountFSType(target string) (string, error) {
	m, err := mountAt(target)
	return m.fstype, err
}

// mountEntry is what mountAt reports of a mount.
type mountEntry struct {
	fstype    string
	superOpts string // the filesystem's options (overlay: lowerdir=..., upperdir=...)
}

// mountAt returns the topmost mount on target from /proc/self/mountinfo;
// a zero entry when nothing is mounted on target itself.
func mountAt(target string) (mountEntry, error) {
	var m mountEntry
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return m, fmt.Errorf("overlay: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent maj:min root mountpoint opts [optional...] - fstype source superopts
		f := strings.Fields(sc.Text())
		if len(f) < 10 || unescapeMountinfo(f[4]) != target {
			continue
		}
		for i := 6; i+3 < len(f); i++ {
			if f[i] == "-" {
				m = mountEntry{fstype: f[i+1], superOpts: unescapeMountinfo(f[i+3])}
				break
			}
		}
	}
	return m, sc.Err()
}

// mountedUpper reports whether the overlay options opts name upper as
// upper dir. ok is false when that cannot be told (the kernel escapes
// some characters in options).
func mountedUpper(opts, upper string) (match, ok bool) {
	if strings.ContainsAny(upper, ",:\\") {
		return false, false
	}
	for _, o := range strings.Split(opts, ",") {
		if v, found := strings.CutPrefix(o, "upperdir="); found {
			return v == upper, true
		}
	}
	return false, true
}

// unescapeMountinfo undoes the octal escapes (\040 and so on) of mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// inUserNamespace reports whether this process runs in a user namespace
// other than the initial one (whose uid_map is the identity over all ids).
func inUserNamespace() bool {
	b, err := os.ReadFile("/proc/self/uid_map")
	if err != nil {
		return false
	}
	f := strings.Fields(string(b))
	return !(len(f) == 3 && f[0] == "0" && f[1] == "0" && f[2] == "4294967295")
}

// StoreOfMount returns the store directory of the container whose overlay
// is mounted on target, found from the mount itself: its upper dir is
// STORE/containers/NAME/upper. ok is false when target is not such a
// mount (not mounted, not overlay, mounted read-only without an upper
// dir, or a copy-mode container), and the caller falls back to the
// default store.
func StoreOfMount(target string) (dir string, ok bool) {
	abs, err := cleanTarget(target)
	if err != nil {
		return "", false
	}
	m, err := mountAt(abs)
	if err != nil || m.fstype != "overlay" {
		return "", false
	}
	for _, o := range strings.Split(m.superOpts, ",") {
		upper, found := strings.CutPrefix(o, "upperdir=")
		if !found || !filepath.IsAbs(upper) {
			continue
		}
		cdir := filepath.Dir(upper)
		if filepath.Base(upper) != "upper" || filepath.Base(filepath.Dir(cdir)) != "containers" {
			return "", false
		}
		return filepath.Dir(filepath.Dir(cdir)), true
	}
	return "", false
}
