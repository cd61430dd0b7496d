package atomicfile

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/imgtool/imgtool/internal/imagelock"
	"github.com/imgtool/imgtool/internal/testutil"
)

// write is WriteFile of a string, which every test that writes a whole
// file goes through.
func write(t *testing.T, path string, data string, opts Options) error {
	t.Helper()
	return WriteFile(path, []byte(data), opts)
}

func names(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var ns []string
	for _, e := range ents {
		ns = append(ns, e.Name())
	}
	return ns
}

func readString(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func modes() map[string]Options {
	return map[string]Options{"tmpfile": {}, "named": {Named: true}, "nosync": {Sync: NoSync}}
}

func TestCreateCommitAbort(t *testing.T) {
	for name, opts := range modes() {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			dst := filepath.Join(dir, "img")
			if err := write(t, dst, "one", opts); err != nil {
				t.Fatal(err)
			}
			if err := write(t, dst, "two", opts); err != nil {
				t.Fatal(err)
			}
			if got := readString(t, dst); got != "two" {
				t.Errorf("content %q, want two", got)
			}
			f, err := Create(dst, opts)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteString("three")
			f.Abort()
			f.Abort()
			if got := readString(t, dst); got != "two" {
				t.Errorf("after Abort: content %q, want two", got)
			}
			if got := names(t, dir); !slices.Equal(got, []string{"img"}) {
				t.Errorf("directory holds %v, want only img", got)
			}
			if err := f.Commit(); err == nil {
				t.Error("Commit after Abort succeeded")
			}
		})
	}
}

func TestUmaskAndKeptMode(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	for name, opts := range modes() {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			dst := filepath.Join(dir, "img")
			if err := write(t, dst, "x", opts); err != nil {
				t.Fatal(err)
			}
			if fi, _ := os.Stat(dst); fi.Mode().Perm() != 0o600 {
				t.Errorf("new file under umask 077 has mode %v, want 0600", fi.Mode().Perm())
			}
			if err := os.Chmod(dst, 0o640); err != nil {
				t.Fatal(err)
			}
			owner := -1
			if os.Geteuid() == 0 {
				owner = 4321
				if err := os.Chown(dst, owner, owner); err != nil {
					t.Fatal(err)
				}
			}
			if err := write(t, dst, "y", opts); err != nil {
				t.Fatal(err)
			}
			fi, _ := os.Stat(dst)
			if fi.Mode().Perm() != 0o640 {
				t.Errorf("replaced file has mode %v, want the old 0640", fi.Mode().Perm())
			}
			if st := fi.Sys().(*syscall.Stat_t); owner >= 0 && (int(st.Uid) != owner || int(st.Gid) != owner) {
				t.Errorf("replaced file owned by %d:%d, want %d:%d", st.Uid, st.Gid, owner, owner)
			}
		})
	}
}

func TestWritesThroughSymlink(t *testing.T) {
	for name, opts := range modes() {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			real := filepath.Join(dir, "sub", "real.img")
			os.Mkdir(filepath.Dir(real), 0o755)
			os.WriteFile(real, []byte("old"), 0o644)
			link := filepath.Join(dir, "link.img")
			os.Symlink("sub/real.img", link)
			link2 := filepath.Join(dir, "link2.img") // a link to a link
			os.Symlink("link.img", link2)
			if err := write(t, link2, "new", opts); err != nil {
				t.Fatal(err)
			}
			for _, l := range []string{link, link2} {
				if fi, err := os.Lstat(l); err != nil || fi.Mode()&os.ModeSymlink == 0 {
					t.Errorf("%s is no longer a symlink", l)
				}
			}
			if got := readString(t, real); got != "new" {
				t.Errorf("link target holds %q, want new", got)
			}
			// A dangling link: its target is created.
			dangling := filepath.Join(dir, "dangling.img")
			os.Symlink("sub/missing.img", dangling)
			if err := write(t, dangling, "made", opts); err != nil {
				t.Fatal(err)
			}
			if got := readString(t, filepath.Join(dir, "sub", "missing.img")); got != "made" {
				t.Errorf("dangling link target holds %q", got)
			}
		})
	}
}

