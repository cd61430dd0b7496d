package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestSharedArgErrors pins the messages and their order of the argument
// checks that parseImageArg, storeImageFlags.parse, layoutCommand, openChainArgs
// and openChainFromArgs share between commands: with two mistakes the
// first check's message wins.
func TestSharedArgErrors(t *testing.T) {
	st := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string // the whole of stderr; exit code is always 1
	}{
		{[]string{"image", "unpack", "--platform", "linux", "d:bad tag", "x"},
			"imgtool image: image reference \"d:bad tag\": layers: invalid tag: \"bad tag\" has character ' '\nRun 'imgtool help image unpack' for usage.\n"},
		{[]string{"image", "unpack", "--platform", "linux", "d:v1", "x"},
			"imgtool image: --platform \"linux\": want OS/ARCH[/VARIANT]\nRun 'imgtool help image unpack' for usage.\n"},
		{[]string{"image", "unpack", "d:v1"},
			"imgtool image: want DIR[:TAG] and TARGET, got 1 arguments\nRun 'imgtool help image unpack' for usage.\n"},
		{[]string{"image", "ls"},
			"imgtool image: want one DIR argument, got 0\nRun 'imgtool help image ls' for usage.\n"},
		{[]string{"image", "ls", "a", "b"},
			"imgtool image: want one DIR argument, got 2\nRun 'imgtool help image ls' for usage.\n"},
		{[]string{"image", "verify"},
			"imgtool image: want one DIR argument, got 0\nRun 'imgtool help image verify' for usage.\n"},
		{[]string{"rootfs", "mount", "--store", st, "--platform", "linux/", ":v1", "x"},
			"imgtool rootfs: layers: image reference \":v1\" has no directory\nRun 'imgtool help rootfs mount' for usage.\n"},
		{[]string{"rootfs", "mount", "--store", st, "--platform", "linux/", "d:v1", "x"},
			"imgtool rootfs: --platform \"linux/\": want OS/ARCH[/VARIANT]\nRun 'imgtool help rootfs mount' for usage.\n"},
		{[]string{"rootfs", "mount", "--store", st, "d:v1"},
			"imgtool rootfs: want DIR:TAG (or docker://REF) and TARGET, got 1 arguments\nRun 'imgtool help rootfs mount' for usage.\n"},
		{[]string{"store", "unpack", "--store", st, "--platform", "a/b/c/d", "d:"},
			"imgtool store: image reference \"d:\": layers: invalid tag: empty\nRun 'imgtool help store unpack' for usage.\n"},
		{[]string{"store", "unpack", "--store", st, "--platform", "a/b/c/d", "d"},
			"imgtool store: --platform \"a/b/c/d\": want OS/ARCH[/VARIANT]\nRun 'imgtool help store unpack' for usage.\n"},
		{[]string{"store", "unpack", "--store", st},
			"imgtool store: want one DIR:TAG (or docker://REF) argument, got 0\nRun 'imgtool help store unpack' for usage.\n"},
		{[]string{"chain", "add", "d"},
			"imgtool chain: expected DIR NAME, got 1 arguments\nRun 'imgtool help chain add' for usage.\n"},
		{[]string{"chain", "add", "d", "n"},
			"imgtool chain: --from PARENT is required\nRun 'imgtool help chain add' for usage.\n"},
		{[]string{"chain", "vm", "d", "n"},
			"imgtool chain: --from LEVEL is required\nRun 'imgtool help chain vm' for usage.\n"},
		{[]string{"chain", "vm", "d", "n", "x"},
			"imgtool chain: expected DIR NAME, got 3 arguments\nRun 'imgtool help chain vm' for usage.\n"},
		{[]string{"chain", "rm", "d"},
			"imgtool chain: expected DIR NAME, got 1 arguments\nRun 'imgtool help chain rm' for usage.\n"},
		{[]string{"chain", "squash", "d", "n", "m"},
			"imgtool chain: expected DIR NAME, got 3 arguments\nRun 'imgtool help chain squash' for usage.\n"},
	} {
		code, out, errs := runCmd(tc.args...)
		if code != 1 || out != "" || errs != tc.want {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit 1, no stdout, stderr %q", tc.args, code, out, errs, tc.want)
		}
	}
}

// TestOpenLayoutArgMissing checks, for layoutCommand, that a DIR that is not a layout is
// reported with its path and without the usage hint.
func TestOpenLayoutArgMissing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "missing")
	for _, sub := range []string{"ls", "verify"} {
		code, _, errs := runCmd("image", sub, dir)
		if code != 1 || !strings.Contains(errs, dir+"/oci-layout: layers: not an OCI image layout") || strings.Contains(errs, "for usage") {
			t.Errorf("image %s %s: exit %d, stderr %q", sub, dir, code, errs)
		}
	}
}
