package testutil

import "testing"

// TestBenchLayoutSmall: the benchmark image generator makes a layout
// umoci reads.
func TestBenchLayoutSmall(t *testing.T) {
	NeedTool(t, "umoci")
	t.Setenv("TMPDIR", t.TempDir())
	bi := BenchLayout(t, 2, 2<<20)
	t.Logf("%+v", bi)
	Run(t, "umoci", "raw", "unpack", "--image", bi.Dir+":bench", t.TempDir()+"/r")
	if bi.Files < 10 || bi.Compressed < 4<<20 || bi.Uncompressed <= bi.Compressed {
		t.Errorf("image %+v", bi)
	}
	if again := BenchLayout(t, 2, 2<<20); *again != *bi {
		t.Errorf("the cached image reads back as %+v, was %+v", again, bi)
	}
}
