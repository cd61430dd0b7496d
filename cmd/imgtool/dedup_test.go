package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/imgtool/imgtool/qcow2"
)

// dedupImages writes n qcow2 images of 1 MiB sharing their first 512 KiB
// (pattern 0x5a) and each with 64 KiB of its own.
func dedupImages(t *testing.T, dir string, n int) []string {
	t.Helper()
	var paths []string
	for i := range n {
		p := filepath.Join(dir, "vm"+string(rune('0'+i))+".qcow2")
		if err := qcow2.Create(p, qcow2.CreateOptions{Size: 1 << 20}); err != nil {
			t.Fatal(err)
		}
		img, err := qcow2.Open(p, qcow2.Options{Writable: true})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := img.WriteAt(bytes.Repeat([]byte{0x5a}, 512<<10), 0); err != nil {
			t.Fatal(err)
		}
		if _, err := img.WriteAt(bytes.Repeat([]byte{byte(i + 1)}, 64<<10), 768<<10); err != nil {
			t.Fatal(err)
		}
		if err := img.Close(); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	return paths
}

func TestDedupCLI(t *testing.T) {
	dir := t.TempDir()
	imgs := dedupImages(t, dir, 3)
	var out, errb bytes.Buffer
	if code := run(append([]string{"dedup", "scan", "--output", "json"}, imgs...), &out, &errb); code != 0 {
		t.Fatalf("scan: exit %d: %s", code, errb.String())
	}
	var rep struct {
		Images map[string]any `json:"images"`
	}
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatal(err)
	}
	// 3 MiB: 3 x 448 KiB zeros; unique: 512 KiB shared + 3 x 64 KiB
	// private (in 64 KiB chunks, eight equal chunks of 0x5a make one);
	// duplicate: the rest.
	want := map[string]float64{
		"total-bytes":     3 << 20,
		"zero-bytes":      3 * 448 << 10,
		"unique-bytes":    64<<10 + 3*64<<10,
		"duplicate-bytes": 3*512<<10 - 64<<10,
	}
	got := map[string]float64{}
	for k := range want {
		got[k], _ = rep.Images[k].(float64)
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("image figures (-want +got):\n%s", d)
	}
	if in, _ := rep.Images["inputs"].([]any); len(in) != 3 {
		t.Errorf("inputs: %v", rep.Images["inputs"])
	}
	out.Reset()
	if code := run(append([]string{"dedup", "scan"}, imgs...), &out, &errb); code != 0 || !strings.Contains(out.String(), "dedup would save 1.4 MiB") {
		t.Errorf("scan human: exit %d:\n%s%s", code, out.String(), errb.String())
	}

	base := filepath.Join(dir, "base.qcow2")
	out.Reset()
	if code := run(append([]string{"dedup", "rebase", "--base-out", base, "--output", "json"}, imgs...), &out, &errb); code != 0 {
		t.Fatalf("rebase: exit %d: %s", code, errb.String())
	}
	var res struct {
		Images []struct{ Status string } `json:"images"`
	}
	if err := json.Unmarshal(out.Bytes(), &res); err != nil || len(res.Images) != 3 || res.Images[0].Status != "rebased" {
		t.Errorf("rebase output %s (%v)", out.String(), err)
	}
	img, err := qcow2.Open(imgs[0], qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if img.BackingPath() == "" {
		t.Error("image not rebased")
	}
	img.Close()
	out.Reset()
	if code := run(append([]string{"dedup", "rebase", "--base-out", base}, imgs...), &out, &errb); code != 0 || strings.Count(out.String(), ": already") != 3 {
		t.Errorf("rerun: exit %d:\n%s%s", code, out.String(), errb.String())
	}
	out.Reset()
	if code := run([]string{"dedup", "sparsify", imgs[1]}, &out, &errb); code != 0 || !strings.Contains(out.String(), "64.0 KiB of data kept") {
		t.Errorf("sparsify: exit %d:\n%s%s", code, out.String(), errb.String())
	}

	for _, args := range [][]string{
		{"dedup"},
		{"dedup", "frob"},
		{"dedup", "scan"},
		{"dedup", "scan", "--output", "xml", imgs[0]},
		{"dedup", "scan", filepath.Join(dir, "missing")},
		{"dedup", "rebase", imgs[0]},
		{"dedup", "rebase", "--base-out", base},
		{"dedup", "sparsify"},
		{"dedup", "sparsify", filepath.Join(dir, "missing")},
	} {
		errb.Reset()
		if code := run(args, &out, &errb); code != 1 || errb.Len() == 0 {
			t.Errorf("%v: exit %d, stderr %q", args, code, errb.String())
		}
	}
	if _, err := os.Stat(base); err != nil {
		t.Error(err)
	}
}

func TestStoreDedupCLI(t *testing.T) {
	dir := t.TempDir()
	x := bytes.Repeat([]byte("same bytes "), 20000)
	for _, l := range []string{"l1", "l2"} {
		if err := os.MkdirAll(filepath.Join(dir, l), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, l, l+".bin"), x, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	lay := filepath.Join(dir, "layout")
	store := filepath.Join(dir, "store")
	var out, errb bytes.Buffer
	for _, args := range [][]string{
		{"image", "build", "--layer", filepath.Join(dir, "l1"), "--layer", filepath.Join(dir, "l2"), "--source-date-epoch", "1700000000", lay + ":t"},
		{"store", "unpack", "--store", store, lay + ":t"},
	} {
		if code := run(args, &out, &errb); code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errb.String())
		}
	}
	out.Reset()
	if code := run([]string{"dedup", "scan", lay}, &out, &errb); code != 0 || !strings.Contains(out.String(), "layers: 2 distinct of 2 references") ||
		!strings.Contains(out.String(), "files: 2 (429.7 KiB), 1 duplicates by content (214.8 KiB)") {
		t.Errorf("dedup scan of a layout: exit %d:\n%s%s", code, out.String(), errb.String())
	}
	out.Reset()
	if code := run([]string{"dedup", "scan", "--output", "json", lay}, &out, &errb); code != 0 {
		t.Fatalf("dedup scan json: exit %d: %s", code, errb.String())
	}
	var scan struct {
		Layouts struct {
			DuplicateFiles int64 `json:"duplicate-files"`
			TotalBytes     int64 `json:"total-bytes"`
		} `json:"layouts"`
	}
	if err := json.Unmarshal(out.Bytes(), &scan); err != nil || scan.Layouts.DuplicateFiles != 1 || scan.Layouts.TotalBytes == 0 {
		t.Errorf("dedup scan json: %s (%v)", out.String(), err)
	}
	out.Reset()
	if code := run([]string{"store", "dedup", "--store", store, "--output", "json"}, &out, &errb); code != 0 {
		t.Fatalf("store dedup: exit %d: %s", code, errb.String())
	}
	var res struct {
		Linked     int64 `json:"linked"`
		SavedBytes int64 `json:"saved-bytes"`
	}
	if err := json.Unmarshal(out.Bytes(), &res); err != nil || res.Linked != 1 || res.SavedBytes < int64(len(x)) {
		t.Errorf("store dedup: %s (%v)", out.String(), err)
	}
	errb.Reset()
	if code := run([]string{"store", "dedup", "--store", store, "--method", "copy"}, &out, &errb); code != 1 {
		t.Errorf("bad method: exit %d", code)
	}
}
