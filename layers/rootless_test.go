package layers

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/imgtool/imgtool/internal/tartest"
	"github.com/imgtool/imgtool/internal/testutil"
	"golang.org/x/sys/unix"
)

const rootlessEnv = "LAYERS_ROOTLESS_HELPER_DIR"

// TestRootless re-runs this test binary as user nobody (65534) to apply
// layers without privileges: ownership is left alone, devices are refused
// (or skipped), security.capability is skipped, and read-only directories
// of lower layers still take whiteouts and new entries.
func TestRootless(t *testing.T) {
	testutil.NeedRoot(t)
	base := t.TempDir()
	for _, d := range []string{filepath.Dir(base), base} {
		must(t, os.Chmod(d, 0o755))
	}
	bin := filepath.Join(base, "layers.test")
	src, err := os.Open(os.Args[0])
	must(t, err)
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	must(t, err)
	_, err = io.Copy(dst, src)
	src.Close()
	must(t, err)
	must(t, dst.Close())
	work := filepath.Join(base, "work")
	must(t, os.Mkdir(work, 0o755))
	must(t, os.Chown(work, 65534, 65534))

	cmd := exec.Command(bin, "-test.run=^TestRootlessHelper$", "-test.v")
	cmd.Env = append(os.Environ(), rootlessEnv+"="+work)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("rootless apply as nobody: %v\n%s", err, out)
	}
	if !bytes.Contains(out, []byte("--- PASS: TestRootlessHelper")) {
		t.Fatalf("helper did not run:\n%s", out)
	}
}

func TestRootlessHelper(t *testing.T) {
	dir := os.Getenv(rootlessEnv)
	if dir == "" {
		t.Skip("run by TestRootless")
	}
	if os.Geteuid() == 0 {
		t.Fatal("helper runs as root")
	}
	caps := string([]byte{0, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	lower := tartest.Tar(
		tartest.Dir("ro/").With(func(h *tar.Header) { h.Mode = 0o555 }),
		tartest.File("ro/f", "f"), tartest.File("ro/g", "g"),
		tartest.Dir("ro/sub/").With(func(h *tar.Header) { h.Mode = 0o555 }),
		tartest.File("ro/sub/x", "x").With(func(h *tar.Header) { h.Mode = 0o444 }),
		tartest.File("suid", "s").With(func(h *tar.Header) { h.Mode = 0o4755; h.Uid = 0; h.Gid = 0 }).Xattr("user.k", "v").Xattr("security.capability", caps),
	)
	upper := tartest.Tar(tartest.Whiteout("ro/f"), tartest.File("ro/h", "h"), tartest.Whiteout("ro/sub"))
	root := filepath.Join(dir, "root")
	must(t, applyBytes(root, lower, ApplyOptions{}))
	must(t, applyBytes(root, upper, ApplyOptions{}))
	want := []string{"ro/", "ro/g=g", "ro/h=h", "suid=s"}
	if got := listTree(t, root); !equalStrings(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	var st unix.Stat_t
	must(t, unix.Lstat(filepath.Join(root, "ro"), &st))
	if st.Mode&0o7777 != 0o555 {
		t.Errorf("ro mode %#o, want 0555", st.Mode&0o7777)
	}
	must(t, unix.Lstat(filepath.Join(root, "suid"), &st))
	if st.Mode&0o7777 != 0o4755 || st.Uid != uint32(os.Geteuid()) {
		t.Errorf("suid: mode %#o uid %d", st.Mode&0o7777, st.Uid)
	}
	xs, err := listXattrs(filepath.Join(root, "suid"))
	must(t, err)
	if xs["user.k"] != "v" {
		t.Errorf("xattrs %v", xs)
	}
	dev := tartest.Tar(tartest.Char("null", 1, 3), tartest.File("after", "a"))
	if err := applyBytes(filepath.Join(dir, "dev1"), dev, ApplyOptions{}); !errors.Is(err, ErrDevicesNotPermitted) {
		t.Errorf("device as non-root: %v", err)
	}
	must(t, applyBytes(filepath.Join(dir, "dev2"), dev, ApplyOptions{SkipDevices: true}))
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
