package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgtool/imgtool/internal/testutil"
	"github.com/imgtool/imgtool/layers"
)

func diskTestLayout(t *testing.T) string {
	dir := t.TempDir()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	content := []byte("hello disk\n")
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "etc/", Mode: 0o755})
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "etc/motd", Mode: 0o644, Size: int64(len(content))})
	tw.Write(content)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "l.tar")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	layout := filepath.Join(dir, "oci")
	if _, err := layers.Build(context.Background(), layout, layers.BuildOptions{Layers: []string{p}, Tag: "v1"}); err != nil {
		t.Fatal(err)
	}
	return layout
}

func TestImageDisk(t *testing.T) {
	layout := diskTestLayout(t)
	out := filepath.Join(t.TempDir(), "disk")
	var stdout, stderr bytes.Buffer
	if err := runImageDisk([]string{"--size", "64M", layout + ":v1", out}, &stdout, &stderr); err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	top := strings.TrimSpace(stdout.String())
	if filepath.Dir(top) != out || !strings.HasPrefix(filepath.Base(top), "sha256-") {
		t.Fatalf("printed %q", top)
	}
	if _, err := os.Stat(top); err != nil {
		t.Fatal(err)
	}

	// JSON, and a non-empty OUTDIR is refused.
	stdout.Reset()
	out2 := filepath.Join(t.TempDir(), "disk")
	if err := runImageDisk([]string{"--size", "64M", "--output", "json", layout + ":v1", out2}, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	var res struct {
		Filename string `json:"filename"`
		Levels   []struct {
			ChainID  string `json:"chain-id"`
			FileSize int64  `json:"file-size"`
		} `json:"levels"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil || len(res.Levels) != 1 || filepath.Base(res.Filename) != filepath.Base(top) {
		t.Fatalf("json %s: %v", stdout.String(), err)
	}
	if err := runImageDisk([]string{"--size", "64M", layout + ":v1", out}, &stdout, &stderr); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("reuse of a full OUTDIR: %v", err)
	}
	if err := runImageDisk([]string{"--size", "1M", layout + ":v1", filepath.Join(t.TempDir(), "x")}, &stdout, &stderr); err == nil {
		t.Fatal("--size 1M accepted")
	}
}

// TestImageDiskRegistry: image disk docker://REF against the real
// registry, with -p, into an OUTDIR whose parent does not exist yet: the
// level equals the one built from the layout; --cluster-size takes a
// qemu-img size.
func TestImageDiskRegistry(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	layout := diskTestLayout(t)
	ref := reg.Host + "/disk/app:1"
	if code, out, errb := imageTestRun(t, "image", "push", layout+":v1", ref); code != 0 {
		t.Fatalf("push: exit %d\n%s%s", code, out, errb)
	}
	work := t.TempDir()
	out := filepath.Join(work, "new", "disk")
	code, stdout, stderr := imageTestRun(t, "image", "disk", "-p", "--size", "64M", "--cluster-size", "64K", "docker://"+ref, out)
	if code != 0 {
		t.Fatalf("image disk docker://: exit %d\n%s%s", code, stdout, stderr)
	}
	top := strings.TrimSpace(stdout)
	if filepath.Dir(top) != out {
		t.Fatalf("printed %q, want a file in %s", top, out)
	}
	if !strings.Contains(stderr, "layer 1/1") || !strings.Contains(stderr, " done") {
		t.Errorf("-p drew no pull and layer progress:\n%q", stderr)
	}
	local := filepath.Join(work, "local")
	if code, _, errb := imageTestRun(t, "image", "disk", "--size", "64M", "--cluster-size", "64K", layout+":v1", local); code != 0 {
		t.Fatalf("image disk layout: exit %d\n%s", code, errb)
	}
	a, _ := os.ReadFile(top)
	b, _ := os.ReadFile(filepath.Join(local, filepath.Base(top)))
	if len(a) < 24 || !bytes.Equal(a, b) {
		t.Fatalf("level from docker:// (%d bytes) differs from the layout's (%d bytes)", len(a), len(b))
	}
	if bits := binary.BigEndian.Uint32(a[20:]); bits != 16 {
		t.Errorf("cluster bits %d, want 16 (64K)", bits)
	}
	if ents, _ := os.ReadDir(filepath.Dir(out)); len(ents) != 1 {
		t.Errorf("left beside OUTDIR: %v", ents)
	}
}
