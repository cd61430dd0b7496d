package vmchain

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/imgtool/imgtool/qcow2"
)

// Geometry of the test chains: 16 MiB images; each level and VM writes
// its own byte pattern into its own range, so every range says which
// image it must come from.
const (
	tcSize   = 16 << 20
	tcBaseAt = 0        // base: [0, 4 MiB) = 0xBA (written into the raw base file)
	tcBaseN  = 4 << 20  //
	tcDBAt   = 4 << 20  // db: [4, 6 MiB) = 0xDB
	tcDBN    = 2 << 20  //
	tcWebAt  = 6 << 20  // web: [6, 8 MiB) = 0xEB, and [1 MiB, +64 KiB) = 0xEC over the base
	tcWebN   = 2 << 20  //
	tcVMAt   = 12 << 20 // vmI: [12 MiB + I*128 KiB, +64 KiB) = 0x10+I
	tcVMN    = 64 << 10
	tcVMStep = 128 << 10
	tcNumVMs = 10
)

func tcVM(i int) string           { return "vm" + strconv.Itoa(i) }
func tcVMOff(i int) int64         { return tcVMAt + int64(i)*tcVMStep }
func tcVMPattern(i int) byte      { return byte(0x10 + i) }
func fill(b byte, n int64) []byte { return bytes.Repeat([]byte{b}, int(n)) }

// writeRawBase writes the raw base disk: 0xBA over [0, 4 MiB), zeros
// elsewhere (sparse).
func writeRawBase(t testing.TB, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(tcSize); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(fill(0xBA, tcBaseN), tcBaseAt); err != nil {
		t.Fatal(err)
	}
}

// writeImage writes p at off into image name through the chain API.
func writeImage(t testing.TB, c *ChainDir, name string, off int64, p []byte) {
	t.Helper()
	img, err := c.Open(context.Background(), name, qcow2.Options{Writable: true})
	if err != nil {
		t.Fatalf("open %s writable: %v", name, err)
	}
	if _, err := img.WriteAt(p, off); err != nil {
		t.Fatalf("write %s: %v", name, err)
	}
	if err := img.Close(); err != nil {
		t.Fatal(err)
	}
}

