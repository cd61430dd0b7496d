package qcow2

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/imgtool/imgtool/internal/testutil"
)

// TestPreallocFalloc: preallocation=falloc, created and converted, against
// the same qemu-img command: the same file size, every block reserved as
// qemu-img reserves it (within one cluster), the same qemu-img map (data
// runs read as data, not holes), a clean qemu-img check, and converted
// content equal to the source.
func TestPreallocFalloc(t *testing.T) {
	testutil.NeedTool(t, "qemu-img")
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	data := make([]byte, 3<<20)
	for i := range 1 << 20 { // 1 MiB of data, then 2 MiB of zeros
		data[i] = byte(i*7 + 1)
	}
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	type job struct {
		name   string
		format Format
		mine   func(path string) error
		qemu   []string // qemu-img arguments before the output path
		qemuAt string   // a trailing argument (the size) after it
	}
	jobs := []job{
		{"create-qcow2", FormatQcow2, func(p string) error {
			return Create(p, CreateOptions{Size: 3 << 20, Preallocation: PreallocFalloc})
		}, []string{"create", "-q", "-f", "qcow2", "-o", "preallocation=falloc"}, "3M"},
		{"create-raw", FormatRaw, func(p string) error {
			return Create(p, CreateOptions{Format: FormatRaw, Size: 3 << 20, Preallocation: PreallocFalloc})
		}, []string{"create", "-q", "-f", "raw", "-o", "preallocation=falloc"}, "3M"},
		{"convert-qcow2", FormatQcow2, func(p string) error {
			return convertFile(src, p, ConvertOptions{Create: CreateOptions{Preallocation: PreallocFalloc}})
		}, []string{"convert", "-O", "qcow2", "-o", "preallocation=falloc", src}, ""},
		{"convert-raw", FormatRaw, func(p string) error {
			return convertFile(src, p, ConvertOptions{Create: CreateOptions{Format: FormatRaw, Preallocation: PreallocFalloc}})
		}, []string{"convert", "-O", "raw", "-o", "preallocation=falloc", src}, ""},
	}
	for _, j := range jobs {
		t.Run(j.name, func(t *testing.T) {
			d := t.TempDir()
			mine, theirs := filepath.Join(d, "mine"), filepath.Join(d, "theirs")
			if err := j.mine(mine); err != nil {
				t.Fatal(err)
			}
			args := append(append([]string{}, j.qemu...), theirs)
			if j.qemuAt != "" {
				args = append(args, j.qemuAt)
			}
			testutil.Run(t, "qemu-img", args...)
			a, b := statBlocks(t, mine), statBlocks(t, theirs)
			if a.size != b.size {
				t.Errorf("file size %d, qemu-img's %d", a.size, b.size)
			}
			if a.allocated < a.size-64<<10 || a.allocated > b.allocated+64<<10 || a.allocated < b.allocated-64<<10 {
				t.Errorf("%d of %d bytes reserved, qemu-img's file %d of %d", a.allocated, a.size, b.allocated, b.size)
			}
			if j.format == FormatQcow2 {
				testutil.Run(t, "qemu-img", "check", mine)
				// Where the clusters lie is the writer's choice (convert
				// places them differently); what each run is must agree.
				mm, tm := mapRuns(t, mine), mapRuns(t, theirs)
				if diff := cmp.Diff(tm, mm); diff != "" {
					t.Errorf("qemu-img map (-qemu-img's +mine):\n%s", diff)
				}
			}
			if j.qemuAt == "" {
				qemuSame(t, mine, src)
			}
		})
	}
	t.Run("raw-metadata-refused", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "r.raw")
		if err := Create(p, CreateOptions{Format: FormatRaw, Size: 1 << 20, Preallocation: PreallocMetadata}); err == nil {
			t.Fatal("raw image with preallocation=metadata created; qemu-img refuses it")
		}
	})
}

// mapRuns is qemu-img map --output=json of path, offsets left out.
func mapRuns(t *testing.T, path string) []map[string]any {
	t.Helper()
	var runs []map[string]any
	if err := json.Unmarshal(testutil.Run(t, "qemu-img", "map", "--output=json", path), &runs); err != nil {
		t.Fatal(err)
	}
	for _, r := range runs {
		if _, ok := r["offset"]; !ok && r["data"] == true {
			t.Errorf("%s: a data run without a host offset: %v", path, r)
		}
		delete(r, "offset")
	}
	return runs
}

type fileBlocks struct{ size, allocated int64 }

func statBlocks(t *testing.T, path string) fileBlocks {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fileBlocks{fi.Size(), fi.Sys().(*syscall.Stat_t).Blocks * 512}
}

// convertFile is Convert from the image at src.
func convertFile(src, dst string, opts ConvertOptions) error {
	img, err := Open(src, Options{})
	if err != nil {
		return err
	}
	defer img.Close()
	return Convert(context.Background(), img, dst, opts)
}
