package qcow2

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzWriteOps decodes a sequence of writes, zeroes, discards, flushes
// and snapshot operations from the input, applies them to a small image
// and to a byte slice, and requires equal content and a clean check.
func FuzzWriteOps(f *testing.F) {
	f.Add([]byte{0, 1, 0, 10, 200, 2, 3, 1, 5, 100, 4})
	f.Add([]byte{2, 0, 255, 255, 255, 1, 0, 0, 64, 3, 2, 9, 9, 9})
	f.Add([]byte{5, 4, 0, 1, 2, 3, 0, 7, 7, 7, 5, 6, 0, 0, 9, 1})
	f.Fuzz(func(t *testing.T, ops []byte) {
		if len(ops) < 1 || len(ops) > 400 {
			return
		}
		var opts CreateOptions
		switch ops[0] % 4 {
		case 0:
			opts = CreateOptions{ClusterSize: 512}
		case 1:
			opts = CreateOptions{ClusterSize: 4096, Compat: "0.10"}
		case 2:
			opts = CreateOptions{ClusterSize: 16 << 10, ExtendedL2: true}
		case 3:
			opts = CreateOptions{ClusterSize: 1024, RefcountBits: 2, LazyRefcounts: true}
		}
		const size = 96 << 10
		opts.Size = size
		p := filepath.Join(t.TempDir(), "f.qcow2")
		if err := Create(p, opts); err != nil {
			t.Fatal(err)
		}
		img, err := Open(p, Options{Writable: true, ForceShare: true})
		if err != nil {
			t.Fatal(err)
		}
		defer img.Close()
		ref := make([]byte, size)
		cs := img.ClusterSize()
		snapped := false
		for i := 1; i+3 < len(ops); i += 4 {
			off := (int64(ops[i+1])<<8 | int64(ops[i+2])) * 3 % size
			n := 1 + int64(ops[i+3])*97%min(size-off, 20000)
			switch ops[i] % 7 {
			case 0, 1:
				b := bytes.Repeat([]byte{ops[i+3] | 1}, int(n))
				if _, err := img.WriteAt(b, off); err != nil {
					t.Fatal(err)
				}
				copy(ref[off:], b)
			case 2:
				if err := img.WriteZeroes(off, n); err != nil {
					t.Fatal(err)
				}
				clear(ref[off : off+n])
			case 3:
				if err := img.Discard(off, n); err != nil {
					t.Fatal(err)
				}
				start := (off + cs - 1) &^ (cs - 1)
				end := (off + n) &^ (cs - 1)
				if off+n == size {
					end = size
				}
				for c := start; c < end; c += cs {
					clear(ref[c:min(c+cs, size)])
				}
			case 4:
				if err := img.Flush(); err != nil {
					t.Fatal(err)
				}
			case 5:
				if !snapped && opts.RefcountBits != 2 {
					if err := img.CreateSnapshot("s"); err != nil {
						t.Fatal(err)
					}
					snapped = true
				}
			case 6:
				if snapped {
					if err := img.DeleteSnapshot("s"); err != nil {
						t.Fatal(err)
					}
					snapped = false
				}
			}
		}
		got := make([]byte, size)
		if _, err := img.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, ref) {
			t.Fatal("content differs from the model")
		}
		if err := img.Close(); err != nil {
			t.Fatal(err)
		}
		res, err := CheckFile(p, RepairNone, Options{ForceShare: true})
		if err != nil {
			t.Fatal(err)
		}
		if res.ExitCode() != 0 {
			t.Fatalf("check: %+v\n%s", res, strings.Join(res.Messages, "\n"))
		}
	})
}
