package vmchain

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imgtool/imgtool/internal/imagelock"
	"github.com/imgtool/imgtool/internal/testutil"
)

// qemuChainCheck runs qemu-img check on every image of the chain.
func qemuChainCheck(t *testing.T, c *ChainDir) {
	t.Helper()
	imgs, err := c.Images(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, ci := range imgs {
		testutil.Run(t, "qemu-img", "check", "-q", filepath.Join(c.Dir(), ci.File))
	}
}

// qemuReadPatterns has qemu-io read image path through its backing chain
// and verify each range's pattern ("read -P").
func qemuReadPatterns(t *testing.T, path string, checks [][3]int64) {
	t.Helper()
	args := []string{"-r", "-f", "qcow2"}
	for _, ck := range checks {
		args = append(args, "-c", fmt.Sprintf("read -q -P 0x%x %d %d", ck[0], ck[1], ck[2]))
	}
	out := testutil.Run(t, "qemu-io", append(args, path)...)
	if len(out) > 0 {
		t.Errorf("qemu-io on %s: %s", path, out)
	}
}

// vmChecks lists the ranges VM i must show: every level's pattern, its own
// write, and its siblings' ranges as zeros.
func vmChecks(i int) [][3]int64 {
	ck := [][3]int64{
		{0xBA, tcBaseAt, 1 << 20}, // base, up to web's 0xEC cluster at 1 MiB
		{0xEC, 1 << 20, 64 << 10},
		{0xBA, 1<<20 + 64<<10, tcBaseN - (1<<20 + 64<<10)},
		{0xDB, tcDBAt, tcDBN},
		{0xEB, tcWebAt, tcWebN},
		{0, tcWebAt + tcWebN, tcVMAt - tcWebAt - tcWebN},
	}
	for j := range tcNumVMs {
		p := int64(0)
		if i == j {
			p = int64(tcVMPattern(j))
		}
		ck = append(ck, [3]int64{p, tcVMOff(j), tcVMN})
	}
	return ck
}

func TestChainQemuInterop(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "chain")
	c := buildTestChain(t, dir)

	// QEMU writes into a VM like a guest would; it stays private.
	testutil.Run(t, "qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -q -P 0x%x %d %d", tcVMPattern(7)+0x40, 15<<20, 4096), filepath.Join(dir, "vm7.qcow2"))
	qemuReadPatterns(t, filepath.Join(dir, "vm7.qcow2"), [][3]int64{{int64(tcVMPattern(7)) + 0x40, 15 << 20, 4096}})
	for _, name := range []string{"vm6", "vm8", "web", "db", "base"} {
		qemuReadPatterns(t, filepath.Join(dir, name+".qcow2"), [][3]int64{{0, 15 << 20, 4096}})
	}

	qemuChainCheck(t, c)
	for i := range tcNumVMs {
		qemuReadPatterns(t, filepath.Join(dir, tcVM(i)+".qcow2"), vmChecks(i))
	}
	// The levels do not see any VM's write.
	qemuReadPatterns(t, filepath.Join(dir, "web.qcow2"), [][3]int64{{0xEB, tcWebAt, tcWebN}, {0, tcVMAt, tcNumVMs * tcVMStep}})
	qemuReadPatterns(t, filepath.Join(dir, "db.qcow2"), [][3]int64{{0xBA, 1 << 20, 64 << 10}, {0, tcWebAt, tcWebN}})

	// qemu-img info --backing-chain: vm -> web -> db -> base, relative names.
	assertQemuChain := func(path string, want ...string) {
		t.Helper()
		var infos []struct {
			Filename        string `json:"filename"`
			BackingFilename string `json:"backing-filename"`
		}
		out := testutil.Run(t, "qemu-img", "info", "--backing-chain", "--output=json", path)
		if err := json.Unmarshal(out, &infos); err != nil {
			t.Fatalf("qemu-img info: %v\n%s", err, out)
		}
		if len(infos) != len(want) {
			t.Fatalf("qemu-img info --backing-chain %s: %d images, want %d\n%s", path, len(infos), len(want), out)
		}
		for k, in := range infos {
			if in.Filename != filepath.Join(filepath.Dir(path), want[k]+".qcow2") {
				t.Errorf("chain[%d] = %s, want %s.qcow2", k, in.Filename, want[k])
			}
			wb := ""
			if k+1 < len(want) {
				wb = want[k+1] + ".qcow2"
			}
			if in.BackingFilename != wb {
				t.Errorf("%s has backing-filename %q, want the relative %q", in.Filename, in.BackingFilename, wb)
			}
		}
	}
	assertQemuChain(filepath.Join(dir, "vm3.qcow2"), "vm3", "web", "db", "base")

	// A running QEMU holding a VM keeps rm from removing it (unless forced)
	// and squash from rewriting it.
	cmd := exec.Command("qemu-io", "-f", "qcow2", "-c", "sleep 20000", filepath.Join(dir, "vm0.qcow2"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	// Wait until qemu-io holds its locks on vm0.
	vm0 := filepath.Join(dir, "vm0.qcow2")
	for i := 0; ; i++ {
		f, err := lockImage(vm0, imagelock.Writer, false)
		if err != nil {
			break
		}
		f.Close()
		if i == 200 {
			t.Fatal("qemu-io did not open vm0 within 10 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	err := c.Remove(ctx, "vm0", RemoveOptions{})
	if !errors.Is(err, imagelock.ErrLocked) {
		t.Errorf("rm of a VM that qemu-io has open: %v, want imagelock.ErrLocked", err)
	}
	if err := c.AddLevel(ctx, "extra", "web", AddLevelOptions{}); err != nil {
		t.Errorf("adding a level next to a running VM: %v", err)
	} else if err := c.Remove(ctx, "extra", RemoveOptions{}); err != nil {
		t.Fatal(err)
	}
	// Squashing web would rewrite vm0's header: refused before any change.
	if err := c.Squash(ctx, "web", SquashOptions{}); !errors.Is(err, imagelock.ErrLocked) {
		t.Errorf("squash of web while qemu-io has vm0 open: %v, want imagelock.ErrLocked", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "web.qcow2")); err != nil || fi.Mode().Perm() != 0o444 {
		t.Errorf("web after the refused squash: %v %v", fi, err)
	}
	// --force removes it all the same; put vm0 back afterwards.
	if err := c.Remove(ctx, "vm0", RemoveOptions{Force: true}); err != nil {
		t.Errorf("forced rm of a VM in use: %v", err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	if err := c.AddVM(ctx, "vm0", "web"); err != nil {
		t.Fatal(err)
	}
	writeImage(t, c, "vm0", tcVMOff(0), fill(tcVMPattern(0), tcVMN))
	qemuReadPatterns(t, vm0, vmChecks(0))

	// Move the directory: QEMU still opens every VM through the chain.
	moved := filepath.Join(t.TempDir(), "moved")
	if err := os.Rename(dir, moved); err != nil {
		t.Fatal(err)
	}
	c, err = OpenChainDir(moved)
	if err != nil {
		t.Fatal(err)
	}
	assertQemuChain(filepath.Join(moved, "vm9.qcow2"), "vm9", "web", "db", "base")
	qemuReadPatterns(t, filepath.Join(moved, "vm9.qcow2"), vmChecks(9))

	// A copy works on its own: QEMU resolves it inside the copy, and a
	// write into a copied VM leaves the original alone.
	copied := filepath.Join(t.TempDir(), "copied")
	testutil.Run(t, "cp", "-a", moved, copied)
	assertQemuChain(filepath.Join(copied, "vm5.qcow2"), "vm5", "web", "db", "base")
	testutil.Run(t, "qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -q -P 0x77 %d %d", tcVMOff(5), tcVMN), filepath.Join(copied, "vm5.qcow2"))
	qemuReadPatterns(t, filepath.Join(moved, "vm5.qcow2"), vmChecks(5))
	if cc, err := OpenChainDir(copied); err != nil {
		t.Error(err)
	} else if imgs, err := cc.Images(ctx); err != nil || len(imgs) != 3+tcNumVMs {
		t.Errorf("copied chain: %d images, %v", len(imgs), err)
	}

	// Squash web into db: snapshot every dependent first, then compare.
	before := t.TempDir()
	for i := range tcNumVMs {
		testutil.Run(t, "qemu-img", "convert", "-O", "raw", filepath.Join(moved, tcVM(i)+".qcow2"), filepath.Join(before, tcVM(i)+".raw"))
	}
	testutil.Run(t, "qemu-img", "convert", "-O", "raw", filepath.Join(moved, "web.qcow2"), filepath.Join(before, "web.raw"))
	if err := c.Squash(ctx, "web", SquashOptions{}); err != nil {
		t.Fatal(err)
	}
	qemuChainCheck(t, c)
	for i := range tcNumVMs {
		testutil.Run(t, "qemu-img", "compare", "-q", filepath.Join(before, tcVM(i)+".raw"), filepath.Join(moved, tcVM(i)+".qcow2"))
	}
	testutil.Run(t, "qemu-img", "compare", "-q", filepath.Join(before, "web.raw"), filepath.Join(moved, "db.qcow2"))
	assertQemuChain(filepath.Join(moved, "vm2.qcow2"), "vm2", "db", "base")
}

// TestChainQemuImport: a standalone disk made and changed by QEMU tools
// is imported as a level that stores only the changed clusters, and
// qemu-img compare finds the level identical to the disk.
func TestChainQemuImport(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	ctx := context.Background()
	tmp := t.TempDir()
	raw := filepath.Join(tmp, "base.raw")
	writeRawBase(t, raw)
	dir := filepath.Join(tmp, "chain")
	c, err := InitChain(ctx, dir, raw, InitChainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Run(t, "qemu-img", "compare", "-q", raw, filepath.Join(dir, "base.qcow2"))
	// The "base with a database installed": a qcow2 copy QEMU changes.
	full := filepath.Join(tmp, "full.qcow2")
	testutil.Run(t, "qemu-img", "convert", "-O", "qcow2", raw, full)
	const cl = 64 << 10
	changed := int64(0)
	for _, w := range []struct {
		pat      byte
		off, len int64
	}{
		{0x55, 3 * cl, 1000},     // part of one cluster of the base's data
		{0x66, 20 * cl, 3 * cl},  // three clusters where the base is zero
		{0x77, 254 * cl, 2 * cl}, // the end of the disk (the last 2 clusters)
	} {
		testutil.Run(t, "qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -q -P 0x%x %d %d", w.pat, w.off, w.len), full)
		changed += (w.off+w.len+cl-1)/cl*cl - w.off/cl*cl
	}
	// Rewriting a range with the same bytes it had is no change.
	testutil.Run(t, "qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -q -P 0xba %d %d", 8*cl, cl), full)
	if err := c.AddLevel(ctx, "db", "base", AddLevelOptions{Import: full}); err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(dir, "db.qcow2")
	testutil.Run(t, "qemu-img", "check", "-q", db)
	testutil.Run(t, "qemu-img", "compare", "-q", full, db)
	// What the level file stores (depth 0 data in qemu-img map), and
	// what the whole file takes (allocated size; metadata is a few
	// clusters).
	var runs []struct {
		Length int64 `json:"length"`
		Depth  int   `json:"depth"`
		Data   bool  `json:"data"`
	}
	out := testutil.Run(t, "qemu-img", "map", "--output=json", db)
	if err := json.Unmarshal(out, &runs); err != nil {
		t.Fatalf("qemu-img map: %v\n%s", err, out)
	}
	stored := int64(0)
	for _, r := range runs {
		if r.Depth == 0 && r.Data {
			stored += r.Length
		}
	}
	if stored != changed {
		t.Errorf("imported level stores %d bytes of data, want the %d changed", stored, changed)
	}
	alloc, err := fileAllocated(db)
	if err != nil {
		t.Fatal(err)
	}
	if alloc > changed+8*cl {
		t.Errorf("imported level file takes %d bytes for %d changed", alloc, changed)
	}
	t.Logf("changed %d bytes; level stores %d, file allocates %d (full disk allocates %s)", changed, stored, alloc, strings.TrimSpace(string(testutil.Run(t, "du", "-B1", full))))
}
