package layers

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/imgtool/imgtool/internal/testutil"
	"github.com/imgtool/imgtool/internal/treecmp"
	"golang.org/x/sys/unix"
)

// entries lists a blob's tar headers.
func entries(t testing.TB, blob []byte) []*tar.Header {
	t.Helper()
	var hs []*tar.Header
	_, err := List(context.Background(), bytes.NewReader(blob), func(h *tar.Header) error {
		hs = append(hs, h)
		return nil
	}, Limits{})
	must(t, err)
	return hs
}

func names(hs []*tar.Header) []string {
	var out []string
	for _, h := range hs {
		out = append(out, h.Name)
	}
	return out
}

func TestCreateReproducible(t *testing.T) {
	src := t.TempDir()
	newRandTree(t, 42, src, 150)
	// Big enough for several gzip members and zstd jobs.
	big := make([]byte, 5<<20)
	for i := range big {
		big[i] = byte(i * 7 / 5)
	}
	must(t, os.WriteFile(filepath.Join(src, "big"), big, 0o644))
	epoch := time.Unix(1600000000, 0)
	for _, c := range []Compression{Gzip, Zstd, None} {
		var first Descriptor
		for i, conc := range []int{1, 4, 2} {
			_, d := createBytes(t, src, CreateOptions{Compression: c, Concurrency: conc, SourceDateEpoch: &epoch})
			if i == 0 {
				first = d
			} else if d != first {
				t.Errorf("%v: concurrency %d gave %+v, concurrency 1 gave %+v", c, conc, d, first)
			}
		}
	}
	blob, _ := createBytes(t, src, CreateOptions{SourceDateEpoch: &epoch})
	hs := entries(t, blob)
	for _, h := range hs {
		if h.ModTime.After(epoch) {
			t.Errorf("%s: mtime %v after SOURCE_DATE_EPOCH", h.Name, h.ModTime)
		}
		if h.Uname != "" || h.Gname != "" {
			t.Errorf("%s: uname %q gname %q", h.Name, h.Uname, h.Gname)
		}
		if h.Typeflag == tar.TypeLink && h.Linkname == "" {
			t.Errorf("%s: empty hardlink target", h.Name)
		}
	}
	// Depth-first, sorted within each directory.
	ns := names(hs)
	for i := 1; i < len(ns); i++ {
		a, b := ns[i-1], ns[i]
		if filepath.Dir(trimSlash(a)) == filepath.Dir(trimSlash(b)) && trimSlash(a) >= trimSlash(b) {
			t.Errorf("entries not sorted: %q before %q", a, b)
		}
	}
}

// TestCreateLevelsReproducible: a zstd layer big enough for several
// concurrent encoder jobs (16 MiB each at level 1, 32 MiB at 3) has the
// same bytes whatever the concurrency; levels change the blob but not the
// tar (diffID); bad levels are refused.
func TestCreateLevelsReproducible(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	block := make([]byte, 0, 64<<10)
	for len(block) < cap(block)-16 {
		block = fmt.Appendf(block, "%x ", r.Uint32()%4096)
	}
	tree := func(size int) string {
		dir := t.TempDir()
		data := make([]byte, 0, size+len(block))
		for i := 0; len(data) < size; i++ {
			data = fmt.Appendf(data, "%d\n", i)
			data = append(data, block[r.IntN(len(block)/2):]...)
		}
		must(t, os.WriteFile(filepath.Join(dir, "f"), data[:size], 0o644))
		return dir
	}
	epoch := time.Unix(1600000000, 0)
	create := func(src string, c Compression, level, conc int) Descriptor {
		blob, d := createBytes(t, src, CreateOptions{Compression: c, Level: level, Concurrency: conc, SourceDateEpoch: &epoch})
		got, err := List(context.Background(), bytes.NewReader(blob), nil, Limits{})
		must(t, err)
		if got != d {
			t.Errorf("%v level %d: List says %+v, Create said %+v", c, level, got, d)
		}
		return d
	}

	big := tree(34 << 20)
	for _, level := range []int{0, 1} {
		first := create(big, Zstd, level, 1)
		if d := create(big, Zstd, level, 3); d != first {
			t.Errorf("zstd level %d: concurrency 3 gave %+v, concurrency 1 gave %+v", level, d, first)
		}
	}

	small := tree(1 << 20)
	descs := make(map[string]Descriptor)
	for _, tc := range []struct {
		c     Compression
		level int
	}{{Zstd, 0}, {Zstd, 1}, {Zstd, 3}, {Zstd, 7}, {Gzip, 0}, {Gzip, 1}, {Gzip, 5}, {Gzip, 9}} {
		descs[fmt.Sprintf("%v%d", tc.c, tc.level)] = create(small, tc.c, tc.level, 2)
	}
	if descs["zstd0"] != descs["zstd3"] || descs["gzip0"] != descs["gzip5"] {
		t.Errorf("level 0 is not the default level: zstd %+v vs %+v, gzip %+v vs %+v", descs["zstd0"], descs["zstd3"], descs["gzip0"], descs["gzip5"])
	}
	for _, k := range []string{"zstd1", "zstd7", "gzip1", "gzip9"} {
		if descs[k].DiffID != descs["zstd3"].DiffID {
			t.Errorf("%s: diffID %s differs from level 3's %s", k, descs[k].DiffID, descs["zstd3"].DiffID)
		}
	}
	if descs["zstd1"].Size <= descs["zstd3"].Size || descs["gzip1"].Size <= descs["gzip9"].Size {
		t.Errorf("lower levels should compress less: zstd %d vs %d, gzip %d vs %d",
			descs["zstd1"].Size, descs["zstd3"].Size, descs["gzip1"].Size, descs["gzip9"].Size)
	}
	for _, bad := range []CreateOptions{{Compression: Zstd, Level: 23}, {Compression: Zstd, Level: -1}, {Compression: Gzip, Level: 10}} {
		_, err := Create(context.Background(), io.Discard, small, bad)
		if !errors.Is(err, ErrUnsupported) {
			t.Errorf("%v level %d: err %v, want ErrUnsupported", bad.Compression, bad.Level, err)
		}
	}
	if _, err := Create(context.Background(), io.Discard, small, CreateOptions{Compression: None, Level: 5}); err != nil {
		t.Errorf("a level without compression: %v (it is ignored)", err)
	}
}

