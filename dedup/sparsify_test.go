package dedup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgtool/imgtool/internal/testutil"
)

type qemuMapEntry struct {
	Start, Length int64
	Depth         int
	Present, Zero bool
	Data          bool
}

// topMap returns qemu-img map's runs that the top image itself decides.
func topMap(t *testing.T, img string) []qemuMapEntry {
	var all []qemuMapEntry
	if err := json.Unmarshal(testutil.Run(t, "qemu-img", "map", "--output=json", img), &all); err != nil {
		t.Fatal(err)
	}
	var top []qemuMapEntry
	for _, e := range all {
		if e.Depth == 0 && e.Present {
			top = append(top, e)
		}
	}
	return top
}

func TestSparsify(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	for _, compat := range []string{"1.1", "0.10"} {
		t.Run("compat="+compat, func(t *testing.T) {
			dir := t.TempDir()
			base := filepath.Join(dir, "base.qcow2")
			top := filepath.Join(dir, "top.qcow2")
			testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat="+compat, base, "4M")
			testutil.Run(t, "qemu-io", "-c", "write -P 0xaa 0 1M", base)
			testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat="+compat, "-b", "base.qcow2", "-F", "qcow2", top)
			testutil.Run(t, "qemu-io",
				"-c", "write -P 0xaa 0 256k", // equals the backing: dropped
				"-c", "write -P 0 2M 256k", // zeros over nothing: dropped
				"-c", "write -P 0 512k 128k", // zeros over 0xaa: a zero cluster (v3) or kept (v2)
				"-c", "write -P 0x11 3M 64k", // real data: kept
				"-c", "write -P 0xaa 3584k 64k", // 0xaa where the backing has nothing: kept
				top)
			orig := filepath.Join(dir, "orig.qcow2")
			copyFile(t, top, orig)
			res, err := Sparsify(context.Background(), top, SparsifyOptions{})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%+v", *res)
			testutil.Run(t, "qemu-img", "compare", "-q", orig, top)
			testutil.Run(t, "qemu-img", "check", "-q", top)
			// DataBytes counts data written; on version 2, zeros over
			// backing data are real zeros too (qemu-img map shows data).
			wantData := int64(128 << 10)
			if res.DataBytes != wantData {
				t.Errorf("data bytes %d, want %d", res.DataBytes, wantData)
			}
			var data, zero int64
			for _, e := range topMap(t, top) {
				if e.Data {
					data += e.Length
				} else if e.Zero {
					zero += e.Length
				}
			}
			wantMapData, wantZero := wantData, int64(128<<10)
			if compat == "0.10" {
				wantMapData, wantZero = wantData+128<<10, 0
			}
			if data != wantMapData || zero != wantZero {
				t.Errorf("qemu-img map: top holds %d data and %d zero bytes, want %d and %d", data, zero, wantMapData, wantZero)
			}
			if res.AfterBytes >= res.BeforeBytes {
				t.Errorf("allocated %d -> %d", res.BeforeBytes, res.AfterBytes)
			}
			info := string(testutil.Run(t, "qemu-img", "info", top))
			if want := "compat: " + compat; !contains(info, want) || !contains(info, "backing file: base.qcow2") {
				t.Errorf("info lost settings:\n%s", info)
			}
			// Sparsifying again changes nothing.
			res2, err := Sparsify(context.Background(), top, SparsifyOptions{})
			if err != nil || res2.DataBytes != wantData {
				t.Errorf("second sparsify: %+v, %v", res2, err)
			}
		})
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

func TestSparsifyStandaloneAndErrors(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	img := filepath.Join(dir, "a.qcow2")
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "2M")
	testutil.Run(t, "qemu-io", "-c", "write -P 0 0 1M", "-c", "write -P 7 1M 64k", img)
	orig := filepath.Join(dir, "orig.qcow2")
	copyFile(t, img, orig)
	res, err := Sparsify(context.Background(), img, SparsifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Run(t, "qemu-img", "compare", "-q", orig, img)
	if res.DataBytes != 64<<10 {
		t.Errorf("data bytes %d", res.DataBytes)
	}
	raw := filepath.Join(dir, "r.raw")
	if err := os.WriteFile(raw, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	snap := filepath.Join(dir, "s.qcow2")
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", snap, "1M")
	testutil.Run(t, "qemu-img", "snapshot", "-c", "s1", snap)
	for _, p := range []string{raw, snap} {
		if _, err := Sparsify(context.Background(), p, SparsifyOptions{}); !errors.Is(err, ErrUnsupported) {
			t.Errorf("%s: %v", p, err)
		}
	}
	if _, err := Sparsify(context.Background(), filepath.Join(dir, "nope"), SparsifyOptions{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing: %v", err)
	}
	if err := leftTemp(img); err != nil {
		t.Errorf("temporary file left: %v", err)
	}
}

// leftTemp reports a temporary file of a rewrite of path left in its
// directory.
func leftTemp(path string) error {
	ents, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		return err
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "."+filepath.Base(path)+".") {
			return fmt.Errorf("%s left", e.Name())
		}
	}
	return nil
}
