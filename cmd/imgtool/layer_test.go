package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLayerCLI(t *testing.T) {
	src := t.TempDir()
	if err := os.MkdirAll(filepath.Join(src, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "etc/hello"), []byte("world"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/hello", filepath.Join(src, "link")); err != nil {
		t.Fatal(err)
	}
	blob := filepath.Join(t.TempDir(), "layer.tar.zst")
	t.Setenv("SOURCE_DATE_EPOCH", "1000000000")
	var out, errb bytes.Buffer
	if code := run([]string{"layer", "create", "--compression", "zstd", "--output-file", blob, "--output", "json", src}, &out, &errb); code != 0 {
		t.Fatalf("create: exit %d: %s", code, errb.String())
	}
	var d struct {
		Digest, DiffID, MediaType string
		Size                      int64
	}
	if err := json.Unmarshal(out.Bytes(), &d); err != nil {
		t.Fatalf("create json: %v\n%s", err, out.String())
	}
	st, err := os.Stat(blob)
	if err != nil || st.Size() != d.Size || !strings.HasPrefix(d.Digest, "sha256:") || !strings.HasSuffix(d.MediaType, "tar+zstd") {
		t.Fatalf("create reported %+v, file %v %v", d, st, err)
	}
	// Reproducible with SOURCE_DATE_EPOCH.
	blob2 := blob + "2"
	out.Reset()
	if code := run([]string{"layer", "create", "--compression", "zstd", "--output-file", blob2, "--output", "json", src}, &out, &errb); code != 0 {
		t.Fatalf("create again: exit %d: %s", code, errb.String())
	}
	if !strings.Contains(out.String(), d.Digest) {
		t.Errorf("second create gave another digest: %s", out.String())
	}

	out.Reset()
	if code := run([]string{"layer", "ls", blob}, &out, &errb); code != 0 {
		t.Fatalf("ls: exit %d: %s", code, errb.String())
	}
	for _, want := range []string{"etc/hello", "link -> /etc/hello", "2001-09-09"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("ls output lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if code := run([]string{"layer", "ls", "--output", "json", blob}, &out, &errb); code != 0 {
		t.Fatalf("ls json: exit %d: %s", code, errb.String())
	}
	var l struct {
		DiffID  string
		Entries []struct{ Name, Type string }
	}
	if err := json.Unmarshal(out.Bytes(), &l); err != nil || l.DiffID != d.DiffID || len(l.Entries) != 3 {
		t.Errorf("ls json: %v %+v", err, l)
	}

	dst := filepath.Join(t.TempDir(), "new", "dir")
	out.Reset()
	if code := run([]string{"layer", "apply", blob, dst}, &out, &errb); code != 0 {
		t.Fatalf("apply: exit %d: %s", code, errb.String())
	}
	if b, err := os.ReadFile(filepath.Join(dst, "etc/hello")); err != nil || string(b) != "world" {
		t.Errorf("applied etc/hello: %q %v", b, err)
	}
	if !strings.Contains(out.String(), d.DiffID) {
		t.Errorf("apply output lacks the diffID: %s", out.String())
	}

	// Errors: usage, a missing file, a corrupt blob.
	for _, args := range [][]string{
		{"layer"}, {"layer", "frob"}, {"layer", "create", src}, {"layer", "create", "--compression", "lz4", "--output-file", blob, src},
		{"layer", "apply", blob}, {"layer", "ls", filepath.Join(src, "missing")}, {"layer", "apply", filepath.Join(src, "etc/hello"), t.TempDir()},
		{"layer", "apply", "--expect-digest", "sha256:" + strings.Repeat("0", 64), blob, t.TempDir()},
	} {
		errb.Reset()
		if code := run(args, &out, &errb); code == 0 || errb.Len() == 0 {
			t.Errorf("%q: exit %d, stderr %q", args, code, errb.String())
		}
	}
}

func TestLayerCreateLevel(t *testing.T) {
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	if err := os.MkdirAll(tree, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "f"), bytes.Repeat([]byte("imgtool layer level "), 5000), 0o644); err != nil {
		t.Fatal(err)
	}
	sizes := map[string]int64{}
	for _, level := range []string{"1", "19"} {
		out := filepath.Join(dir, "l"+level+".tar.zst")
		var stdout, stderr bytes.Buffer
		if code := run([]string{"layer", "create", "--compression", "zstd", "--level", level, "--output-file", out, tree}, &stdout, &stderr); code != 0 {
			t.Fatalf("level %s: exit %d: %s", level, code, stderr.String())
		}
		fi, err := os.Stat(out)
		if err != nil {
			t.Fatal(err)
		}
		sizes[level] = fi.Size()
	}
	if sizes["19"] >= sizes["1"] {
		t.Errorf("level 19 blob (%d bytes) not smaller than level 1 (%d)", sizes["19"], sizes["1"])
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"layer", "create", "--compression", "zstd", "--level", "30", "--output-file", filepath.Join(dir, "bad"), tree}, &stdout, &stderr); code == 0 {
		t.Error("level 30 accepted")
	}
	if _, err := os.Stat(filepath.Join(dir, "bad")); err == nil {
		t.Error("blob written for a refused level")
	}
}
