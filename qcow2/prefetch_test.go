package qcow2

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// recordingReader records the offset and length of every read.
type recordingReader struct {
	r     *bytes.Reader
	mu    sync.Mutex
	reads [][2]int64
}

func (c *recordingReader) ReadAt(p []byte, off int64) (int, error) {
	c.mu.Lock()
	c.reads = append(c.reads, [2]int64{off, int64(len(p))})
	c.mu.Unlock()
	return c.r.ReadAt(p, off)
}

// TestPrefetchMetadata: the header, the L1 table and every L2 table the
// image has are read, nothing else; a budget too small for all L2 tables
// reads fewer; anything that is not a qcow2 image reads only its first
// block.
func TestPrefetchMetadata(t *testing.T) {
	p := filepath.Join(t.TempDir(), "img.qcow2")
	if err := Create(p, CreateOptions{Size: 64 << 20, ClusterSize: 4096}); err != nil {
		t.Fatal(err)
	}
	img, err := Open(p, Options{Writable: true})
	if err != nil {
		t.Fatal(err)
	}
	// 4 KiB clusters: an L2 table maps 2 MiB, so three tables.
	for _, off := range []int64{0, 5 << 20, 9 << 20} {
		if _, err := img.WriteAt([]byte("data"), off); err != nil {
			t.Fatal(err)
		}
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
	if img, err = Open(p, Options{}); err != nil {
		t.Fatal(err)
	}
	want := [][2]int64{{0, 4096}, {int64(img.hdr.L1TableOffset), img.l1Len() * 8}}
	var l2s [][2]int64
	for i := range img.l1Len() {
		if off := img.l1Get(i).l2Offset(); off != 0 {
			l2s = append(l2s, [2]int64{off, 4096})
		}
	}
	img.Close()
	if len(l2s) != 3 {
		t.Fatalf("%d L2 tables, want 3", len(l2s))
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	sortReads := func(r [][2]int64) [][2]int64 {
		slices.SortFunc(r[2:], func(a, b [2]int64) int { return int(a[0] - b[0]) })
		return r
	}
	for _, c := range []struct {
		name   string
		budget int64
		l2     int // how many L2 tables the budget allows
	}{
		{"ample budget", 1 << 20, 3},
		{"budget for two tables", want[1][1] + 2*4096, 2},
		{"budget for the L1 table only", want[1][1], 0},
	} {
		rr := &recordingReader{r: bytes.NewReader(b)}
		PrefetchMetadata(rr, int64(len(b)), c.budget)
		got := sortReads(rr.reads)
		if len(got) != 2+c.l2 {
			t.Errorf("%s: %d reads %v, want header, L1 and %d L2 tables", c.name, len(got), got, c.l2)
			continue
		}
		if c.l2 == 3 {
			if d := cmp.Diff(append(slices.Clone(want), l2s...), got); d != "" {
				t.Errorf("%s: reads (-want +got):\n%s", c.name, d)
			}
		} else if d := cmp.Diff(want, got[:2]); d != "" {
			t.Errorf("%s: reads (-want +got):\n%s", c.name, d)
		}
	}
	// Not a qcow2 image, and a truncated one: the first block only.
	for name, data := range map[string][]byte{"raw": make([]byte, 1<<20), "truncated": b[:int(want[1][0])]} {
		rr := &recordingReader{r: bytes.NewReader(data)}
		PrefetchMetadata(rr, int64(len(data)), 1<<20)
		if d := cmp.Diff([][2]int64{{0, min(int64(len(data)), 4096)}}, rr.reads); d != "" {
			t.Errorf("%s: reads (-want +got):\n%s", name, d)
		}
	}
}
