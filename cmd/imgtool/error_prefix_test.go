package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestErrorPrefixOnce: a failing command says each prefix once, however
// many layers the error passed (issue 15: "qcow2: convert: qcow2:
// victim.qcow2 …" and a 64-deep chain error nested 64 times), and names
// the file it is about.
func TestErrorPrefixOnce(t *testing.T) {
	dir := t.TempDir()
	src := fixturePath("chain/top.qcow2")
	victim := filepath.Join(dir, "victim.qcow2")
	if err := os.WriteFile(victim, []byte("not an image"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A 70-deep chain: more than the 64 backing files allowed.
	prev := filepath.Join(dir, "l0.qcow2")
	if code, _, errs := runCmd("create", "-q", "-f", "qcow2", prev, "1M"); code != 0 {
		t.Fatal(errs)
	}
	for i := 1; i <= 70; i++ {
		p := filepath.Join(dir, fmt.Sprintf("l%d.qcow2", i))
		if code, _, errs := runCmd("create", "-q", "-f", "qcow2", "-b", filepath.Base(prev), "-F", "qcow2", p); code != 0 {
			t.Fatal(errs)
		}
		prev = p
	}
	for _, c := range []struct {
		args  []string
		names string
	}{
		{[]string{"convert", "-n", "-O", "qcow2", src, victim}, victim},
		{[]string{"convert", "-f", "qcow2", "-O", "qcow2", victim, filepath.Join(dir, "out.qcow2")}, victim},
		{[]string{"convert", "-O", "qcow2", src, filepath.Join(dir, "nodir", "out.qcow2")}, filepath.Join(dir, "nodir")},
		{[]string{"convert", "-O", "qcow2", src, filepath.Join(dir, "newdir") + "/"}, filepath.Join(dir, "newdir")},
		{[]string{"info", "--backing-chain", prev}, prev},
		{[]string{"map", prev}, prev},
		{[]string{"convert", "-O", "raw", prev, filepath.Join(dir, "out.raw")}, prev},
	} {
		code, _, errs := runCmd(c.args...)
		if code != 1 {
			t.Errorf("%q: exit %d, want 1", c.args, code)
		}
		// Prefixes follow ": " (a file name like l70.qcow2: does not).
		for _, p := range []string{": qcow2:", ": atomicfile:", "backing file of", "too deep"} {
			if n := strings.Count(errs, p); n > 1 {
				t.Errorf("%q: %q said %d times: %s", c.args, p, n, errs)
			}
		}
		if !strings.Contains(errs, c.names) {
			t.Errorf("%q: %q does not name %s", c.args, errs, c.names)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "newdir")); !os.IsNotExist(err) {
		t.Errorf("convert to newdir/ made newdir: %v", err)
	}
}
