package qcow2

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgtool/imgtool/internal/testutil"
)

// TestCompareAgainstQemu compares pairs of images with Compare and with
// qemu-img compare (with and without -s): same verdict, same message.
func TestCompareAgainstQemu(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	mk := func(name, format, size string, io ...string) string {
		p := filepath.Join(dir, name)
		testutil.Run(t, "qemu-img", "create", "-q", "-f", format, p, size)
		if len(io) > 0 {
			qio(t, p, format, io...)
		}
		return p
	}
	a := mk("a.qcow2", "qcow2", "4M", "write -P 7 64k 128k", "write -P 0 1M 64k")
	same := mk("same.raw", "raw", "4M", "write -P 7 64k 128k")
	diff := mk("diff.qcow2", "qcow2", "4M", "write -P 7 64k 128k", "write -P 1 100000 10")
	bigZero := mk("bigzero.qcow2", "qcow2", "6M", "write -P 7 64k 128k", "write -z 5M 64k")
	bigData := mk("bigdata.raw", "raw", "6M", "write -P 7 64k 128k", "write -P 3 5000000 700")
	small := mk("small.qcow2", "qcow2", "1M", "write -P 7 64k 128k")
	comp := filepath.Join(dir, "comp.qcow2")
	testutil.Run(t, "qemu-img", "convert", "-c", "-O", "qcow2", a, comp)
	pairs := [][2]string{{a, same}, {a, diff}, {diff, a}, {a, bigZero}, {bigZero, a}, {a, bigData}, {bigData, a},
		{small, a}, {a, comp}, {a, a}, {same, same}, {comp, same}}
	for _, p := range pairs {
		for _, strict := range []bool{false, true} {
			args := []string{"compare", "-U"}
			if strict {
				args = append(args, "-s")
			}
			out, err := testutil.Exec("qemu-img", append(args, p[0], p[1])...)
			code := 0
			if err != nil {
				code = exitCodeOf(err)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			want := lines[len(lines)-1]
			ia, ib := cvOpen(t, p[0]), cvOpen(t, p[1])
			res, err := Compare(context.Background(), ia, ib, CompareOptions{Strict: strict})
			if err != nil {
				t.Fatal(err)
			}
			got := 1
			if res.Identical {
				got = 0
			}
			name := filepath.Base(p[0]) + " " + filepath.Base(p[1])
			if got != code {
				t.Errorf("%s strict=%v: identical=%v, qemu-img exit %d (%s)", name, strict, res.Identical, code, out)
			}
			if res.Message() != want {
				t.Errorf("%s strict=%v: %q, qemu-img says %q", name, strict, res.Message(), want)
			}
			if warn := strings.Contains(string(out), "Warning: Image size mismatch!"); warn != (res.SizeMismatch && !strict) {
				t.Errorf("%s: size warning %v, qemu-img %v", name, res.SizeMismatch, warn)
			}
		}
	}
}

func TestCompareCancel(t *testing.T) {
	dir := t.TempDir()
	p := writeRawFile(t, dir, "a.raw", mixedData(5, 8<<20))
	q := writeRawFile(t, dir, "b.raw", mixedData(5, 8<<20))
	ctx, cancel := context.WithCancel(context.Background())
	_, err := Compare(ctx, cvOpen(t, p), cvOpen(t, q), CompareOptions{Progress: func(done, total int64) {
		if done > 0 {
			cancel()
		}
	}})
	if err == nil {
		t.Fatal("cancelled compare returned no error")
	}
	os.Remove(p)
}

// cvOpen opens an image chain read-only without locks and closes it at
// the end of the test.
func cvOpen(t *testing.T, p string) *Image {
	t.Helper()
	img, err := Open(p, Options{ForceShare: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	return img
}
