package qcow2

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgtool/imgtool/internal/testutil"
)

// TestMeasureAgainstQemu checks Measure's JSON against qemu-img measure
// for new images and for sources of each kind, over create options.
func TestMeasureAgainstQemu(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	raw := writeRawFile(t, dir, "src.raw", mixedData(6, 5<<20+3*512))
	q := filepath.Join(dir, "src.qcow2")
	testutil.Run(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=16k", raw, q)
	comp := filepath.Join(dir, "comp.qcow2")
	testutil.Run(t, "qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", raw, comp)
	qio(t, comp, "qcow2", "write -z 1M 1M")
	bm := filepath.Join(dir, "bitmaps.qcow2")
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", bm, "3G")
	qio(t, bm, "qcow2", "write -P 1 100M 1M")
	testutil.Run(t, "qemu-img", "bitmap", "--add", bm, "b0")
	testutil.Run(t, "qemu-img", "bitmap", "--add", "-g", "512k", bm, "a-longer-bitmap-name")
	v2 := filepath.Join(dir, "v2.qcow2")
	testutil.Run(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "compat=0.10", raw, v2)

	// Each -o list given to qemu-img, and the options it means.
	optsList := []struct {
		o  string
		co CreateOptions
	}{
		{"", CreateOptions{}},
		{"cluster_size=4k", CreateOptions{ClusterSize: 4 << 10}},
		{"cluster_size=2M,refcount_bits=1", CreateOptions{ClusterSize: 2 << 20, RefcountBits: 1}},
		{"compat=0.10", CreateOptions{Compat: "0.10"}},
		{"extended_l2=on", CreateOptions{ExtendedL2: true}},
		{"refcount_bits=64,cluster_size=512", CreateOptions{RefcountBits: 64, ClusterSize: 512}},
		{"preallocation=full", CreateOptions{Preallocation: "full"}},
		{"preallocation=metadata", CreateOptions{Preallocation: "metadata"}},
		{"backing_file=x.qcow2,backing_fmt=qcow2", CreateOptions{BackingFile: "x.qcow2", BackingFormat: FormatQcow2}},
	}
	sources := []string{"", raw, q, comp, bm, v2}
	for _, src := range sources {
		for _, format := range []string{"qcow2", "raw"} {
			for _, oc := range optsList {
				o := oc.o
				if format == "raw" && o != "" {
					continue
				}
				args := []string{"measure", "--output", "json", "-O", format}
				if o != "" {
					args = append(args, "-o", o)
				}
				var img *Image
				size := int64(0)
				if src == "" {
					size = 3<<30 + 12345
					args = append(args, "--size", "3221237817")
				} else {
					args = append(args, src)
					img = cvOpen(t, src)
				}
				want := testutil.Run(t, "qemu-img", args...)
				co := oc.co
				co.Format = Format(format)
				res, err := Measure(context.Background(), img, size, co)
				if err != nil {
					t.Fatalf("%v: %v", args, err)
				}
				var got bytes.Buffer
				res.WriteJSON(&got)
				if strings.TrimSpace(got.String()) != strings.TrimSpace(string(want)) {
					t.Errorf("%v:\ngot  %s\nwant %s", args, got.String(), want)
				}
			}
		}
	}
}
