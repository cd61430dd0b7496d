package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgtool/imgtool/internal/testutil"
)

// quickBlock is one fenced sh block of the README's quick start.
type quickBlock struct {
	lines    []string
	asRoot   bool // the paragraph before it says it runs "as root"
	registry bool // in "## Registries": needs a registry at localhost:5000
}

// quickStart returns the fenced sh blocks of README.md's "Quick start"
// and "Registries" sections, in order; registry is true for the
// latter's. Any other fence there (```bash, ```console) fails the test
// rather than going unrun.
func quickStart(t *testing.T, readme string) []quickBlock {
	t.Helper()
	f, err := os.Open(readme)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var blocks []quickBlock
	var para strings.Builder // the prose since the last block
	inSection, inBlock, registry := false, false, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "## "):
			registry = line == "## Registries"
			inSection = line == "## Quick start" || registry
		case !inSection:
		case !inBlock && strings.HasPrefix(line, "```"):
			if line != "```sh" {
				t.Fatalf("%s: quick start has a %q block; write it as ```sh so this test runs it", readme, line)
			}
			inBlock = true
			blocks = append(blocks, quickBlock{asRoot: strings.Contains(para.String(), "as root"), registry: registry})
			para.Reset()
		case inBlock && line == "```":
			inBlock = false
		case inBlock:
			if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") {
				b := &blocks[len(blocks)-1]
				b.lines = append(b.lines, line)
			}
		case line == "":
			para.Reset()
		default:
			para.WriteString(line + " ")
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(blocks) < 5 {
		t.Fatalf("%s has %d sh blocks under \"## Quick start\" and \"## Registries\", want at least 5", readme, len(blocks))
	}
	for i, b := range blocks {
		if len(b.lines) == 0 {
			t.Fatalf("%s: quick-start block %d has no command", readme, i+1)
		}
	}
	return blocks
}

// TestReadmeQuickStart runs README.md's quick-start and registry blocks
// through bash,
// as a newcomer pastes them: one shell, stopping at the first failing
// line, with imgtool built from this checkout first on PATH. The only
// change to the text is where scratch files go: /tmp/ and /mnt/ become
// directories of the test, and localhost:5000 a real registry on a free
// port (the one line that needs the internet is left out). A block the
// README says runs "as root", and the registry block, run only as root
// (CI is root). Every line echoes a marker after it, and the
// last marker must appear.
func TestReadmeQuickStart(t *testing.T) {
	if testing.Short() {
		t.Skip("builds imgtool and runs the README's commands")
	}
	bash := testutil.NeedTool(t, "bash")
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	blocks := quickStart(t, filepath.Join(root, "README.md"))
	scratch := t.TempDir()
	bin := filepath.Join(scratch, "bin")
	build := exec.Command("go", "build", "-o", filepath.Join(bin, "imgtool"), "./cmd/imgtool")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	asRoot := os.Geteuid() == 0
	var lines []string
	n := 0
	var reg *testutil.Registry
	for i, b := range blocks {
		if b.asRoot && !asRoot || b.registry && !asRoot {
			// The registry block mounts and commits containers too.
			t.Logf("not root: skipping block %d (%d lines)", i+1, len(b.lines))
			continue
		}
		if b.registry && reg == nil {
			reg = testutil.StartRegistry(t, testutil.RegistryOptions{})
		}
		// Each line reports that it ran, so a line the script never
		// reaches is not taken as passed.
		for _, l := range b.lines {
			if b.registry {
				if strings.Contains(l, "needs the internet") {
					t.Logf("no internet here: skipping %q", l)
					continue
				}
				// The README's registry is localhost:5000; the test's
				// is on a free port.
				_, port, _ := strings.Cut(reg.Host, ":")
				l = strings.ReplaceAll(l, "localhost:5000", "localhost:"+port)
			}
			n++
			lines = append(lines, l, fmt.Sprintf("echo 'README line %d done'", n))
		}
	}
	script := strings.Join(lines, "\n")
	tmp, mnt := filepath.Join(scratch, "tmp")+"/", filepath.Join(scratch, "mnt")+"/"
	script = strings.ReplaceAll(strings.ReplaceAll(script, "/tmp/", tmp), "/mnt/", mnt)
	for _, d := range []string{tmp, mnt} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	prologue := "set -euo pipefail\n"
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
	if !strings.Contains(string(out), fmt.Sprintf("\nREADME line %d done\n", n)) {
		t.Fatalf("README quick start stopped before its last line (%d):\n%s", n, out)
	}
	t.Logf("%s", out)
}
