package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBackingRootCommitRebase: commit and rebase with --backing-root
// refuse an image whose backing name climbs out of the root, and rebase
// refuses a new backing file outside it, before anything is read or
// written: the outside file and the image stay as they were.
func TestBackingRootCommitRebase(t *testing.T) {
	outside, root := t.TempDir(), t.TempDir()
	secret := filepath.Join(outside, "secret.raw")
	want := bytes.Repeat([]byte("s"), 64<<10)
	if err := os.WriteFile(secret, want, 0o600); err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(root, secret)
	if err != nil {
		t.Fatal(err)
	}
	evil := filepath.Join(root, "evil.qcow2")
	if code, _, stderr := runCmd("create", "-q", "-f", "qcow2", "-b", rel, "-F", "raw", evil, "64k"); code != 0 {
		t.Fatal(stderr)
	}
	good := filepath.Join(root, "good.qcow2")
	if code, _, stderr := runCmd("create", "-q", "-f", "qcow2", good, "64k"); code != 0 {
		t.Fatal(stderr)
	}
	before, err := os.ReadFile(evil)
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"commit", "--backing-root", root, evil},
		{"commit", "-b", secret, "--backing-root", root, evil},
		{"rebase", "--backing-root", root, "-b", "", evil},
		{"rebase", "--backing-root", root, "-b", secret, "-F", "raw", good},
		{"rebase", "-u", "--backing-root", root, "-b", rel, "-F", "raw", good},
	} {
		code, _, stderr := runCmd(args...)
		if code == 0 || !strings.Contains(stderr, "outside the backing root") {
			t.Errorf("%v: exit %d, %q; want a refusal", args, code, stderr)
		}
	}
	if got, _ := os.ReadFile(secret); !bytes.Equal(got, want) {
		t.Error("the file outside the root changed")
	}
	if got, _ := os.ReadFile(evil); !bytes.Equal(got, before) {
		t.Error("the refused image changed")
	}
	// Inside the root both work.
	base := filepath.Join(root, "base.raw")
	if err := os.WriteFile(base, make([]byte, 64<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := runCmd("rebase", "--backing-root", root, "-b", "base.raw", "-F", "raw", good); code != 0 {
		t.Fatalf("rebase inside the root: %s", stderr)
	}
	if code, _, stderr := runCmd("commit", "-q", "--backing-root", root, good); code != 0 {
		t.Fatalf("commit inside the root: %s", stderr)
	}
}
