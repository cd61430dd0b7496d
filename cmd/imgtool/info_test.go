package main

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/imgtool/imgtool/internal/testutil"
)

func fixturePath(name string) string {
	return filepath.Join("..", "..", "testdata", filepath.FromSlash(name))
}

// runCmd runs imgtool with args and returns the exit code and outputs.
func runCmd(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestInfoHuman(t *testing.T) {
	code, out, errs := runCmd("info", fixturePath("chain/top.qcow2"))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, want := range []string{
		"file format: qcow2\n",
		"virtual size: 3 MiB (3145728 bytes)\n",
		"cluster_size: 4096\n",
		"backing file: mid.qcow2 (actual path: " + fixturePath("chain") + "/mid.qcow2)\n",
		"backing file format: qcow2\n",
		"Format specific information:\n    compat: 1.1\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	code, out, _ = runCmd("info", "--backing-chain", fixturePath("chain/top.qcow2"))
	if code != 0 || strings.Count(out, "image: ") != 3 || !strings.Contains(out, "Snapshot list:\n") {
		t.Errorf("--backing-chain: exit %d\n%s", code, out)
	}
}

func TestInfoJSON(t *testing.T) {
	code, out, errs := runCmd("info", "--output", "json", fixturePath("qcow2/zstd.qcow2"))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	fs := m["format-specific"].(map[string]any)["data"].(map[string]any)
	if m["format"] != "qcow2" || m["virtual-size"] != float64(512<<10) || fs["compression-type"] != "zstd" {
		t.Errorf("unexpected info %v", m)
	}
	code, out, _ = runCmd("info", "--output=json", "--backing-chain", fixturePath("chain/top.qcow2"))
	var arr []map[string]any
	if err := json.Unmarshal([]byte(out), &arr); err != nil || code != 0 || len(arr) != 3 {
		t.Fatalf("--backing-chain json: exit %d err %v\n%s", code, err, out)
	}
}

// TestInfoMatchesQemu compares the JSON of both tools on the committed
// chain.
func TestInfoMatchesQemu(t *testing.T) {
	testutil.NeedTool(t, "qemu-img")
	for _, args := range [][]string{{}, {"--backing-chain"}} {
		path := fixturePath("chain/top.qcow2")
		qargs := append([]string{"info", "-U", "--output=json"}, append(args, path)...)
		var want, got any
		if err := json.Unmarshal(testutil.Run(t, "qemu-img", qargs...), &want); err != nil {
			t.Fatal(err)
		}
		code, out, errs := runCmd(append([]string{"info", "--output=json"}, append(args, path)...)...)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errs)
		}
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatal(err)
		}
		if d := cmp.Diff(want, got); d != "" {
			t.Errorf("info %v differs from qemu-img (-qemu-img +ours):\n%s", args, d)
		}
	}
}

func TestInfoErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		text string
	}{
		{[]string{"info"}, "expected one FILE"},
		{[]string{"info", "--output", "xml", "x"}, "--output must be human or json"},
		{[]string{"info", "no-such-file.qcow2"}, "no such file"},
		{[]string{"info", "-f", "vmdk", fixturePath("chain/top.qcow2")}, "unsupported"},
	} {
		code, _, errs := runCmd(c.args...)
		if code != 1 || !strings.Contains(errs, c.text) {
			t.Errorf("%v: exit %d, stderr %q; want 1 and %q", c.args, code, errs, c.text)
		}
	}
}

// TestInfoHumanMatchesQemu compares the human output, line for line.
func TestInfoHumanMatchesQemu(t *testing.T) {
	testutil.NeedTool(t, "qemu-img")
	for _, args := range [][]string{{fixturePath("qcow2/v2.qcow2")}, {"--backing-chain", fixturePath("chain/top.qcow2")}} {
		want := string(testutil.Run(t, "qemu-img", append([]string{"info", "-U"}, args...)...))
		code, out, errs := runCmd(append([]string{"info"}, args...)...)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errs)
		}
		if out != want {
			t.Errorf("info %v differs from qemu-img:\n got %s\nwant %s", args, out, want)
		}
	}
}
