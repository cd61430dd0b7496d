package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgtool/imgtool/internal/testutil"
)

// quickStart returns the fenced sh blocks of README.md's "Quick start"
// section, in order, as one script.
func quickStart(t *testing.T, readme string) string {
	t.Helper()
	f, err := os.Open(readme)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var script strings.Builder
	inSection, inBlock := false, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "## "):
			inSection = line == "## Quick start"
		case inSection && line == "```sh":
			inBlock = true
		case inBlock && line == "```":
			inBlock = false
		case inBlock:
			script.WriteString(line + "\n")
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if script.Len() == 0 {
		t.Fatalf("%s has no sh blocks under \"## Quick start\"", readme)
	}
	return script.String()
}

// TestReadmeQuickStart runs README.md's quick-start blocks through bash,
// as a newcomer pastes them: one shell, stopping at the first failing
// line, with imgtool built from this checkout first on PATH. The only
// change to the text is where scratch files go: /tmp/ and /mnt/ become
// directories of the test. Lines that need root (sudo ...) run only as
// root, where sudo is the command itself.
func TestReadmeQuickStart(t *testing.T) {
	if testing.Short() {
		t.Skip("builds imgtool and runs the README's commands")
	}
	bash := testutil.NeedTool(t, "bash")
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	script := quickStart(t, filepath.Join(root, "README.md"))
	scratch := t.TempDir()
	bin := filepath.Join(scratch, "bin")
	build := exec.Command("go", "build", "-o", filepath.Join(bin, "imgtool"), "./cmd/imgtool")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	asRoot := os.Geteuid() == 0
	var lines []string
	for _, l := range strings.Split(script, "\n") {
		if strings.Contains(l, "sudo ") && !asRoot {
			t.Logf("not root: skipping %q", l)
			continue
		}
		lines = append(lines, l)
	}
	script = strings.Join(lines, "\n")
	tmp, mnt := filepath.Join(scratch, "tmp")+"/", filepath.Join(scratch, "mnt")+"/"
	script = strings.ReplaceAll(strings.ReplaceAll(script, "/tmp/", tmp), "/mnt/", mnt)
	for _, d := range []string{tmp, mnt} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	prologue := "set -euo pipefail\nsudo() { \"$@\"; }\n"
	var cleanup string
	if asRoot {
		// Leave no mount behind if a line after rootfs mount fails.
		cleanup = "trap 'for m in $(awk -v d=" + mnt + " \"index(\\$2, d) == 1 {print \\$2}\" /proc/self/mounts | sort -r); do umount -l \"$m\"; done' EXIT\n"
	}
	cmd := exec.Command(bash, "-x", "-c", prologue+cleanup+script)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"), "TMPDIR="+tmp,
		"XDG_DATA_HOME="+filepath.Join(scratch, "data")) // the layer store goes there
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("README quick start failed: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}
