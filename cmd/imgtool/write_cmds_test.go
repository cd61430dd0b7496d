package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgtool/imgtool/internal/testutil"
)

func wrCmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestCreateWriteCheckCLI(t *testing.T) {
	testutil.NeedTool(t, "qemu-img")
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	if code, _, e := wrCmd(t, "create", "--cluster-size", "4K", "-o", "compat=1.1,lazy_refcounts=on", base, "2M"); code != 0 {
		t.Fatalf("create: %d %s", code, e)
	}
	if code, _, _ := wrCmd(t, "create", base, "2M"); code == 0 {
		t.Fatal("create over an existing file succeeded")
	}
	in := filepath.Join(dir, "in")
	os.WriteFile(in, bytes.Repeat([]byte("abc"), 10000), 0o644)
	if code, _, e := wrCmd(t, "write", base, "1000", in); code != 0 {
		t.Fatalf("write: %d %s", code, e)
	}
	top := filepath.Join(dir, "top.qcow2")
	if code, _, e := wrCmd(t, "create", "-b", "base.qcow2", "-F", "qcow2", "--extended-l2", top); code != 0 {
		t.Fatalf("create overlay: %d %s", code, e)
	}
	if code, _, e := wrCmd(t, "write", "--zero", top, "1024", "512"); code != 0 {
		t.Fatalf("write --zero: %d %s", code, e)
	}
	if code, _, e := wrCmd(t, "write", "--discard", top, "0", "2M"); code != 0 {
		t.Fatalf("write --discard: %d %s", code, e)
	}
	code, out, e := wrCmd(t, "check", "--output", "json", top)
	if code != 0 {
		t.Fatalf("check: %d %s %s", code, out, e)
	}
	var res map[string]any
	if err := json.Unmarshal([]byte(out), &res); err != nil || res["check-errors"] != float64(0) {
		t.Fatalf("check json: %v %s", err, out)
	}
	testutil.Run(t, "qemu-img", "check", top)
	if code, _, e := wrCmd(t, "snapshot", "-c", "s1", base); code != 0 {
		t.Fatalf("snapshot -c: %d %s", code, e)
	}
	if code, out, _ := wrCmd(t, "snapshot", "-l", base); code != 0 || !strings.Contains(out, "s1") {
		t.Fatalf("snapshot -l: %d %s", code, out)
	}
	if code, _, e := wrCmd(t, "snapshot", "-d", "s1", base); code != 0 {
		t.Fatalf("snapshot -d: %d %s", code, e)
	}
	if code, _, e := wrCmd(t, "resize", base, "+1M"); code != 0 {
		t.Fatalf("resize: %d %s", code, e)
	}
	if code, _, e := wrCmd(t, "resize", "--shrink", base, "-512K"); code != 0 {
		t.Fatalf("resize --shrink: %d %s", code, e)
	}
	testutil.Run(t, "qemu-img", "check", base)
	if out := string(testutil.Run(t, "qemu-img", "info", base)); !strings.Contains(out, "virtual size: 2.5 MiB") {
		t.Fatalf("qemu-img info:\n%s", out)
	}
	raw := filepath.Join(dir, "r.raw")
	if code, _, e := wrCmd(t, "create", "-f", "raw", raw, "1M"); code != 0 {
		t.Fatalf("create raw: %d %s", code, e)
	}
	if code, _, _ := wrCmd(t, "check", raw); code != 63 {
		t.Fatalf("check raw: exit %d, want 63", code)
	}
}

func TestCheckCLIExitCodes(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	p := filepath.Join(dir, "l.qcow2")
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", p, "1M")
	testutil.Run(t, "qemu-io", "-f", "qcow2", "-c", "write 0 64k", p)
	// Leak: count the cluster after the end of the file.
	b, _ := os.ReadFile(p)
	cs := 4096
	b = append(b, make([]byte, (len(b)+cs-1)/cs*cs+cs-len(b))...)
	c := len(b)/cs - 1
	// refcount table at cluster 1 (qemu-img's layout), block 0 offset in it
	blk := int(uint64(b[cs])<<56 | uint64(b[cs+1])<<48 | uint64(b[cs+2])<<40 | uint64(b[cs+3])<<32 | uint64(b[cs+4])<<24 | uint64(b[cs+5])<<16 | uint64(b[cs+6])<<8 | uint64(b[cs+7]))
	b[blk+2*c+1] = 1
	os.WriteFile(p, b, 0o644)
	if code, _, _ := wrCmd(t, "check", p); code != 3 {
		t.Fatalf("check leak: exit %d, want 3", code)
	}
	if code, out, _ := wrCmd(t, "check", "-r", "leaks", p); code != 0 || !strings.Contains(out, "1 leaked clusters") {
		t.Fatalf("check -r leaks: exit %d\n%s", code, out)
	}
	testutil.Run(t, "qemu-img", "check", p)
	if code, _, _ := wrCmd(t, "check", filepath.Join(dir, "missing")); code != 1 {
		t.Fatalf("check of a missing file: exit %d, want 1", code)
	}
}

func TestWriteCLILockedByQemuIO(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	p := filepath.Join(dir, "l.qcow2")
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", p, "1M")
	in := filepath.Join(dir, "in")
	os.WriteFile(in, []byte("data"), 0o644)
	done := testutil.HoldWithQemuIO(t, p)
	defer done()
	code, _, e := wrCmd(t, "write", p, "0", in)
	if code == 0 || !strings.Contains(e, "qemu-io") {
		t.Fatalf("imgtool write while qemu-io holds the image: exit %d, stderr %q", code, e)
	}
}

// TestWriteCLIRaw: imgtool write works on a raw image, as qemu-io does;
// qemu-io reads the data back, and a write past the end fails.
func TestWriteCLIRaw(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	p := filepath.Join(dir, "r.raw")
	if code, _, e := wrCmd(t, "create", "-f", "raw", p, "1M"); code != 0 {
		t.Fatalf("create raw: %d %s", code, e)
	}
	testutil.Run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x77 0 1M", p)
	in := filepath.Join(dir, "in")
	os.WriteFile(in, bytes.Repeat([]byte{0xab}, 10001), 0o644)
	if code, _, e := wrCmd(t, "write", p, "1001", in); code != 0 {
		t.Fatalf("write: %d %s", code, e)
	}
	if code, _, e := wrCmd(t, "write", "--zero", p, "64K", "128K"); code != 0 {
		t.Fatalf("write --zero: %d %s", code, e)
	}
	if code, _, e := wrCmd(t, "write", "--discard", p, "512K", "64K"); code != 0 {
		t.Fatalf("write --discard: %d %s", code, e)
	}
	testutil.Run(t, "qemu-io", "-f", "raw",
		"-c", "read -P 0x77 0 1001",
		"-c", "read -P 0xab 1001 10001",
		"-c", "read -P 0x77 11002 54534",
		"-c", "read -P 0 64k 128k",
		"-c", "read -P 0x77 192k 320k",
		"-c", "read -P 0x77 576k 448k", p)
	if code, _, e := wrCmd(t, "write", p, "1048570", in); code == 0 || !strings.Contains(e, "outside the image") {
		t.Fatalf("write past the end: exit %d, stderr %q", code, e)
	}
	if fi, _ := os.Stat(p); fi.Size() != 1<<20 {
		t.Fatalf("raw image grew to %d bytes", fi.Size())
	}
}
