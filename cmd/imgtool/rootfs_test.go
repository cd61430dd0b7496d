package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgtool/imgtool/internal/testutil"
	"github.com/imgtool/imgtool/layers"
	"golang.org/x/sys/unix"
)

func runCLI(t *testing.T, want int, args ...string) string {
	t.Helper()
	var out, errb bytes.Buffer
	if code := run(args, &out, &errb); code != want {
		t.Fatalf("imgtool %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, want, out.String(), errb.String())
	}
	return out.String() + errb.String()
}

// hostnameLayout builds in work/layout a layout holding one image, tagged
// tag, of one layer: etc/hostname reading hostname. It returns the
// layout's directory.
func hostnameLayout(t *testing.T, work, tag, hostname string) string {
	t.Helper()
	src := filepath.Join(work, "src")
	if err := os.MkdirAll(filepath.Join(src, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "etc", "hostname"), []byte(hostname), 0o644); err != nil {
		t.Fatal(err)
	}
	layout := filepath.Join(work, "layout")
	if _, err := layers.Build(context.Background(), layout, layers.BuildOptions{Layers: []string{src}, Tag: tag}); err != nil {
		t.Fatal(err)
	}
	return layout
}

func TestRootfsStoreCLI(t *testing.T) {
	testutil.NeedRoot(t)
	work := t.TempDir()
	layout := hostnameLayout(t, work, "base", "base\n")
	store := filepath.Join(work, "store")
	target := filepath.Join(work, "mnt")
	os.Mkdir(target, 0o755)

	out := runCLI(t, 0, "rootfs", "mount", "--store", store, "--name", "cli", "-p", layout+":base", target)
	t.Cleanup(func() { unix.Unmount(target, unix.MNT_DETACH) })
	if !strings.Contains(out, "1 unpacked") || !strings.Contains(out, "container cli") {
		t.Errorf("mount output: %q", out)
	}
	if b, err := os.ReadFile(filepath.Join(target, "etc/hostname")); err != nil || string(b) != "base\n" {
		t.Fatalf("mounted file: %q %v", b, err)
	}
	// Nothing changed yet: commit says so and writes nothing, unless
	// --allow-empty.
	out = runCLI(t, 1, "rootfs", "commit", "--store", store, target, layout+":same")
	if !strings.Contains(out, "no changes") || !strings.Contains(out, "--allow-empty") {
		t.Errorf("commit of an unchanged container: %q", out)
	}
	if out := runCLI(t, 0, "image", "ls", layout); strings.Contains(out, "same") {
		t.Errorf("a refused commit tagged an image: %q", out)
	}
	runCLI(t, 0, "rootfs", "commit", "--store", store, "--allow-empty", target, layout+":empty")
	os.WriteFile(filepath.Join(target, "etc/hostname"), []byte("changed\n"), 0o644)

	out = runCLI(t, 0, "rootfs", "commit", "--store", store, "--output", "json", "-p", target, layout+":changed")
	var cr struct {
		Container string `json:"container"`
	}
	// stdout's JSON comes first; -p writes to stderr after it.
	if err := json.NewDecoder(strings.NewReader(out)).Decode(&cr); err != nil || cr.Container != "cli" {
		t.Errorf("commit json: %q %v", out, err)
	}
	if !strings.Contains(out, "diff: ") {
		t.Errorf("commit -p printed no progress: %q", out)
	}

	out = runCLI(t, 0, "store", "ls", "--store", store, "--output", "json")
	var u struct {
		Layers     []struct{ Containers []string }
		Containers []struct {
			Name     string
			Mounted  bool
			Size     int64
			UpperDir string `json:"upper_dir"`
		}
	}
	if err := json.Unmarshal([]byte(out), &u); err != nil {
		t.Fatal(err)
	}
	if len(u.Layers) != 1 || len(u.Containers) != 1 || !u.Containers[0].Mounted || u.Containers[0].Size <= 0 {
		t.Errorf("store ls: %s", out)
	}
	upper := u.Containers[0].UpperDir
	if b, err := os.ReadFile(filepath.Join(upper, "etc/hostname")); err != nil || string(b) != "changed\n" {
		t.Errorf("store ls upper_dir %q does not hold the container's change: %q %v", upper, b, err)
	}
	if out = runCLI(t, 0, "store", "ls", "--store", store); !strings.Contains(out, "cli") || !strings.Contains(out, "mounted") ||
		!strings.Contains(out, "UPPER DIR") || upper == "" || !strings.Contains(out, upper) {
		t.Errorf("store ls human shows no upper dir %q: %q", upper, out)
	}

	runCLI(t, 0, "rootfs", "umount", "--store", store, target)
	// Mount the committed image read-only: it shows the change.
	out = runCLI(t, 0, "rootfs", "mount", "--store", store, "--readonly", layout+":changed", target)
	if !strings.Contains(out, "1 unpacked, 1 already") {
		t.Errorf("second mount: %q", out)
	}
	if b, _ := os.ReadFile(filepath.Join(target, "etc/hostname")); string(b) != "changed\n" {
		t.Errorf("committed image shows %q", b)
	}
	runCLI(t, 0, "rootfs", "umount", "--store", store, "--rm", target)
	runCLI(t, 0, "rootfs", "umount", "--store", store, "--rm", target) // the older container "cli"
	out = runCLI(t, 0, "store", "gc", "--store", store, "--all")
	if !strings.Contains(out, "removed 2 layers") {
		t.Errorf("gc: %q", out)
	}
	out = runCLI(t, 1, "rootfs", "umount", "--store", store, target)
	if !strings.Contains(out, "no such container") {
		t.Errorf("umount of nothing: %q", out)
	}
}

func TestRootfsCLIUsage(t *testing.T) {
	store := t.TempDir()
	for _, args := range [][]string{
		{"rootfs"},
		{"rootfs", "frob"},
		{"rootfs", "mount", "--store", store, "only-one-arg"},
		{"rootfs", "umount", "--store", store},
		{"rootfs", "commit", "--store", store, "x"},
		{"store", "ls", "--store", store, "extra"},
		{"store", "ls", "--store", store, "--output", "yaml"},
		{"store", "gc", "--store", store, "extra"},
	} {
		runCLI(t, 1, args...)
	}
	runCLI(t, 0, "rootfs", "--help")
	runCLI(t, 0, "store", "--help")
	runCLI(t, 0, "store", "ls", "--help")
}

// TestHelperRootfsHint is not a test: TestRootfsMountHintsCopy runs the
// test binary in a user namespace without a mount namespace, entering here.
func TestHelperRootfsHint(t *testing.T) {
	arg := os.Getenv("IMGTOOL_ROOTFS_HINT")
	if arg == "" {
		t.Skip("helper process for TestRootfsMountHintsCopy")
	}
	layout, store, _ := strings.Cut(arg, "|")
	out := runCLI(t, 1, "rootfs", "mount", "--store", store, layout+":t", t.TempDir())
	if !strings.Contains(out, "cannot mount overlayfs") || !strings.Contains(out, "rootfs mount --copy") {
		t.Errorf("mount error does not suggest --copy: %q", out)
	}
	target := filepath.Join(t.TempDir(), "copy")
	runCLI(t, 0, "rootfs", "mount", "--store", store, "--copy", layout+":t", target)
	if b, err := os.ReadFile(filepath.Join(target, "etc/hostname")); err != nil || string(b) != "base\n" {
		t.Errorf("copy: %q %v", b, err)
	}
}

// TestRootfsMountHintsCopy: where overlayfs cannot be mounted (here a user
// namespace that does not own its mount namespace) the error suggests
// --copy, and --copy works.
func TestRootfsMountHintsCopy(t *testing.T) {
	testutil.NeedTool(t, "unshare")
	work := t.TempDir()
	layout := hostnameLayout(t, work, "t", "base\n")
	t.Setenv("IMGTOOL_ROOTFS_HINT", layout+"|"+filepath.Join(work, "store"))
	out, err := testutil.Exec("unshare", "--user", "--map-root-user", os.Args[0], "-test.run=^TestHelperRootfsHint$", "-test.v")
	if err != nil || !strings.Contains(string(out), "--- PASS: TestHelperRootfsHint") {
		t.Fatalf("%v\n%s", err, out)
	}
}

// TestRootfsFirstUse: what a new user types first. The mount point does
// not exist yet (mount makes it, as mount --mkdir, and umount removes it
// again), and commit and umount find the --store of the mount by
// themselves.
func TestRootfsFirstUse(t *testing.T) {
	testutil.NeedRoot(t)
	work := t.TempDir()
	layout := hostnameLayout(t, work, "base", "base\n")
	store := filepath.Join(work, "store")
	target := filepath.Join(work, "mnt", "c1") // neither exists
	// Point the default store somewhere empty, so that only finding the
	// mount's own store can make commit and umount work.
	t.Setenv("XDG_DATA_HOME", filepath.Join(work, "default-data"))

	runCLI(t, 0, "rootfs", "mount", "--store", store, layout+":base", target)
	t.Cleanup(func() { unix.Unmount(target, unix.MNT_DETACH) })
	os.WriteFile(filepath.Join(target, "etc/hostname"), []byte("changed\n"), 0o644)
	runCLI(t, 0, "rootfs", "commit", target, layout+":changed")
	runCLI(t, 0, "rootfs", "umount", target)
	if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("umount left the mount point it made: %v", err)
	}
	// The committed image is in the layout, and its layers in --store.
	runCLI(t, 0, "rootfs", "mount", "--store", store, "--readonly", layout+":changed", target)
	if b, _ := os.ReadFile(filepath.Join(target, "etc/hostname")); string(b) != "changed\n" {
		t.Errorf("committed image shows %q", b)
	}
	runCLI(t, 0, "rootfs", "umount", "--store", store, "--rm", target)
	// A mount point the user made stays.
	mine := filepath.Join(work, "mine")
	os.Mkdir(mine, 0o755)
	runCLI(t, 0, "rootfs", "mount", "--store", store, layout+":base", mine)
	t.Cleanup(func() { unix.Unmount(mine, unix.MNT_DETACH) })
	runCLI(t, 0, "rootfs", "umount", "--rm", mine)
	if fi, err := os.Stat(mine); err != nil || !fi.IsDir() {
		t.Errorf("umount removed the user's mount point: %v", err)
	}
	if _, err := os.Stat(filepath.Join(work, "default-data")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("commit or umount opened the default store: %v", err)
	}
}
