package jsonfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestWriteRead(t *testing.T) {
	p := filepath.Join(t.TempDir(), "rec.json")
	type rec struct {
		Name string            `json:"name"`
		Tags map[string]string `json:"tags"`
	}
	want := rec{Name: "a", Tags: map[string]string{"k": "v"}}
	if err := Write(p, want, 0o600); err != nil {
		t.Fatal(err)
	}
	var got rec
	if err := Read(p, &got); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("read back (-want +got):\n%s", d)
	}
	b, _ := os.ReadFile(p)
	if !strings.HasSuffix(string(b), "}\n") {
		t.Errorf("file does not end in a newline: %q", b)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("mode %v, want no group or other bits", fi.Mode())
	}
	entries, _ := os.ReadDir(filepath.Dir(p))
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the record", len(entries))
	}
}

func TestReadRefuses(t *testing.T) {
	dir := t.TempDir()
	var v map[string]any
	if err := Read(filepath.Join(dir, "missing.json"), &v); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v, want fs.ErrNotExist", err)
	}
	big := filepath.Join(dir, "big.json")
	if err := os.WriteFile(big, []byte(`"`+strings.Repeat("x", MaxSize)+`"`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Read(big, &v); err == nil || !strings.Contains(err.Error(), "more than 1 MiB") {
		t.Errorf("oversized file: %v", err)
	}
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte("{"), 0o600)
	if err := Read(bad, &v); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("truncated JSON: %v, want an error naming the file", err)
	}
}

func TestReadCapped(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "index.json")
	if err := os.WriteFile(p, []byte(`{"a":1}`), 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := ReadCapped(p, 7)
	if err != nil || string(b) != `{"a":1}` {
		t.Fatalf("ReadCapped(7 bytes, max 7) = %q, %v", b, err)
	}
	for _, tc := range []struct {
		name, path string
		max        int64
		want       string
	}{
		{"too big", p, 6, p + ": 7 bytes, more than the 6 allowed"},
		{"directory", dir, 1 << 20, dir + ": not a regular file"},
		{"missing", filepath.Join(dir, "none"), 1 << 20, "open " + filepath.Join(dir, "none")},
	} {
		_, err := ReadCapped(tc.path, tc.max)
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want it to start %q", tc.name, err, tc.want)
		}
		if tc.name == "missing" && !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("missing: error %v does not match fs.ErrNotExist", err)
		}
	}
}