func TestRefusesNonRegular(t *testing.T) {
	dir := t.TempDir()
	if _, err := Create(dir, Options{}); err == nil {
		t.Error("Create on a directory succeeded")
	}
	// A name with a trailing slash names a directory, whether or not it
	// exists or a file of that name does: nothing is created or replaced.
	os.WriteFile(filepath.Join(dir, "file"), []byte("kept"), 0o644)
	for _, p := range []string{filepath.Join(dir, "new") + "/", filepath.Join(dir, "file") + "/"} {
		if _, err := Create(p, Options{}); !errors.Is(err, syscall.EISDIR) {
			t.Errorf("Create(%q) = %v, want EISDIR", p, err)
		}
	}
	if d := cmp.Diff([]string{"file"}, names(t, dir)); d != "" {
		t.Errorf("directory (-want +got):\n%s", d)
	}
	if got := readString(t, filepath.Join(dir, "file")); got != "kept" {
		t.Errorf("file holds %q, want kept", got)
	}
}

func checkLockError(t *testing.T, err error, path string) {
	t.Helper()
	var le *LockError
	if !errors.As(err, &le) || !errors.Is(err, imagelock.ErrLocked) {
		t.Fatalf("got %v, want a LockError", err)
	}
	msg := err.Error()
	for _, want := range []string{`Failed to get "write" lock`, "Is another process using the image [" + path + "]?"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q lacks %q", msg, want)
		}
	}
	if strings.Contains(msg, "-U") || strings.Contains(msg, "force-share") {
		t.Errorf("message %q suggests -U for a write", msg)
	}
}

func TestLockConflictInProcess(t *testing.T) {
	dir := t.TempDir()
	dst := filepath.Join(dir, "base.img")
	os.WriteFile(dst, []byte("base"), 0o644)
	// A reader in this process (a source chain being converted) holds it.
	r, err := os.Open(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := imagelock.Acquire(r, imagelock.Reader); err != nil {
		t.Fatal(err)
	}
	// Through a symlink too: the lock is on the target.
	link := filepath.Join(dir, "link.img")
	os.Symlink("base.img", link)
	for _, p := range []string{dst, link} {
		checkLockError(t, write(t, p, "new", Options{}), dst)
	}
	if got := readString(t, dst); got != "base" {
		t.Errorf("locked file changed to %q", got)
	}
	if got := names(t, dir); !slices.Equal(got, []string{"base.img", "link.img"}) {
		t.Errorf("directory holds %v", got)
	}
	r.Close()
	if err := write(t, dst, "new", Options{}); err != nil {
		t.Fatalf("after the reader closed: %v", err)
	}
}

func TestLockConflictWithQemuIO(t *testing.T) {
	testutil.NeedTool(t, "qemu-io", "qemu-img")
	dir := t.TempDir()
	dst := filepath.Join(dir, "held.qcow2")
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", dst, "1M")
	release := testutil.HoldWithQemuIO(t, dst)
	before := readString(t, dst)
	err := write(t, dst, "new", Options{})
	checkLockError(t, err, dst)
	if !strings.Contains(err.Error(), "qemu-io") {
		t.Errorf("message %q does not name qemu-io", err)
	}
	if readString(t, dst) != before {
		t.Error("held image changed")
	}
	release()
	if err := write(t, dst, "new", Options{}); err != nil {
		t.Fatalf("after qemu-io quit: %v", err)
	}
}

func TestCreateTempCommitAs(t *testing.T) {
	dir := t.TempDir()
	for i, keep := range []bool{false, true} {
		f, err := CreateTemp(dir, Options{KeepExisting: keep})
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(f, "blob%d", i)
		if err := f.CommitAs(filepath.Join(dir, "blob")); err != nil {
			t.Fatal(err)
		}
	}
	if got := readString(t, filepath.Join(dir, "blob")); got != "blob0" {
		t.Errorf("KeepExisting replaced the blob: %q", got)
	}
	if got := names(t, dir); !slices.Equal(got, []string{"blob"}) {
		t.Errorf("directory holds %v", got)
	}
}

func TestStaleTempRemoved(t *testing.T) {
	dir := t.TempDir()
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Skip("no true(1)")
	}
	pid := dead.Process.Pid
	stale := filepath.Join(dir, fmt.Sprintf(".img%s%d-42", tmpMark, pid))
	live := filepath.Join(dir, fmt.Sprintf(".img%s%d-43", tmpMark, os.Getppid()))
	other := filepath.Join(dir, ".img.tmp-123") // not our naming: left alone
	for _, p := range []string{stale, live, other} {
		os.WriteFile(p, []byte("x"), 0o600)
	}
	if err := write(t, filepath.Join(dir, "img"), "x", Options{}); err != nil {
		t.Fatal(err)
	}
	got := names(t, dir)
	want := []string{filepath.Base(live), filepath.Base(other), "img"}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("directory holds %v, want %v", got, want)
	}
}

