package qcow2

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/imgtool/imgtool/internal/testutil"
)

// TestCreateMatchesQemu creates images with every option and checks what
// qemu-img info and check say about them.
func TestCreateMatchesQemu(t *testing.T) {
	testutil.NeedTool(t, "qemu-img")
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	os.WriteFile(base, make([]byte, 3<<20), 0o644)
	type want struct {
		compat, compression string
		refcountBits        int
		lazy, extL2         bool
		clusterSize, size   int64
	}
	cases := []struct {
		name string
		opts CreateOptions
		want want
	}{
		{"default", CreateOptions{Size: 1 << 30}, want{"1.1", "zlib", 16, false, false, 65536, 1 << 30}},
		{"v2", CreateOptions{Size: 5 << 20, Compat: "0.10", ClusterSize: 512}, want{"0.10", "zlib", 16, false, false, 512, 5 << 20}},
		{"zstd-lazy-rc1", CreateOptions{Size: 5 << 20, CompressionType: "zstd", LazyRefcounts: true, RefcountBits: 1}, want{"1.1", "zstd", 1, true, false, 65536, 5 << 20}},
		{"extl2-2m-rc64", CreateOptions{Size: 64 << 20, ExtendedL2: true, ClusterSize: 2 << 20, RefcountBits: 64}, want{"1.1", "zlib", 64, false, true, 2 << 20, 64 << 20}},
		{"prealloc-metadata", CreateOptions{Size: 9 << 20, Preallocation: PreallocMetadata, ClusterSize: 4096}, want{"1.1", "zlib", 16, false, false, 4096, 9 << 20}},
		{"prealloc-full-v2", CreateOptions{Size: 3 << 20, Preallocation: PreallocFull, Compat: "0.10"}, want{"0.10", "zlib", 16, false, false, 65536, 3 << 20}},
		{"backing-size", CreateOptions{BackingFile: "base.raw"}, want{"1.1", "zlib", 16, false, false, 65536, 3 << 20}},
		{"backing-prealloc-extl2", CreateOptions{BackingFile: "base.raw", BackingFormat: FormatRaw, ExtendedL2: true, Preallocation: PreallocMetadata}, want{"1.1", "zlib", 16, false, true, 65536, 3 << 20}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(dir, c.name+".qcow2")
			if err := Create(p, c.opts); err != nil {
				t.Fatal(err)
			}
			qemuCheckClean(t, p)
			var info struct {
				VirtualSize    int64  `json:"virtual-size"`
				ClusterSize    int64  `json:"cluster-size"`
				BackingFormat  string `json:"backing-filename-format"`
				FormatSpecific struct {
					Data struct {
						Compat          string `json:"compat"`
						CompressionType string `json:"compression-type"`
						LazyRefcounts   bool   `json:"lazy-refcounts"`
						RefcountBits    int    `json:"refcount-bits"`
						ExtendedL2      bool   `json:"extended-l2"`
					} `json:"data"`
				} `json:"format-specific"`
			}
			out := testutil.Run(t, "qemu-img", "info", "--output=json", p)
			if err := json.Unmarshal(out, &info); err != nil {
				t.Fatal(err)
			}
			d := info.FormatSpecific.Data
			got := want{d.Compat, d.CompressionType, d.RefcountBits, d.LazyRefcounts, d.ExtendedL2, info.ClusterSize, info.VirtualSize}
			if d := cmp.Diff(c.want, got, cmp.AllowUnexported(want{})); d != "" {
				t.Fatalf("qemu-img info (-want +got):\n%s", d)
			}
			if c.opts.BackingFile != "" && info.BackingFormat != "raw" {
				t.Fatalf("backing format %q, want the probed raw", info.BackingFormat)
			}
			if c.opts.Preallocation != "" {
				m := string(testutil.Run(t, "qemu-img", "map", "--output=json", p))
				if c.opts.BackingFile == "" && !json.Valid([]byte(m)) {
					t.Fatal("qemu-img map output is not JSON")
				}
				var runs []struct {
					Data   bool  `json:"data"`
					Offset int64 `json:"offset"`
				}
				json.Unmarshal([]byte(m), &runs)
				for _, r := range runs {
					if r.Offset == 0 && c.opts.BackingFile == "" {
						t.Fatalf("preallocated image has a run without a host offset: %s", m)
					}
				}
			}
		})
	}
	if err := Create(filepath.Join(dir, "default.qcow2"), CreateOptions{Size: 1 << 20}); !errors.Is(err, ErrExists) {
		t.Fatalf("create over an existing file: %v", err)
	}
	if err := Create(filepath.Join(dir, "default.qcow2"), CreateOptions{Size: 1 << 20, Overwrite: true}); err != nil {
		t.Fatalf("create with Overwrite: %v", err)
	}
	bad := []CreateOptions{
		{Size: 1 << 20, ClusterSize: 1000},
		{Size: 1 << 20, ClusterSize: 4 << 20},
		{Size: 1 << 20, Compat: "0.10", ExtendedL2: true},
		{Size: 1 << 20, ExtendedL2: true, ClusterSize: 4096},
		{Size: 1 << 20, Compat: "0.10", RefcountBits: 8},
		{Size: 1 << 20, RefcountBits: 3},
		{Size: 1 << 20, CompressionType: "lz4"},
		{Size: 1 << 20, BackingFile: "json:{}"},
		{Size: 1 << 20, BackingFile: "base.raw", Preallocation: PreallocFull},
		{Size: 1 << 20, Preallocation: "falloc-ish"},
	}
	for i, o := range bad {
		if err := Create(filepath.Join(dir, "bad.qcow2"), o); err == nil {
			t.Errorf("bad options %d (%+v) accepted", i, o)
		}
	}
}

