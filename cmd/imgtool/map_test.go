package main

import (
	"os"
	"strings"
	"testing"

	"github.com/imgtool/imgtool/internal/testutil"
)

func TestMapJSONGolden(t *testing.T) {
	for _, name := range []string{"chain/top.qcow2", "qcow2/zlib.qcow2"} {
		code, out, errs := runCmd("map", "--output=json", fixturePath(name))
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errs)
		}
		want, err := os.ReadFile(fixturePath(name) + ".map.json")
		if err != nil {
			t.Fatal(err)
		}
		if out != string(want) {
			t.Errorf("%s: map differs from qemu-img's:\n got %s\nwant %s", name, out, want)
		}
	}
}

func TestMapHuman(t *testing.T) {
	code, out, errs := runCmd("map", fixturePath("chain/top.qcow2"))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if lines[0] != "Offset          Length          Mapped to       File" || len(lines) != 7 {
		t.Fatalf("unexpected output:\n%s", out)
	}
	if want := "0x1000          0x3000          0x6000          " + fixturePath("chain/base.qcow2"); lines[1] != want {
		t.Errorf("first line %q, want %q", lines[1], want)
	}
	// Compressed clusters have no offset: human output refuses like
	// qemu-img.
	if code, _, errs := runCmd("map", fixturePath("qcow2/zstd.qcow2")); code != 1 || !strings.Contains(errs, "compressed") {
		t.Errorf("human map of a compressed image: exit %d %q", code, errs)
	}
}

func TestMapMatchesQemuHuman(t *testing.T) {
	testutil.NeedTool(t, "qemu-img")
	path := fixturePath("chain/top.qcow2")
	want := string(testutil.Run(t, "qemu-img", "map", "-U", path))
	code, out, errs := runCmd("map", path)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if out != want {
		t.Errorf("human map differs:\n got %s\nwant %s", out, want)
	}
}
