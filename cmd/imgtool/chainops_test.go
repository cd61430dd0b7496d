package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgtool/imgtool/internal/testutil"
)

// copyChainFixture copies testdata/chain into a temporary directory.
func copyChainFixture(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, n := range []string{"base.qcow2", "mid.qcow2", "top.qcow2"} {
		b, err := os.ReadFile(fixturePath("chain/" + n))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// chainFixtureWithRaw copies testdata/chain as copyChainFixture does and
// converts its top to a raw file, what the chain reads before a change.
// It returns the directory, the top image and the raw file.
func chainFixtureWithRaw(t *testing.T) (dir, top, want string) {
	t.Helper()
	dir = copyChainFixture(t)
	top = filepath.Join(dir, "top.qcow2")
	want = filepath.Join(t.TempDir(), "want.raw")
	if code, _, errs := runCmd("convert", top, want); code != 0 {
		t.Fatal(errs)
	}
	return dir, top, want
}

func TestConvertQcow2CLI(t *testing.T) {
	dir := t.TempDir()
	src := fixturePath("chain/top.qcow2")
	for i, args := range [][]string{
		{"-O", "qcow2"},
		{"-O", "qcow2", "-c", "-o", "compression_type=zstd,cluster_size=4k", "-p"},
		{"-O", "qcow2", "-c", "-S", "0"},
		{"-O", "qcow2", "-o", "compat=0.10", "--target-is-zero"},
	} {
		dst := filepath.Join(dir, "out"+string(rune('a'+i))+".qcow2")
		code, _, errs := runCmd(append(append([]string{"convert"}, args...), src, dst)...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errs)
		}
		if code, out, errs := runCmd("compare", src, dst); code != 0 || !strings.Contains(out, "Images are identical.") {
			t.Errorf("%v: compare exit %d %q %q", args, code, out, errs)
		}
		if _, err := testutil.Exec("qemu-img", "--version"); err == nil {
			if out, err := testutil.Exec("qemu-img", "check", "-U", dst); err != nil {
				t.Errorf("%v: qemu-img check: %v\n%s", args, err, out)
			}
		}
	}
	// -B: an overlay of the chain's base holding only what differs.
	chain := copyChainFixture(t)
	dst := filepath.Join(chain, "delta.qcow2")
	if code, _, errs := runCmd("convert", "-O", "qcow2", "-B", "base.qcow2", "-F", "qcow2", filepath.Join(chain, "top.qcow2"), dst); code != 0 {
		t.Fatalf("-B: exit %d: %s", code, errs)
	}
	if code, out, _ := runCmd("compare", filepath.Join(chain, "top.qcow2"), dst); code != 0 {
		t.Errorf("-B output differs: %s", out)
	}
}

func TestCompareCLI(t *testing.T) {
	top, mid := fixturePath("chain/top.qcow2"), fixturePath("chain/mid.qcow2")
	if code, out, _ := runCmd("compare", top, top); code != 0 || out != "Images are identical.\n" {
		t.Errorf("identical: exit %d %q", code, out)
	}
	code, out, _ := runCmd("compare", "-p", top, mid)
	if code != 1 || !strings.Contains(out, "Content mismatch at offset ") {
		t.Errorf("different: exit %d %q", code, out)
	}
	if code, out, _ := runCmd("compare", "-q", top, mid); code != 1 || out != "" {
		t.Errorf("-q: exit %d %q", code, out)
	}
	if code, _, errs := runCmd("compare", top, filepath.Join(t.TempDir(), "missing")); code != 2 || errs == "" {
		t.Errorf("missing file: exit %d %q", code, errs)
	}
	if code, _, _ := runCmd("compare", top); code != 2 {
		t.Errorf("one argument: exit %d, want 2", code)
	}
}

func TestCommitCLI(t *testing.T) {
	dir, top, want := chainFixtureWithRaw(t)
	code, out, errs := runCmd("commit", "-p", top)
	if code != 0 || out != "Image committed.\n" {
		t.Fatalf("exit %d %q %q", code, out, errs)
	}
	for _, p := range []string{top, filepath.Join(dir, "mid.qcow2")} {
		if code, out, _ := runCmd("compare", p, want); code != 0 {
			t.Errorf("%s after commit: %s", p, out)
		}
		if _, err := testutil.Exec("qemu-img", "--version"); err == nil {
			// mid.qcow2 has an internal snapshot and had to grow.
			if out, err := testutil.Exec("qemu-img", "check", "-U", p); err != nil {
				t.Errorf("qemu-img check %s: %v\n%s", p, err, out)
			}
		}
	}
	// -b names the base as the chain stores it (relative to FILE's
	// directory); it implies -d.
	if code, _, errs := runCmd("commit", "-q", "-b", "base.qcow2", top); code != 0 {
		t.Fatalf("commit -b: exit %d %s", code, errs)
	}
	if code, out, _ := runCmd("compare", filepath.Join(dir, "base.qcow2"), want); code != 0 {
		t.Errorf("base after commit -b: %s", out)
	}
	if code, _, errs := runCmd("commit", filepath.Join(dir, "base.qcow2")); code != 1 || !strings.Contains(errs, "no backing file") {
		t.Errorf("commit of a base: exit %d %q", code, errs)
	}
}

func TestRebaseCLI(t *testing.T) {
	_, top, want := chainFixtureWithRaw(t)
	if code, _, errs := runCmd("rebase", top); code != 1 || !strings.Contains(errs, "-b NEW is required") {
		t.Errorf("without -b: exit %d %q", code, errs)
	}
	if code, _, errs := runCmd("rebase", "-p", "-b", "base.qcow2", "-F", "qcow2", top); code != 0 {
		t.Fatalf("rebase: exit %d %s", code, errs)
	}
	if code, out, _ := runCmd("compare", top, want); code != 0 {
		t.Errorf("after rebase: %s", out)
	}
	if code, _, errs := runCmd("rebase", "-b", "", top); code != 0 {
		t.Fatalf("flatten: exit %d %s", code, errs)
	}
	if code, out, _ := runCmd("info", "--output", "json", top); code != 0 || strings.Contains(out, "backing-filename") {
		t.Errorf("flattened image still has a backing file: %s", out)
	}
	if code, out, _ := runCmd("compare", top, want); code != 0 {
		t.Errorf("after flatten: %s", out)
	}
	if code, _, errs := runCmd("rebase", "-u", "-b", "mid.qcow2", "-F", "qcow2", top); code != 0 {
		t.Fatalf("-u: exit %d %s", code, errs)
	}
}

func TestMeasureCLI(t *testing.T) {
	code, out, errs := runCmd("measure", "--size", "1G", "-O", "qcow2")
	if code != 0 || out != "required size: 393216\nfully allocated size: 1074135040\n" {
		t.Errorf("exit %d %q %q", code, out, errs)
	}
	code, out, _ = runCmd("measure", "-O", "qcow2", "--output", "json", fixturePath("chain/top.qcow2"))
	if code != 0 || !strings.HasPrefix(out, "{\n    \"bitmaps\": 0,\n    \"required\": ") {
		t.Errorf("json: exit %d %q", code, out)
	}
	if _, err := testutil.Exec("qemu-img", "--version"); err == nil {
		want, _ := testutil.Exec("qemu-img", "measure", "-O", "qcow2", "--output", "json", fixturePath("chain/top.qcow2"))
		if out != string(want) {
			t.Errorf("got %s, qemu-img says %s", out, want)
		}
	}
	if code, _, _ := runCmd("measure", "--size", "1G", fixturePath("chain/top.qcow2")); code != 1 {
		t.Errorf("--size and SRC: exit %d", code)
	}
}