// TestWriteCompressed rewrites clusters qemu-img compressed (zlib and
// zstd) as normal clusters.
func TestWriteCompressed(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	for _, ct := range []string{"zlib", "zstd"} {
		t.Run(ct, func(t *testing.T) {
			dir := t.TempDir()
			src := filepath.Join(dir, "src.qcow2")
			qemuImage(t, src, "", "2M", "write -P 0x41 0 1M", "write -P 0x42 1M 512k")
			p := filepath.Join(dir, "c.qcow2")
			testutil.Run(t, "qemu-img", "convert", "-c", "-O", "qcow2", "-o", "compression_type="+ct+",cluster_size=65536", src, p)
			refPath := filepath.Join(dir, "ref.raw")
			testutil.Run(t, "qemu-img", "convert", "-O", "raw", p, refPath)
			ref, _ := os.ReadFile(refPath)
			img, err := Open(p, Options{Writable: true})
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range []struct{ off, n int64 }{{100, 10}, {65536*3 + 5, 70000}, {1 << 20, 65536}} {
				b := make([]byte, w.n)
				for i := range b {
					b[i] = byte(i * 7)
				}
				if _, err := img.WriteAt(b, w.off); err != nil {
					t.Fatal(err)
				}
				copy(ref[w.off:], b)
			}
			if err := img.WriteZeroes(65536*8, 65536); err != nil {
				t.Fatal(err)
			}
			clear(ref[65536*8 : 65536*9])
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			qemuCheckClean(t, p)
			os.WriteFile(refPath, ref, 0o644)
			qemuCompare(t, p, refPath)
		})
	}
}

func TestCreateFullPreallocationProgress(t *testing.T) {
	for _, f := range []Format{FormatQcow2, FormatRaw} {
		var last, total int64
		calls := 0
		path := filepath.Join(t.TempDir(), "full."+string(f))
		err := Create(path, CreateOptions{Format: f, Size: 5<<20 + 512, Preallocation: PreallocFull, ClusterSize: 512,
			Progress: func(done, tot int64) {
				if done < last || done > tot {
					t.Errorf("%s: progress %d/%d after %d", f, done, tot, last)
				}
				last, total = done, tot
				calls++
			}})
		if err != nil {
			t.Fatal(err)
		}
		if calls == 0 || last != total || total != 5<<20+512 {
			t.Errorf("%s: %d calls, last %d/%d", f, calls, last, total)
		}
	}
}
