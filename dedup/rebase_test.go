package dedup

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imgtool/imgtool/internal/testutil"
	"github.com/imgtool/imgtool/qcow2"
)

// fillRandom fills b with random bytes from rng.
func fillRandom(rng *rand.Rand, b []byte) {
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
}

// fleet makes n flattened VM images of size bytes the way the issue's
// proof describes: one base (3/4 random data, 1/4 zeros), an overlay per VM
// (qemu-img create -b) with 5% private random cluster writes, pairs (0,1),
// (2,3) sharing further 2% changes, each flattened by qemu-img convert.
// It returns the images and pristine copies of them.
func fleet(t *testing.T, dir string, n int, size int64) (imgs, origs []string) {
	t.Helper()
	const cs = 64 << 10
	rng := rand.New(rand.NewPCG(7, uint64(size)))
	baseRaw := filepath.Join(dir, "template.raw")
	f, err := os.Create(baseRaw)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		fillRandom(rng, buf)
		for c := 0; c < len(buf); c += cs {
			if rng.IntN(4) == 0 {
				clear(buf[c : c+cs])
			}
		}
		if _, err := f.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	template := filepath.Join(dir, "template.qcow2")
	testutil.Run(t, "qemu-img", "convert", "-O", "qcow2", baseRaw, template)
	os.Remove(baseRaw)
	clusters := size / cs
	writeClusters := func(img *qcow2.Image, rng *rand.Rand, count int64) {
		b := make([]byte, cs)
		for range count {
			fillRandom(rng, b)
			if _, err := img.WriteAt(b, rng.Int64N(clusters)*cs); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i := range n {
		ov := filepath.Join(dir, fmt.Sprintf("vm%d.overlay.qcow2", i))
		testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", template, "-F", "qcow2", ov)
		img, err := qcow2.Open(ov, qcow2.Options{Writable: true})
		if err != nil {
			t.Fatal(err)
		}
		writeClusters(img, rand.New(rand.NewPCG(uint64(i), 100)), clusters/20) // 5% private
		if i < 4 {
			writeClusters(img, rand.New(rand.NewPCG(uint64(i/2), 200)), clusters/50) // 2% shared by the pair
		}
		if err := img.Close(); err != nil {
			t.Fatal(err)
		}
		vm := filepath.Join(dir, fmt.Sprintf("vm%d.qcow2", i))
		testutil.Run(t, "qemu-img", "convert", "-O", "qcow2", ov, vm)
		os.Remove(ov)
		orig := filepath.Join(dir, fmt.Sprintf("vm%d.orig.qcow2", i))
		copyFile(t, vm, orig)
		imgs = append(imgs, vm)
		origs = append(origs, orig)
	}
	os.Remove(template)
	return imgs, origs
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// rebaseProof runs the proof on n images of size bytes.
func rebaseProof(t *testing.T, n int, size int64) {
	testutil.NeedTool(t, "qemu-img")
	dir := t.TempDir()
	imgs, origs := fleet(t, dir, n, size)
	ctx := context.Background()
	start := time.Now()
	scan, err := Scan(ctx, imgs, ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	el := time.Since(start)
	t.Logf("scan of %d x %d bytes: %v (%.0f MB/s)", n, size, el, float64(scan.Images.TotalBytes)/el.Seconds()/1e6)
	base := filepath.Join(dir, "base.qcow2")
	res, err := Rebase(ctx, base, imgs, RebaseOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("before %d, after %d (base %d data), saved %d; scan predicted %d", res.BeforeBytes, res.AfterBytes, res.BaseDataBytes, res.SavedBytes, scan.Images.SavedBytes)
	var after int64
	for _, p := range append([]string{base}, imgs...) {
		after += allocated(p)
	}
	if after != res.AfterBytes {
		t.Errorf("result says %d bytes after, the files hold %d", res.AfterBytes, after)
	}
	if limit := size * 13 / 10; after > limit {
		t.Errorf("total storage %d > 1.3 x %d", after, size)
	}
	if d := math.Abs(float64(scan.Images.SavedBytes-res.SavedBytes)) / float64(res.SavedBytes); d > 0.02 {
		t.Errorf("scan predicted %d saved, rebase saved %d (%.2f%% off)", scan.Images.SavedBytes, res.SavedBytes, 100*d)
	}
	for i, p := range imgs {
		if res.Images[i].Status != "rebased" {
			t.Errorf("%s: status %s", p, res.Images[i].Status)
		}
		testutil.Run(t, "qemu-img", "compare", "-q", origs[i], p)
		testutil.Run(t, "qemu-img", "check", "-q", p)
		info := string(testutil.Run(t, "qemu-img", "info", p))
		if !strings.Contains(info, "backing file: base.qcow2") {
			t.Errorf("%s: qemu-img info:\n%s", p, info)
		}
	}
	testutil.Run(t, "qemu-img", "check", "-q", base)

	// A rerun after an interruption: one image is still the standalone
	// original, the others are overlays on the base already.
	copyFile(t, origs[1], imgs[1])
	res2, err := Rebase(ctx, base, imgs, RebaseOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !res2.BaseReused {
		t.Error("base rebuilt on rerun")
	}
	for i, ri := range res2.Images {
		want := "already"
		if i == 1 {
			want = "rebased"
		}
		if ri.Status != want {
			t.Errorf("rerun: %s: status %s, want %s", ri.Path, ri.Status, want)
		}
		testutil.Run(t, "qemu-img", "compare", "-q", origs[i], ri.Path)
	}
	if a := allocated(imgs[1]); a > res.Images[1].AfterBytes+(1<<20) {
		t.Errorf("rerun made a %d byte overlay, the first run %d", a, res.Images[1].AfterBytes)
	}
}

func TestRebaseProofSmall(t *testing.T) {
	size := int64(64 << 20)
	if testing.Short() {
		size = 16 << 20
	}
	rebaseProof(t, 8, size)
}

// TestRebaseProof1GiB is the proof at full size: eight 1 GiB
// images (about 16 GiB of disk and a few minutes). Set
// IMGTOOL_DEDUP_HEAVY=1 to run it.
func TestRebaseProof1GiB(t *testing.T) {
	if os.Getenv("IMGTOOL_DEDUP_HEAVY") == "" {
		t.Skip("set IMGTOOL_DEDUP_HEAVY=1 to run the 8 x 1 GiB proof")
	}
	rebaseProof(t, 8, 1<<30)
}

func TestRebaseErrors(t *testing.T) {
	dir := t.TempDir()
	mk := func(name string, size int64) string {
		p := filepath.Join(dir, name)
		if err := qcow2.Create(p, qcow2.CreateOptions{Size: size}); err != nil {
			t.Fatal(err)
		}
		return p
	}
	a, b := mk("a.qcow2", 1<<20), mk("b.qcow2", 1<<20)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		base string
		imgs []string
		opts RebaseOptions
		is   error
	}{
		{"no images", filepath.Join(dir, "base"), nil, RebaseOptions{}, nil},
		{"min share", filepath.Join(dir, "base"), []string{a, b}, RebaseOptions{MinShare: 3}, nil},
		{"base is an input", a, []string{a, b}, RebaseOptions{}, ErrUnsupported},
		{"twice", filepath.Join(dir, "base"), []string{a, a}, RebaseOptions{}, nil},
		{"missing", filepath.Join(dir, "base"), []string{a, filepath.Join(dir, "nope")}, RebaseOptions{}, os.ErrNotExist},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Rebase(ctx, tc.base, tc.imgs, tc.opts)
			if err == nil {
				t.Fatal("no error")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v is not %v", err, tc.is)
			}
			t.Log(err)
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "base")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed rebase left a base: %v", err)
	}
}

// TestRebaseInterrupted cancels a rebase part way (after the base and some
// images are done), checks that every image still reads as before and no
// temporary file is left, and that a rerun finishes the job. The inputs
// are raw images, which become qcow2 overlays.
func TestRebaseInterrupted(t *testing.T) {
	testutil.NeedTool(t, "qemu-img")
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(11, 12))
	common := make([]byte, 4<<20)
	fillRandom(rng, common)
	var imgs, origs []string
	for i := range 4 {
		b := bytes.Clone(common)
		fillRandom(rng, b[i<<20:i<<20+64<<10])
		p := filepath.Join(dir, fmt.Sprintf("d%d.img", i))
		o := filepath.Join(dir, fmt.Sprintf("d%d.orig", i))
		for _, f := range []string{p, o} {
			if err := os.WriteFile(f, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		imgs, origs = append(imgs, p), append(origs, o)
	}
	base := filepath.Join(dir, "base.qcow2")
	ctx, cancel := context.WithCancel(context.Background())
	size := int64(len(common))
	_, err := Rebase(ctx, base, imgs, RebaseOptions{Workers: 1, Progress: func(done, total int64) {
		// Stop while the third image is being rewritten.
		if done >= int64(len(imgs))*size+2*size+size/2 {
			cancel()
		}
	}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted rebase: %v", err)
	}
	rebased := 0
	for i, p := range imgs {
		testutil.Run(t, "qemu-img", "compare", "-q", origs[i], p)
		if err := leftTemp(p); err != nil {
			t.Errorf("temporary file of %s left: %v", p, err)
		}
		img, err := qcow2.Open(p, qcow2.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if img.BackingPath() != "" {
			rebased++
		}
		img.Close()
	}
	if rebased != 2 {
		t.Errorf("%d images rebased before the interruption, want 2", rebased)
	}
	res, err := Rebase(context.Background(), base, imgs, RebaseOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i, ri := range res.Images {
		want := "already"
		if i >= 2 {
			want = "rebased"
		}
		if ri.Status != want {
			t.Errorf("%s: %s, want %s", ri.Path, ri.Status, want)
		}
		testutil.Run(t, "qemu-img", "compare", "-q", origs[i], ri.Path)
		testutil.Run(t, "qemu-img", "check", "-q", ri.Path)
		if ri.AfterBytes > 512<<10 {
			t.Errorf("%s: overlay holds %d bytes", ri.Path, ri.AfterBytes)
		}
	}
}

// TestRebaseSizesDiffer rebases images of three virtual sizes (one not a
// multiple of the cluster size) onto one base, as qemu-img rebase accepts
// a backing file of any size: the base covers the largest, each image
// keeps its size and content (qemu-img compare, check), and a rerun onto
// the existing base of another size works too.
func TestRebaseSizesDiffer(t *testing.T) {
	testutil.NeedTool(t, "qemu-img")
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(3, 4))
	common := make([]byte, 6<<20)
	fillRandom(rng, common)
	sizes := []int{3 << 20, 4<<20 + 4096, 6<<20 - 512}
	var imgs, origs []string
	for i, n := range sizes {
		b := bytes.Clone(common[:n])
		fillRandom(rng, b[(i+1)<<19:(i+1)<<19+64<<10])
		p := filepath.Join(dir, fmt.Sprintf("d%d.img", i))
		o := filepath.Join(dir, fmt.Sprintf("d%d.orig", i))
		for _, f := range []string{p, o} {
			if err := os.WriteFile(f, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		imgs, origs = append(imgs, p), append(origs, o)
	}
	base := filepath.Join(dir, "base.qcow2")
	res, err := Rebase(context.Background(), base, imgs, RebaseOptions{MinShare: 2})
	if err != nil {
		t.Fatal(err)
	}
	b, err := qcow2.Open(base, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if b.Size() != int64(sizes[2]) {
		t.Errorf("base is %d bytes, want the largest image's %d", b.Size(), sizes[2])
	}
	b.Close()
	testutil.Run(t, "qemu-img", "check", "-q", base)
	// Clusters that two images share are in the base: the overlays hold
	// little more than their own changes.
	if res.BaseDataBytes < 3<<20 {
		t.Errorf("base holds %d bytes of data, want at least the 3 MiB all share", res.BaseDataBytes)
	}
	check := func() {
		t.Helper()
		for i, p := range imgs {
			img, err := qcow2.Open(p, qcow2.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if img.Size() != int64(sizes[i]) || img.BackingPath() == "" {
				t.Errorf("%s: size %d (want %d), backing %q", p, img.Size(), sizes[i], img.BackingPath())
			}
			img.Close()
			testutil.Run(t, "qemu-img", "compare", "-q", origs[i], p)
			testutil.Run(t, "qemu-img", "check", "-q", p)
		}
	}
	check()
	for i, ri := range res.Images {
		// Its own 64 KiB change, plus what only it covers (the largest
		// image's tail past the second largest).
		own := int64(128 << 10)
		if i == 2 {
			own += int64(sizes[2]-sizes[1]) + 64<<10
		}
		if ri.DataBytes > own {
			t.Errorf("%s stores %d bytes itself, want at most %d", imgs[i], ri.DataBytes, own)
		}
	}
	// An existing base smaller than an image is reused as it is.
	small := filepath.Join(dir, "small.qcow2")
	if err := qcow2.Create(small, qcow2.CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	for i := range imgs {
		copyFile(t, origs[i], imgs[i])
	}
	res, err = Rebase(context.Background(), small, imgs, RebaseOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !res.BaseReused {
		t.Error("existing base not reused")
	}
	check()
}