func trimSlash(s string) string { return filepath.Clean(s) }

// TestCreateGzipInterop: the multi-member gzip stream is read by GNU gzip
// and the tar by GNU tar, and zstd output by the zstd CLI.
func TestCreateGzipInterop(t *testing.T) {
	testutil.NeedTool(t, "gzip", "tar")
	src := t.TempDir()
	newRandTree(t, 7, src, 60)
	big := bytes.Repeat([]byte("0123456789abcdef"), 300000) // 4.8 MB: 5 members
	must(t, os.WriteFile(filepath.Join(src, "big"), big, 0o644))
	blob, d := createBytes(t, src, CreateOptions{})
	f := filepath.Join(t.TempDir(), "layer.tar.gz")
	must(t, os.WriteFile(f, blob, 0o644))
	out := testutil.Run(t, "sh", "-c", "gzip -dc "+f+" | sha256sum")
	if got := string(out[:64]); "sha256:"+got != d.DiffID.String() {
		t.Errorf("gzip -dc | sha256sum = %s, diffID %s", got, d.DiffID)
	}
	dst := t.TempDir()
	testutil.Run(t, "tar", "-xzf", f, "-C", dst)
	if b, err := os.ReadFile(filepath.Join(dst, "big")); err != nil || !bytes.Equal(b, big) {
		t.Errorf("GNU tar extracted big: %v", err)
	}
	// zstd is not one of the oracles CI installs; use it when present.
	if hasTool("zstd") {
		zb, zd := createBytes(t, src, CreateOptions{Compression: Zstd})
		zf := filepath.Join(t.TempDir(), "layer.tar.zst")
		must(t, os.WriteFile(zf, zb, 0o644))
		out := testutil.Run(t, "sh", "-c", "zstd -dc "+zf+" | sha256sum")
		if got := string(out[:64]); "sha256:"+got != zd.DiffID.String() {
			t.Errorf("zstd -dc | sha256sum = %s, diffID %s", got, zd.DiffID)
		}
	}
}

func hasTool(name string) bool {
	_, err := testutil.Exec("sh", "-c", "command -v "+name)
	return err == nil
}

func TestCreateDiff(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	w := func(root, p, s string) {
		must(t, os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755))
		must(t, os.WriteFile(filepath.Join(root, p), []byte(s), 0o644))
	}
	for _, r := range []string{a, b} {
		w(r, "same/f", "s")
		w(r, "changed", "old")
		w(r, "keepdir/x", "x")
	}
	w(a, "deleted", "d")
	w(a, "dirtofile/x", "x")
	w(a, "filetodir", "f")
	must(t, os.WriteFile(filepath.Join(b, "changed"), []byte("new"), 0o644))
	w(b, "dirtofile", "nowfile")
	w(b, "filetodir/in", "i")
	w(b, "added/deep", "a")
	ts := time.Unix(1500000000, 0)
	for _, r := range []string{a, b} {
		filepath.Walk(r, func(p string, _ os.FileInfo, _ error) error { return os.Chtimes(p, ts, ts) })
	}
	must(t, os.WriteFile(filepath.Join(b, "changed"), []byte("new"), 0o644))
	blob, _ := createBytes(t, b, CreateOptions{Lower: a})
	got := names(entries(t, blob))
	want := []string{".wh.deleted", "added/", "added/deep", "changed", "dirtofile", "filetodir/", "filetodir/.wh..wh..opq", "filetodir/in"}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("diff entries (-want +got):\n%s", d)
	}
	for _, h := range entries(t, blob) {
		if h.Name == ".wh.deleted" && !h.ModTime.Equal(time.Unix(0, 0)) {
			t.Errorf("whiteout mtime %v", h.ModTime)
		}
	}
}