// buildTestChain builds base -> db -> web with tcNumVMs VMs on web, each
// level and VM with its pattern written through the chain API.
func buildTestChain(t testing.TB, dir string) *ChainDir {
	t.Helper()
	ctx := context.Background()
	raw := filepath.Join(t.TempDir(), "base.raw")
	writeRawBase(t, raw)
	c, err := InitChain(ctx, dir, raw, InitChainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.AddLevel(ctx, "db", "base", AddLevelOptions{}); err != nil {
		t.Fatal(err)
	}
	writeImage(t, c, "db", tcDBAt, fill(0xDB, tcDBN))
	if err := c.AddLevel(ctx, "web", "db", AddLevelOptions{}); err != nil {
		t.Fatal(err)
	}
	writeImage(t, c, "web", tcWebAt, fill(0xEB, tcWebN))
	writeImage(t, c, "web", 1<<20, fill(0xEC, 64<<10))
	for i := range tcNumVMs {
		if err := c.AddVM(ctx, tcVM(i), "web"); err != nil {
			t.Fatal(err)
		}
		writeImage(t, c, tcVM(i), tcVMOff(i), fill(tcVMPattern(i), tcVMN))
	}
	return c
}

// expected returns the guest content image name of the test chain must
// show.
func expected(name string) []byte {
	want := make([]byte, tcSize)
	copy(want[tcBaseAt:], fill(0xBA, tcBaseN))
	if name == "base" {
		return want
	}
	copy(want[tcDBAt:], fill(0xDB, tcDBN))
	if name == "db" {
		return want
	}
	copy(want[tcWebAt:], fill(0xEB, tcWebN))
	copy(want[1<<20:], fill(0xEC, 64<<10))
	for i := range tcNumVMs {
		if name == tcVM(i) {
			copy(want[tcVMOff(i):], fill(tcVMPattern(i), tcVMN))
		}
	}
	return want
}

// readAll reads the guest content of image name through the chain.
func readAll(t testing.TB, c *ChainDir, name string) []byte {
	t.Helper()
	img, err := c.Open(context.Background(), name, qcow2.Options{})
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	defer img.Close()
	got := make([]byte, img.Size())
	if _, err := img.ReadAt(got, 0); err != nil {
		t.Fatalf("read %s: %v", name, err)
	}
	return got
}

func checkContent(t testing.TB, c *ChainDir, names ...string) {
	t.Helper()
	for _, name := range names {
		got, want := readAll(t, c, name), expected(name)
		if !bytes.Equal(got, want) {
			t.Errorf("%s: content differs from what its chain should show, first at %d", name, firstDiffAt(got, want))
		}
	}
}

func firstDiffAt(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func allNames() []string {
	names := []string{"base", "db", "web"}
	for i := range tcNumVMs {
		names = append(names, tcVM(i))
	}
	return names
}

func TestChainNames(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"base", true}, {"web-1.2_x+y", true}, {"A9", true},
		{"", false}, {".hidden", false}, {"-flag", false}, {"a/b", false}, {"a..b", false},
		{"..", false}, {"nbd:x", false}, {"sp ace", false}, {"uni\u00e9", false},
		{string(bytes.Repeat([]byte("x"), 129)), false},
	} {
		err := validChainName(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("validChainName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrChainInvalidName) {
			t.Errorf("validChainName(%q) = %v, not ErrChainInvalidName", tc.name, err)
		}
	}
	dir := t.TempDir()
	raw := filepath.Join(dir, "b.raw")
	writeRawBase(t, raw)
	if _, err := InitChain(context.Background(), filepath.Join(dir, "c"), raw, InitChainOptions{Name: "../evil"}); !errors.Is(err, ErrChainInvalidName) {
		t.Errorf("init with name ../evil: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "evil.qcow2")); err == nil {
		t.Errorf("init wrote outside the chain directory")
	}
}

func TestChainBuild(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "chain")
	c := buildTestChain(t, dir)
	checkContent(t, c, allNames()...)

	imgs, err := c.Images(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 3+tcNumVMs {
		t.Fatalf("Images: %d images, want %d", len(imgs), 3+tcNumVMs)
	}
	byName := map[string]ChainImage{}
	for _, ci := range imgs {
		byName[ci.Name] = ci
	}
	wantParent := map[string]string{"base": "", "db": "base", "web": "db"}
	for i := range tcNumVMs {
		wantParent[tcVM(i)] = "web"
	}
	for name, parent := range wantParent {
		ci, ok := byName[name]
		if !ok {
			t.Errorf("Images lacks %s", name)
			continue
		}
		if ci.Parent != parent || ci.File != name+".qcow2" || ci.VirtualSize != tcSize {
			t.Errorf("%s: %+v, want parent %q", name, ci, parent)
		}
		fi, err := os.Stat(filepath.Join(dir, ci.File))
		if err != nil {
			t.Fatal(err)
		}
		wantMode := os.FileMode(0o644)
		if ci.ReadOnly {
			wantMode = 0o444
		}
		if fi.Mode().Perm() != wantMode {
			t.Errorf("%s: mode %v, want %v", name, fi.Mode().Perm(), wantMode)
		}
	}
	// Sizes: what each image stores itself, and what it shows from below.
	for name, want := range map[string][2]int64{
		"base":  {tcBaseN, 0},
		"db":    {tcDBN, tcBaseN},
		"web":   {tcWebN + 64<<10, tcBaseN + tcDBN - 64<<10},
		"vm3":   {tcVMN, tcBaseN + tcDBN + tcWebN},
		"vm9":   {tcVMN, tcBaseN + tcDBN + tcWebN},
		"dummy": {-1, -1},
	} {
		ci, ok := byName[name]
		if !ok {
			continue
		}
		if ci.PrivateBytes != want[0] || ci.SharedBytes != want[1] {
			t.Errorf("%s: private %d shared %d, want %d and %d", name, ci.PrivateBytes, ci.SharedBytes, want[0], want[1])
		}
	}
	if !byName["base"].ReadOnly || !byName["db"].ReadOnly || !byName["web"].ReadOnly || byName["vm0"].ReadOnly {
		t.Errorf("read-only flags: base %v db %v web %v vm0 %v", byName["base"].ReadOnly, byName["db"].ReadOnly, byName["web"].ReadOnly, byName["vm0"].ReadOnly)
	}
	if byName["base"].Depth != 0 || byName["web"].Depth != 2 || byName["vm0"].Depth != 3 || byName["web"].Kind != ChainLevel || byName["vm0"].Kind != ChainVM {
		t.Errorf("depth/kind: base %+v web %+v vm0 %+v", byName["base"], byName["web"], byName["vm0"])
	}
	if got := byName["web"].Children; len(got) != tcNumVMs || got[0] != "vm0" {
		t.Errorf("web children %v", got)
	}

	// Levels with dependents refuse writers; VMs and the API's refusals.
	for _, name := range []string{"base", "db", "web"} {
		if _, err := c.Open(ctx, name, qcow2.Options{Writable: true}); !errors.Is(err, ErrChainReadOnly) {
			t.Errorf("writable open of %s: %v, want ErrChainReadOnly", name, err)
		}
	}
	for _, tc := range []struct {
		op   func() error
		want error
	}{
		{func() error { return c.AddVM(ctx, "vm0", "web") }, ErrChainExists},
		{func() error { return c.AddVM(ctx, "x", "vm0") }, ErrChainKind},
		{func() error { return c.AddLevel(ctx, "x", "nope", AddLevelOptions{}) }, ErrChainNotFound},
		{func() error { return c.AddVM(ctx, "x/y", "web") }, ErrChainInvalidName},
		{func() error { return c.Remove(ctx, "db", RemoveOptions{}) }, ErrChainDependents},
		{func() error { return c.Remove(ctx, "web", RemoveOptions{Force: true}) }, ErrChainDependents},
		{func() error { return c.Remove(ctx, "nope", RemoveOptions{}) }, ErrChainNotFound},
		{func() error { return c.Squash(ctx, "base", SquashOptions{}) }, ErrChainKind},
		{func() error { return c.Squash(ctx, "vm0", SquashOptions{}) }, ErrChainDependents},
		{func() error { _, err := InitChain(ctx, dir, "/dev/null", InitChainOptions{}); return err }, ErrChainExists},
	} {
		if err := tc.op(); !errors.Is(err, tc.want) {
			t.Errorf("got %v, want %v", err, tc.want)
		}
	}

	// Moving the directory keeps every reference working.
	moved := filepath.Join(t.TempDir(), "moved")
	if err := os.Rename(dir, moved); err != nil {
		t.Fatal(err)
	}
	c2, err := OpenChainDir(moved)
	if err != nil {
		t.Fatal(err)
	}
	checkContent(t, c2, "web", "vm4")

	// Removing every VM makes web writable again.
	for i := range tcNumVMs {
		if err := c2.Remove(ctx, tcVM(i), RemoveOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	fi, err := os.Stat(filepath.Join(moved, "web.qcow2"))
	if err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("web after removing its VMs: %v %v", fi.Mode(), err)
	}
	writeImage(t, c2, "web", 0, []byte("writable again"))
	if imgs, err := c2.Images(ctx); err != nil || len(imgs) != 3 {
		t.Errorf("Images after rm: %d %v", len(imgs), err)
	}
}

func TestChainImport(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "chain")
	raw := filepath.Join(t.TempDir(), "base.raw")
	writeRawBase(t, raw)
	c, err := InitChain(ctx, dir, raw, InitChainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The standalone disk: the base with 3 clusters changed, one range of
	// the base zeroed (2 clusters), and data past the base's data.
	disk := filepath.Join(t.TempDir(), "db.raw")
	writeRawBase(t, disk)
	f, err := os.OpenFile(disk, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	const cl = 64 << 10
	f.WriteAt([]byte("changed"), 5*cl+100)
	f.WriteAt(fill(0x77, 2*cl), 40*cl)
	f.WriteAt(make([]byte, 2*cl), 10*cl)
	f.WriteAt(fill(0x99, 100), tcSize-100)
	f.Close()
	var last, total int64
	err = c.AddLevel(ctx, "db", "base", AddLevelOptions{Import: disk, Progress: func(d, tt int64) { last, total = d, tt }})
	if err != nil {
		t.Fatal(err)
	}
	if last != tcSize || total != tcSize {
		t.Errorf("progress ended at %d/%d", last, total)
	}
	want, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, c, "db"); !bytes.Equal(got, want) {
		t.Errorf("imported level differs from the disk at %d", firstDiffAt(got, want))
	}
	imgs, err := c.Images(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Stored: the changed cluster, the two 0x77 clusters and the last
	// cluster; the zeroed range becomes zero clusters (no data).
	if db := imgs[1]; db.Name != "db" || db.PrivateBytes != 4*cl {
		t.Errorf("imported level stores %d bytes, want %d (%+v)", db.PrivateBytes, 4*cl, db)
	}
	if db := imgs[1]; db.FileBytes > 4*cl+512<<10 {
		t.Errorf("imported level takes %d bytes on disk", db.FileBytes)
	}
}

func TestChainSquash(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "chain")
	c := buildTestChain(t, dir)
	// web is db's only child: squash it into db; the VMs move onto db.
	var last, total int64
	if err := c.Squash(ctx, "web", SquashOptions{Progress: func(d, tt int64) { last, total = d, tt }}); err != nil {
		t.Fatal(err)
	}
	if last != total || total == 0 {
		t.Errorf("progress ended at %d/%d", last, total)
	}
	if _, err := os.Stat(filepath.Join(dir, "web.qcow2")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("web.qcow2 still there: %v", err)
	}
	imgs, err := c.Images(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 2+tcNumVMs {
		t.Fatalf("%d images after squash", len(imgs))
	}
	for _, ci := range imgs {
		if ci.Kind == ChainVM && ci.Parent != "db" {
			t.Errorf("%s has parent %q after squash", ci.Name, ci.Parent)
		}
	}
	for i := range tcNumVMs {
		if got, want := readAll(t, c, tcVM(i)), expected(tcVM(i)); !bytes.Equal(got, want) {
			t.Errorf("%s differs after squash at %d", tcVM(i), firstDiffAt(got, want))
		}
	}
	if got, want := readAll(t, c, "db"), expected("web"); !bytes.Equal(got, want) {
		t.Errorf("db does not show web's content after squash (at %d)", firstDiffAt(got, want))
	}
}

func TestChainNotChain(t *testing.T) {
	if _, err := OpenChainDir(t.TempDir()); !errors.Is(err, ErrNotChain) {
		t.Errorf("OpenChainDir of an empty dir: %v", err)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, chainManifest), []byte(`{"format":1,"images":{"../x":"level"}}`), 0o644)
	if _, err := OpenChainDir(dir); !errors.Is(err, ErrNotChain) {
		t.Errorf("manifest with a bad name: %v", err)
	}
	os.WriteFile(filepath.Join(dir, chainManifest), []byte(`{"format":1,"images":{"a":"blob"}}`), 0o644)
	if _, err := OpenChainDir(dir); !errors.Is(err, ErrNotChain) {
		t.Errorf("manifest with a bad kind: %v", err)
	}
}

func TestChainForeignBacking(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "chain")
	raw := filepath.Join(t.TempDir(), "base.raw")
	writeRawBase(t, raw)
	c, err := InitChain(ctx, dir, raw, InitChainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// An image in the directory whose backing file is outside it.
	if err := qcow2.Create(filepath.Join(dir, "evil.qcow2"), qcow2.CreateOptions{BackingFile: raw, BackingFormat: qcow2.FormatRaw}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Images(ctx); !errors.Is(err, ErrChainBroken) {
		t.Errorf("Images with a foreign backing file: %v", err)
	}
	os.Remove(filepath.Join(dir, "evil.qcow2"))
	// An image made by hand on a level is unmanaged but protects its parent.
	if err := qcow2.Create(filepath.Join(dir, "hand.qcow2"), qcow2.CreateOptions{BackingFile: "base.qcow2", BackingFormat: qcow2.FormatQcow2}); err != nil {
		t.Fatal(err)
	}
	if err := c.Remove(ctx, "base", RemoveOptions{Force: true}); !errors.Is(err, ErrChainDependents) {
		t.Errorf("rm base under a hand-made image: %v", err)
	}
	imgs, err := c.Images(ctx)
	if err != nil || len(imgs) != 2 || imgs[1].Kind != ChainUnmanaged {
		t.Errorf("Images: %+v %v", imgs, err)
	}
	if err := c.AddVM(ctx, "v", "hand"); !errors.Is(err, ErrChainKind) {
		t.Errorf("vm on an unmanaged image: %v", err)
	}
}

// TestChainSquashResume: a squash interrupted after its commit, with
// half the children rebased, is finished by the next mutation.
func TestChainSquashResume(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "chain")
	c := buildTestChain(t, dir)
	os.Chmod(filepath.Join(dir, "db.qcow2"), 0o644)
	if err := qcow2.Commit(ctx, filepath.Join(dir, "web.qcow2"), qcow2.CommitOptions{Drop: true}); err != nil {
		t.Fatal(err)
	}
	m, err := c.readManifest()
	if err != nil {
		t.Fatal(err)
	}
	m.Squash = &chainSquashJournal{Name: "web", Into: "db"}
	if err := c.writeManifest(m); err != nil {
		t.Fatal(err)
	}
	for i := range tcNumVMs / 2 {
		p := filepath.Join(dir, tcVM(i)+".qcow2")
		if err := qcow2.Rebase(ctx, p, qcow2.RebaseOptions{Backing: "db.qcow2", BackingFormat: qcow2.FormatQcow2, Unsafe: true}); err != nil {
			t.Fatal(err)
		}
	}
	// Mid-squash the chain reads correctly and lists both parents.
	checkContent(t, c, "vm0", "vm9")
	imgs, err := c.Images(ctx)
	if err != nil || len(imgs) != 3+tcNumVMs {
		t.Fatalf("Images mid-squash: %d %v", len(imgs), err)
	}
	if err := c.AddVM(ctx, "late", "db"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "web.qcow2")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("web.qcow2 survived the resumed squash: %v", err)
	}
	if m, err := c.readManifest(); err != nil || m.Squash != nil || m.Images["web"] != "" {
		t.Errorf("manifest after resume: %+v %v", m, err)
	}
	imgs, err = c.Images(ctx)
	if err != nil || len(imgs) != 3+tcNumVMs {
		t.Fatalf("Images after resume: %d %v", len(imgs), err)
	}
	for _, ci := range imgs {
		if ci.Kind == ChainVM && ci.Parent != "db" {
			t.Errorf("%s: parent %s", ci.Name, ci.Parent)
		}
	}
	for i := range tcNumVMs {
		if got, want := readAll(t, c, tcVM(i)), expected(tcVM(i)); !bytes.Equal(got, want) {
			t.Errorf("%s differs after the resumed squash at %d", tcVM(i), firstDiffAt(got, want))
		}
	}
}

// TestChainConcurrent: mutations from many goroutines (each taking the
// lock file through its own descriptor, as processes do) lose nothing.
func TestChainConcurrent(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "chain")
	raw := filepath.Join(t.TempDir(), "base.raw")
	writeRawBase(t, raw)
	if _, err := InitChain(ctx, dir, raw, InitChainOptions{}); err != nil {
		t.Fatal(err)
	}
	const n = 12
	errs := make(chan error, n)
	for i := range n {
		go func() {
			c, err := OpenChainDir(dir)
			if err == nil {
				err = c.AddVM(ctx, tcVM(i), "base")
			}
			if err == nil && i%3 == 0 {
				_, err = c.Images(ctx)
			}
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	c, _ := OpenChainDir(dir)
	m, err := c.readManifest()
	if err != nil || len(m.Images) != n+1 {
		t.Fatalf("manifest lists %d images after %d concurrent adds: %v", len(m.Images), n, err)
	}
	imgs, err := c.Images(ctx)
	if err != nil || len(imgs) != n+1 || len(imgs[0].Children) != n {
		t.Fatalf("Images: %d %v", len(imgs), err)
	}
}

// TestChainInitFromQcow2Chain: init flattens a qcow2 base that has its
// own backing chain; only data is copied.
func TestChainInitFromQcow2Chain(t *testing.T) {
	ctx := context.Background()
	tmp := t.TempDir()
	raw := filepath.Join(tmp, "lower.raw")
	writeRawBase(t, raw)
	top := filepath.Join(tmp, "top.qcow2")
	if err := qcow2.Create(top, qcow2.CreateOptions{BackingFile: "lower.raw", BackingFormat: qcow2.FormatRaw}); err != nil {
		t.Fatal(err)
	}
	img, err := qcow2.Open(top, qcow2.Options{Writable: true})
	if err != nil {
		t.Fatal(err)
	}
	img.WriteAt(fill(0x42, 64<<10), 8<<20)
	img.Close()
	c, err := InitChain(ctx, filepath.Join(tmp, "chain"), top, InitChainOptions{Name: "os", ClusterSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	want := expected("base")
	copy(want[8<<20:], fill(0x42, 64<<10))
	if got := readAll(t, c, "os"); !bytes.Equal(got, want) {
		t.Errorf("flattened base differs at %d", firstDiffAt(got, want))
	}
	imgs, err := c.Images(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if imgs[0].Name != "os" || imgs[0].Parent != "" || imgs[0].PrivateBytes != tcBaseN+64<<10 {
		t.Errorf("base %+v", imgs[0])
	}
	chk, err := qcow2.CheckFile(filepath.Join(tmp, "chain", "os.qcow2"), qcow2.RepairNone, qcow2.Options{})
	if err != nil || chk.ExitCode() != 0 {
		t.Errorf("check: %+v %v", chk, err)
	}
	o, err := c.Open(ctx, "os", qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if o.ClusterSize() != 4096 {
		t.Errorf("cluster size %d, want 4096", o.ClusterSize())
	}
}

// TestChainUmask: under umask 077 a chain stays private. Levels with
// dependents lose only their write bits (0400), the others are 0600,
// where fixed modes once made every image world-readable.
func TestChainUmask(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "chain")
	raw := filepath.Join(t.TempDir(), "base.raw")
	writeRawBase(t, raw)
	c, err := InitChain(ctx, dir, raw, InitChainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.AddLevel(ctx, "db", "base", AddLevelOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.AddVM(ctx, "vm0", "db"); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]os.FileMode{"base": 0o400, "db": 0o400, "vm0": 0o600} {
		fi, err := os.Stat(filepath.Join(dir, name+".qcow2"))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", name, fi.Mode().Perm(), want)
		}
	}
	// Removing the VM makes db writable again, by its owner only.
	if err := c.Remove(ctx, "vm0", RemoveOptions{}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "db.qcow2")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("db after removing its VM: %v, %v; want 0600", fi.Mode(), err)
	}
}
