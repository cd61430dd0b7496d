package main

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestConvertRaw(t *testing.T) {
	dst := filepath.Join(t.TempDir(), "out.raw")
	code, out, errs := runCmd("convert", "-O", "raw", "-p", fixturePath("chain/top.qcow2"), dst)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if out != "" {
		t.Errorf("convert printed %q on stdout", out)
	}
	b, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	want, _ := os.ReadFile(fixturePath("chain/top.qcow2") + ".sha256")
	if hex.EncodeToString(sum[:]) != strings.TrimSpace(string(want)) {
		t.Error("converted content differs from qemu-img's")
	}
	// -O defaults to raw, like qemu-img.
	if code, _, errs := runCmd("convert", fixturePath("qcow2/zlib.qcow2"), dst); code != 0 {
		t.Errorf("convert without -O: exit %d %s", code, errs)
	}
}

func TestConvertErrors(t *testing.T) {
	dir := t.TempDir()
	dst := filepath.Join(dir, "out")
	for _, c := range []struct {
		args []string
		text string
	}{
		{[]string{"convert", "-O", "raw", "-c", fixturePath("chain/top.qcow2"), dst}, "compressed raw"},
		{[]string{"convert", "-O", "qcow2", "-o", "cluster_size=3k", fixturePath("chain/top.qcow2"), dst}, "cluster size"},
		{[]string{"convert", "-O", "qcow2", "-B", "chain/base.qcow2", "--target-is-zero", fixturePath("chain/top.qcow2"), dst}, "--target-is-zero"},
		{[]string{"convert", "-O", "vdi", fixturePath("chain/top.qcow2"), dst}, "unknown output format"},
		{[]string{"convert", fixturePath("chain/top.qcow2")}, "expected SRC and DST"},
		{[]string{"convert", filepath.Join(dir, "missing"), dst}, "no such file"},
		{[]string{"convert", fixturePath("chain/top.qcow2"), filepath.Join(dir, "nodir", "out")}, "no such file"},
	} {
		code, _, errs := runCmd(c.args...)
		if code != 1 || !strings.Contains(errs, c.text) {
			t.Errorf("%v: exit %d, stderr %q; want 1 and %q", c.args, code, errs, c.text)
		}
	}
	if _, err := os.Stat(dst); err == nil {
		t.Error("a failed convert created the destination")
	}
}