// TestCreateOverlayUpper makes changes through a real overlayfs mount and
// checks that the layer made from its upper dir, applied to a copy of the
// lower dir, gives the merged tree.
func TestCreateOverlayUpper(t *testing.T) {
	testutil.NeedRoot(t)
	for seed := range uint64(max(2, seeds()/3)) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			base := t.TempDir()
			lower, upper, work, merged := filepath.Join(base, "l"), filepath.Join(base, "u"), filepath.Join(base, "w"), filepath.Join(base, "m")
			for _, d := range []string{lower, upper, work, merged} {
				must(t, os.Mkdir(d, 0o755))
			}
			newRandTree(t, seed, lower, 80)
			opts := "lowerdir=" + lower + ",upperdir=" + upper + ",workdir=" + work + ",index=off,metacopy=off,redirect_dir=off"
			if err := unix.Mount("overlay", merged, "overlay", 0, opts); err != nil {
				t.Skipf("cannot mount overlayfs here: %v", err)
			}
			mounted := true
			defer func() {
				if mounted {
					unix.Unmount(merged, 0)
				}
			}()
			mutateTree(t, seed, merged)
			// A dir deleted and recreated gets the kernel's opaque xattr.
			must(t, os.MkdirAll(filepath.Join(merged, "brandnew/sub"), 0o755))
			want, err := treecmp.Snapshot(merged, treecmp.Options{})
			must(t, err)
			must(t, unix.Unmount(merged, 0))
			mounted = false

			blob, _ := createBytes(t, upper, CreateOptions{Lower: lower, OverlayUpper: true})
			target := t.TempDir()
			cpTree(t, lower, target)
			must(t, applyBytes(target, blob, ApplyOptions{}))
			got, err := treecmp.Snapshot(target, treecmp.Options{})
			must(t, err)
			// Creating brandnew in the merged dir changed the root's
			// children only; compare everything below the root.
			if d := treecmp.Diff(want, got); d != nil {
				t.Fatalf("applied upper layer differs from the merged tree:\n%q", d)
			}
			for _, h := range entries(t, blob) {
				if h.Name == "brandnew/.wh..wh..opq" || h.Name == "brandnew/sub/.wh..wh..opq" {
					t.Errorf("spurious opaque marker %s", h.Name)
				}
			}
		})
	}
}

func TestListAndDescriptor(t *testing.T) {
	src := t.TempDir()
	must(t, os.WriteFile(filepath.Join(src, "f"), []byte("hello"), 0o644))
	for _, c := range []Compression{Gzip, Zstd, None} {
		blob, d := createBytes(t, src, CreateOptions{Compression: c})
		got, err := List(context.Background(), bytes.NewReader(blob), nil, Limits{})
		must(t, err)
		if got != d || d.MediaType != c.MediaType() || d.Size != int64(len(blob)) {
			t.Errorf("%v: List %+v, Create %+v", c, got, d)
		}
		// Trailing garbage after the compressed stream is an error, not
		// silently outside the digest.
		if c != None {
			_, err := List(context.Background(), io.MultiReader(bytes.NewReader(blob), bytes.NewReader([]byte("junkjunk"))), nil, Limits{})
			if err == nil {
				t.Errorf("%v: trailing garbage accepted", c)
			}
		}
	}
}

func TestParseCompression(t *testing.T) {
	for s, want := range map[string]Compression{"gzip": Gzip, "": Gzip, "zstd": Zstd, "none": None} {
		if c, err := ParseCompression(s); err != nil || c != want {
			t.Errorf("%q: %v %v", s, c, err)
		}
	}
	if _, err := ParseCompression("lz4"); err == nil {
		t.Error("lz4 accepted")
	}
	for _, mt := range []string{"application/vnd.docker.image.rootfs.diff.tar.gzip", "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd", MediaTypeTar} {
		if _, err := ParseMediaType(mt); err != nil {
			t.Errorf("%s: %v", mt, err)
		}
	}
}