// TestKillLeavesNothing kills a child process with SIGKILL at random
// points while it replaces a file over and over, and checks that the file
// is always whole (one of the versions written) and that nothing else is
// left once the next Create has run.
func TestKillLeavesNothing(t *testing.T) {
	if os.Getenv("ATOMICFILE_CHILD") != "" {
		t.Skip("child")
	}
	rounds := 12
	if testing.Short() {
		rounds = 4
	}
	for name, opts := range modes() {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			dst := filepath.Join(dir, "img")
			if err := write(t, dst, strings.Repeat("A", 1<<20), opts); err != nil {
				t.Fatal(err)
			}
			leftBeforeCleanup, replaced := 0, 0
			for round := range rounds {
				cmd := exec.Command(os.Args[0], "-test.run=^TestKillChild$")
				cmd.Env = append(os.Environ(), "ATOMICFILE_CHILD="+dst, "ATOMICFILE_NAMED="+fmt.Sprint(opts.Named), "ATOMICFILE_NOSYNC="+fmt.Sprint(opts.Sync == NoSync))
				var out bytes.Buffer
				cmd.Stderr = &out
				ready, err := cmd.StdoutPipe()
				if err != nil {
					t.Fatal(err)
				}
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				// Wait for the child's first commit (a loaded machine can
				// take longer to start a race-enabled binary than any fixed
				// delay), then kill it at a random point of the writes after.
				first := make(chan error, 1)
				go func() {
					_, err := bufio.NewReader(ready).ReadString('\n')
					first <- err
				}()
				select {
				case err := <-first:
					if err != nil {
						cmd.Process.Kill()
						cmd.Wait()
						t.Fatalf("round %d: child ended before its first commit: %v\n%s", round, err, out.String())
					}
				case <-time.After(2 * time.Minute):
					cmd.Process.Kill()
					cmd.Wait()
					t.Fatalf("round %d: child made no commit in 2 minutes\n%s", round, out.String())
				}
				time.Sleep(time.Duration(rand.IntN(100)) * time.Millisecond)
				cmd.Process.Signal(syscall.SIGKILL)
				go io.Copy(io.Discard, ready)
				cmd.Wait()
				b, err := os.ReadFile(dst)
				if err != nil {
					t.Fatalf("round %d: %v\n%s", round, err, out.String())
				}
				if len(b) != 1<<20 || strings.Count(string(b), string(b[:1])) != len(b) {
					t.Fatalf("round %d: destination is not whole: %d bytes", round, len(b))
				}
				if b[0] != 'A' {
					replaced++
				}
				if len(names(t, dir)) != 1 {
					leftBeforeCleanup++
				}
				// The next Create cleans up after a killed named writer.
				f, err := Create(dst, opts)
				if err != nil {
					t.Fatal(err)
				}
				f.Abort()
				if got := names(t, dir); !slices.Equal(got, []string{"img"}) {
					t.Fatalf("round %d: after a kill and a new Create the directory holds %v", round, got)
				}
			}
			t.Logf("%d of %d kills left a temp file until the next Create", leftBeforeCleanup, rounds)
			if replaced == 0 {
				t.Error("the killed writer never replaced the file: the test proves nothing")
			}
			if !opts.Named && leftBeforeCleanup > rounds/2 {
				t.Errorf("unnamed temp files: %d of %d kills left a file behind", leftBeforeCleanup, rounds)
			}
		})
	}
}

// TestKillChild is the writer TestKillLeavesNothing kills.
func TestKillChild(t *testing.T) {
	dst := os.Getenv("ATOMICFILE_CHILD")
	if dst == "" {
		t.Skip("run by TestKillLeavesNothing")
	}
	opts := Options{Named: os.Getenv("ATOMICFILE_NAMED") == "true"}
	if os.Getenv("ATOMICFILE_NOSYNC") == "true" {
		opts.Sync = NoSync
	}
	chunk := make([]byte, 64<<10)
	for i := 0; ; i++ {
		f, err := Create(dst, opts)
		if err != nil {
			t.Fatal(err)
		}
		for j := range chunk {
			chunk[j] = byte('B' + i%20)
		}
		for range 16 {
			if _, err := f.Write(chunk); err != nil {
				t.Fatal(err)
			}
		}
		if err := f.Commit(); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			os.Stdout.WriteString("committed\n")
		}
	}
}

func TestParseCache(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Sync
		ok   bool
	}{{"", Durable, true}, {"writeback", Durable, true}, {"none", Durable, true}, {"unsafe", NoSync, true}, {"bogus", Durable, false}} {
		got, err := ParseCache(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseCache(%q) = %v, %v", tc.in, got, err)
		}
	}
}
