package dedup

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/imgtool/imgtool/internal/testutil"
	"github.com/imgtool/imgtool/layers"
)

func writeFiles(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	for name, b := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestScanLayouts(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	blob := func(n int) []byte {
		b := make([]byte, n)
		fillRandom(rng, b)
		return b
	}
	big, other, third := blob(2<<20), blob(200<<10), blob(100<<10)
	dir := t.TempDir()
	l1, l2 := filepath.Join(dir, "l1"), filepath.Join(dir, "l2")
	writeFiles(t, l1, map[string][]byte{"usr/big": big, "usr/big.copy": big, "etc/other": other})
	writeFiles(t, l2, map[string][]byte{"opt/big.again": big, "opt/third": third, "opt/empty": nil})
	lay := filepath.Join(dir, "layout")
	ctx := context.Background()
	if _, err := layers.Build(ctx, lay, layers.BuildOptions{Layers: []string{l1}, Tag: "a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := layers.Build(ctx, lay, layers.BuildOptions{Base: "a", Layers: []string{l2}, Tag: "b"}); err != nil {
		t.Fatal(err)
	}
	var calls int
	rep, err := Scan(ctx, []string{lay}, ScanOptions{Progress: func(done, total int64) { calls++ }})
	if err != nil {
		t.Fatal(err)
	}
	r := rep.Layouts
	if rep.Images != nil || r == nil {
		t.Fatalf("report %+v", rep)
	}
	t.Logf("%+v", *r)
	if r.Layouts != 1 || r.Images != 2 || r.Layers != 2 || r.LayerRefs != 3 {
		t.Errorf("layouts %d images %d layers %d refs %d, want 1 2 2 3", r.Layouts, r.Images, r.Layers, r.LayerRefs)
	}
	// Regular files: big, big.copy, other; big.again, third, empty (the
	// second layer's whiteouts of etc and usr are not files).
	if r.Files != 6 || r.FileBytes != int64(3*len(big)+len(other)+len(third)) {
		t.Errorf("files %d (%d bytes)", r.Files, r.FileBytes)
	}
	if r.DuplicateFiles != 2 || r.DuplicateFileBytes != int64(2*len(big)) {
		t.Errorf("duplicate files %d (%d bytes), want 2 (%d)", r.DuplicateFiles, r.DuplicateFileBytes, 2*len(big))
	}
	if len(r.TopDuplicates) != 1 || r.TopDuplicates[0].Copies != 3 || r.TopDuplicates[0].Size != int64(len(big)) {
		t.Errorf("top duplicates %+v", r.TopDuplicates)
	}
	if r.TotalBytes != r.ZeroBytes+r.UniqueBytes+r.DuplicateBytes {
		t.Errorf("total %d != %d + %d + %d", r.TotalBytes, r.ZeroBytes, r.UniqueBytes, r.DuplicateBytes)
	}
	// big occurs three times in the tars: FastCDC finds most of two
	// copies (chunks at the file edges mix in tar headers).
	if r.DuplicateBytes < int64(2*len(big))*2/3 || r.DuplicateBytes > int64(2*len(big)) {
		t.Errorf("duplicate chunk bytes %d, want about %d", r.DuplicateBytes, 2*len(big))
	}
	for _, in := range r.Inputs {
		if in.SharedChunkBytes < int64(len(big))*2/3 {
			t.Errorf("layer %s shares %d chunk bytes", in.Digest, in.SharedChunkBytes)
		}
		if in.TarBytes == 0 || in.DuplicateFileBytes == 0 {
			t.Errorf("layer %+v", in)
		}
	}
	if calls == 0 {
		t.Error("no progress")
	}
	// Images and layouts in one scan.
	img := filepath.Join(dir, "x.raw")
	if err := os.WriteFile(img, big[:512<<10], 0o644); err != nil {
		t.Fatal(err)
	}
	rep, err = Scan(ctx, []string{img, lay}, ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Images == nil || rep.Layouts == nil || rep.Images.UniqueBytes != 512<<10 {
		t.Errorf("mixed scan: %+v %+v", rep.Images, rep.Layouts)
	}
	// The chunk references and file entries a layout scan keeps are
	// bounded by MaxChunks, as the index is: r.Chunks distinct chunks
	// fit, but not the references and files on top of them.
	if _, err := Scan(ctx, []string{lay}, ScanOptions{MaxChunks: r.Chunks + 1}); !errors.Is(err, ErrIndexFull) {
		t.Errorf("scan with MaxChunks %d: %v, want ErrIndexFull", r.Chunks+1, err)
	}
	if _, err := Scan(ctx, []string{lay}, ScanOptions{MaxChunks: -1}); err != nil {
		t.Errorf("unlimited scan: %v", err)
	}
}

// TestScanUmociLayout scans a layout written by umoci: image a has one
// layer with two copies of X, image b adds a layer with a third copy.
func TestScanUmociLayout(t *testing.T) {
	testutil.NeedTool(t, "umoci")
	dir := t.TempDir()
	lay := filepath.Join(dir, "layout")
	x := make([]byte, 1<<20)
	fillRandom(rand.New(rand.NewPCG(8, 8)), x)
	testutil.Run(t, "umoci", "init", "--layout", lay)
	testutil.Run(t, "umoci", "new", "--image", lay+":a")
	unpack := func(tag, bundle string, files map[string][]byte) {
		testutil.Run(t, "umoci", "unpack", "--rootless", "--image", lay+":a", bundle)
		writeFiles(t, filepath.Join(bundle, "rootfs"), files)
		testutil.Run(t, "umoci", "repack", "--image", lay+":"+tag, bundle)
	}
	unpack("a", filepath.Join(dir, "b1"), map[string][]byte{"x.bin": x, "y.bin": x})
	unpack("b", filepath.Join(dir, "b2"), map[string][]byte{"z.bin": x})
	rep, err := Scan(context.Background(), []string{lay}, ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r := rep.Layouts
	if r.Images != 2 || r.Layers != 2 || r.LayerRefs != 3 {
		t.Errorf("images %d layers %d refs %d, want 2 2 3", r.Images, r.Layers, r.LayerRefs)
	}
	if r.Files != 3 || r.DuplicateFiles != 2 || r.DuplicateFileBytes != int64(2*len(x)) {
		t.Errorf("files %d, duplicates %d (%d bytes)", r.Files, r.DuplicateFiles, r.DuplicateFileBytes)
	}
	if r.DuplicateBytes < int64(len(x)) { // of 2 x 1 MiB
		t.Errorf("duplicate chunk bytes %d", r.DuplicateBytes)
	}
}
