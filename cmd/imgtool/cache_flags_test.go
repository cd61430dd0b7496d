package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/imgtool/imgtool/internal/testutil"
	"github.com/imgtool/imgtool/qcow2"
)

// TestConvertQemuFlags: -t, -n, -W, -m and -S as qemu-img takes them.
func TestConvertQemuFlags(t *testing.T) {
	dir := t.TempDir()
	src := fixturePath("chain/top.qcow2")
	want, _ := os.ReadFile(src + ".sha256")
	check := func(path string) {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		if hex.EncodeToString(sum[:]) != strings.TrimSpace(string(want)) {
			t.Errorf("%s: content differs from qemu-img's", path)
		}
	}
	for _, args := range [][]string{
		{"-t", "unsafe"}, {"-t", "writeback"}, {"-t", "none"}, {"-W"}, {"-m", "1"}, {"-m", "16", "-W", "-t", "unsafe"},
		{"-S", "0"}, {"-S", "512"}, {"-S", "64k"}, {"-S", "16M"},
	} {
		dst := filepath.Join(dir, "out.raw")
		a := append(append([]string{"convert", "-O", "raw"}, args...), src, dst)
		if code, _, errs := runCmd(a...); code != 0 {
			t.Fatalf("%v: exit %d %s", args, code, errs)
		}
		check(dst)
		os.Remove(dst)
	}
	for _, c := range []struct {
		args []string
		text string
	}{
		{[]string{"-m", "0"}, "between 1 and 16"},
		{[]string{"-m", "17"}, "between 1 and 16"},
		{[]string{"-t", "bogus"}, "invalid cache option"},
		{[]string{"-S", "1000"}, "Valid sizes are multiples of 512 up to 16777216"},
		{[]string{"-S", "17M"}, "Valid sizes are multiples of 512 up to 16777216"},
		{[]string{"-S", "1.5"}, "You may use k, M, G, T, P or E suffixes"},
	} {
		a := append(append([]string{"convert", "-O", "raw"}, c.args...), src, filepath.Join(dir, "x"))
		code, _, errs := runCmd(a...)
		if code == 0 || !strings.Contains(errs, c.text) {
			t.Errorf("%v: exit %d %q, want an error saying %q", c.args, code, errs, c.text)
		}
	}
	// -n: into an existing raw file of the same size, which stays the
	// same file; a missing target is an error.
	dst := filepath.Join(dir, "existing.raw")
	if code, _, errs := runCmd("convert", "-O", "raw", src, dst); code != 0 {
		t.Fatal(errs)
	}
	fi, _ := os.Stat(dst)
	if err := os.WriteFile(dst, make([]byte, fi.Size()), 0o644); err != nil {
		t.Fatal(err)
	}
	before, _ := os.Stat(dst)
	if code, _, errs := runCmd("convert", "-n", "-O", "raw", src, dst); code != 0 {
		t.Fatalf("-n: exit %d %s", code, errs)
	}
	after, _ := os.Stat(dst)
	if !os.SameFile(before, after) {
		t.Error("-n replaced the target")
	}
	check(dst)
	if code, _, errs := runCmd("convert", "-n", "-O", "raw", src, filepath.Join(dir, "missing")); code == 0 || !strings.Contains(errs, "no such file") {
		t.Errorf("-n onto a missing target: exit %d %q", code, errs)
	}
}

// TestCommitRebaseQemuFlags: commit -t, rebase -t and rebase -f.
func TestCommitRebaseQemuFlags(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	top := filepath.Join(dir, "top.qcow2")
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "1M")
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top)
	testutil.Run(t, "qemu-io", "-c", "write -P 0x44 0 64k", top)
	if code, _, errs := runCmd("commit", "-t", "bogus", top); code == 0 || !strings.Contains(errs, "invalid cache option") {
		t.Errorf("commit -t bogus: exit %d %q", code, errs)
	}
	if code, _, errs := runCmd("commit", "-q", "-t", "unsafe", top); code != 0 {
		t.Fatalf("commit -t unsafe: exit %d %s", code, errs)
	}
	if out, err := exec.Command("qemu-io", "-c", "read -P 0x44 0 64k", base).CombinedOutput(); err != nil || strings.Contains(string(out), "failed") {
		t.Errorf("base after commit -t unsafe: %s", out)
	}
	if code, _, errs := runCmd("rebase", "-f", "raw", "-b", "", top); code == 0 || !strings.Contains(errs, "raw") {
		t.Errorf("rebase -f raw: exit %d %q", code, errs)
	}
	if code, _, errs := runCmd("rebase", "-f", "vdi", "-b", "", top); code == 0 || !strings.Contains(errs, "unknown format") {
		t.Errorf("rebase -f vdi: exit %d %q", code, errs)
	}
	if code, _, errs := runCmd("rebase", "-f", "qcow2", "-t", "none", "-b", "", top); code != 0 {
		t.Fatalf("rebase -f qcow2 -t none: exit %d %s", code, errs)
	}
	testutil.Run(t, "qemu-img", "check", "-q", top)
	if out, err := exec.Command("qemu-img", "info", top).CombinedOutput(); err != nil || strings.Contains(string(out), "backing file") {
		t.Errorf("top still has a backing file after rebase -b '': %s", out)
	}
	if out, err := exec.Command("qemu-io", "-c", "read -P 0x44 0 64k", top).CombinedOutput(); err != nil || strings.Contains(string(out), "failed") {
		t.Errorf("top after rebase: %s", out)
	}
}

// TestNoDirectIOHint: the library's O_DIRECT refusal says what failed;
// the command line adds the flag that avoids it, once.
func TestNoDirectIOHint(t *testing.T) {
	var stderr bytes.Buffer
	err := fmt.Errorf("%w: Could not open 'out.qcow2': invalid argument", qcow2.ErrNoDirectIO)
	if code := exitCode("convert", err, &stderr); code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	want := "imgtool convert: qcow2: the filesystem does not support O_DIRECT (cache mode none): Could not open 'out.qcow2': invalid argument\n" +
		"Use -t writeback to write through the page cache.\n"
	if d := cmp.Diff(want, stderr.String()); d != "" {
		t.Errorf("stderr (-want +got):\n%s", d)
	}
}
