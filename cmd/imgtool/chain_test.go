package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgtool/imgtool/internal/testutil"
)

// chainCmd runs imgtool with args and fails the test unless it exits
// with want.
func chainCmd(t *testing.T, want int, args ...string) string {
	t.Helper()
	var out, errb bytes.Buffer
	if code := run(args, &out, &errb); code != want {
		t.Fatalf("imgtool %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, want, out.String(), errb.String())
	}
	return out.String() + errb.String()
}

func TestChainCLI(t *testing.T) {
	tmp := t.TempDir()
	raw := filepath.Join(tmp, "base.raw")
	f, err := os.Create(raw)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(16 << 20)
	f.WriteAt(bytes.Repeat([]byte{0xBA}, 1<<20), 0)
	f.Close()
	// The standalone "db" disk: the base plus 128 KiB of other data.
	disk := filepath.Join(tmp, "db.raw")
	b, _ := os.ReadFile(raw)
	copy(b[4<<20:], bytes.Repeat([]byte{0xDB}, 128<<10))
	if err := os.WriteFile(disk, b, 0o644); err != nil {
		t.Fatal(err)
	}

	dir := filepath.Join(tmp, "chain")
	chainCmd(t, 0, "chain", "init", dir, "--base", raw, "-p")
	chainCmd(t, 0, "chain", "add", dir, "db", "--from", "base", "--import", disk, "-p")
	chainCmd(t, 0, "chain", "add", dir, "web", "--from", "db")
	for i := range 10 {
		chainCmd(t, 0, "chain", "vm", dir, fmt.Sprintf("vm%d", i), "--from", "web")
	}

	out := chainCmd(t, 0, "chain", "tree", "--output", "json", dir)
	var tree []struct {
		Name         string   `json:"name"`
		File         string   `json:"file"`
		Parent       *string  `json:"parent"`
		Children     []string `json:"children"`
		VirtualSize  int64    `json:"virtual-size"`
		PrivateBytes int64    `json:"private-bytes"`
		SharedBytes  int64    `json:"shared-bytes"`
		ReadOnly     bool     `json:"read-only"`
		Depth        int      `json:"depth"`
	}
	if err := json.Unmarshal([]byte(out), &tree); err != nil {
		t.Fatalf("tree json: %v\n%s", err, out)
	}
	if len(tree) != 13 {
		t.Fatalf("tree lists %d images, want 13\n%s", len(tree), out)
	}
	parents := map[string]string{}
	for _, e := range tree {
		p := "<nil>"
		if e.Parent != nil {
			p = *e.Parent
		}
		parents[e.Name] = p
		if e.File != e.Name+".qcow2" || e.VirtualSize != 16<<20 || e.Children == nil {
			t.Errorf("tree entry %+v", e)
		}
	}
	if parents["base"] != "<nil>" || parents["db"] != "base" || parents["web"] != "db" || parents["vm7"] != "web" {
		t.Errorf("parents %v", parents)
	}
	if tree[1].Name != "db" || tree[1].PrivateBytes != 128<<10 || tree[1].SharedBytes != 1<<20 || !tree[1].ReadOnly || tree[1].Depth != 1 {
		t.Errorf("db entry %+v", tree[1])
	}

	human := chainCmd(t, 0, "chain", "tree", dir)
	for _, want := range []string{"13 images", "base ", "└─ db ", "   └─ web ", "      ├─ vm0 ", "      └─ vm9 ", " ro\n", " rw\n"} {
		if !strings.Contains(human, want) {
			t.Errorf("human tree lacks %q:\n%s", want, human)
		}
	}

	// Refusals, with a clear error and exit status 1.
	for _, args := range [][]string{
		{"chain", "rm", dir, "web"},
		{"chain", "rm", dir, "db", "--force"},
		{"chain", "vm", dir, "x", "--from", "vm1"},
		{"chain", "vm", dir, "../x", "--from", "web"},
		{"chain", "add", dir, "vm1", "--from", "web"},
		{"chain", "squash", dir, "vm1"},
		{"chain", "squash", dir, "base"},
		{"chain", "init", dir, "--base", raw},
		{"chain", "tree", tmp},
	} {
		msg := chainCmd(t, 1, args...)
		if !strings.Contains(msg, "imgtool chain:") {
			t.Errorf("%v: error lacks the command name: %s", args, msg)
		}
	}
	for _, args := range [][]string{
		{"chain"}, {"chain", "nope"}, {"chain", "add", dir, "x"}, {"chain", "init", dir},
		{"chain", "tree", "--output", "xml", dir},
	} {
		chainCmd(t, 1, args...)
	}
	chainCmd(t, 0, "chain", "--help")
	chainCmd(t, 0, "chain", "rm", "--help")

	// info --backing-chain shows the whole chain from a VM.
	info := chainCmd(t, 0, "info", "--backing-chain", filepath.Join(dir, "vm3.qcow2"))
	if strings.Count(info, "image: ") != 4 || !strings.Contains(info, "backing file: web.qcow2") {
		t.Errorf("info --backing-chain:\n%s", info)
	}

	// rm a VM; squash web (db's only child) into db; tree has 11 images.
	chainCmd(t, 0, "chain", "rm", dir, "vm9")
	chainCmd(t, 0, "chain", "squash", dir, "web", "-p")
	out = chainCmd(t, 0, "chain", "tree", "--output", "json", dir)
	tree = nil
	if err := json.Unmarshal([]byte(out), &tree); err != nil || len(tree) != 11 {
		t.Fatalf("tree after squash: %v\n%s", err, out)
	}
	for _, e := range tree {
		if strings.HasPrefix(e.Name, "vm") && (e.Parent == nil || *e.Parent != "db") {
			t.Errorf("%s after squash: parent %v", e.Name, e.Parent)
		}
	}
	t.Run("qemu-img", func(t *testing.T) {
		testutil.NeedTool(t, "qemu-img")
		for _, e := range tree {
			testutil.Run(t, "qemu-img", "check", "-q", filepath.Join(dir, e.File))
		}
		testutil.Run(t, "qemu-img", "compare", "-q", disk, filepath.Join(dir, "vm0.qcow2"))
	})
}
