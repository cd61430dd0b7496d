package vmchain

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/imgtool/imgtool/internal/testutil"
)

// Benchmark inputs: a 256 MiB base disk with random data in its first
// half, and a standalone disk equal to it except for every 8th 64 KiB
// cluster of the first 192 MiB (rewritten), as an "installed a package"
// delta of 24 MiB.
const (
	benchChainSize = 256 << 20
	benchChainData = 128 << 20
)

func benchChainInputs(b *testing.B) (base, disk string) {
	b.Helper()
	dir := b.TempDir()
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, benchChainSize)
	for i := 0; i < benchChainData; i += 8 {
		v := rng.Uint64()
		for k := range 8 {
			buf[i+k] = byte(v >> (8 * k))
		}
	}
	base = filepath.Join(dir, "base.raw")
	if err := os.WriteFile(base, buf, 0o644); err != nil {
		b.Fatal(err)
	}
	for c := 0; c < 192<<20; c += 8 << 16 {
		for k := range 64 << 10 {
			buf[c+k] ^= 0x5a
		}
	}
	disk = filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(disk, buf, 0o644); err != nil {
		b.Fatal(err)
	}
	return base, disk
}

// BenchmarkChainImport measures chain add --import: comparing a 256 MiB
// standalone disk with its parent level and storing the 24 MiB that
// differ. The peer is qemu-img convert -O qcow2 -B, which does the same.
func BenchmarkChainImport(b *testing.B) {
	ctx := context.Background()
	base, disk := benchChainInputs(b)
	dir := filepath.Join(b.TempDir(), "chain")
	c, err := InitChain(ctx, dir, base, InitChainOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("imgtool", func(b *testing.B) {
		b.SetBytes(benchChainSize)
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			name := "db" + strconv.Itoa(i)
			if err := c.AddLevel(ctx, name, "base", AddLevelOptions{Import: disk}); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if err := c.Remove(ctx, name, RemoveOptions{}); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	})
	b.Run("qemu-img", func(b *testing.B) {
		testutil.NeedTool(b, "qemu-img")
		b.SetBytes(benchChainSize)
		out := filepath.Join(dir, "peer.qcow2")
		for b.Loop() {
			testutil.Run(b, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-B", "base.qcow2", "-F", "qcow2", disk, out)
			b.StopTimer()
			os.Remove(out)
			b.StartTimer()
		}
	})
}

// BenchmarkChainSquash measures chain squash of a level holding 24 MiB
// into its 256 MiB parent, with one VM rebased. The peer is qemu-img
// commit -d of the level plus qemu-img rebase -u of the VM. Setup (a
// fresh chain per iteration) is not timed.
func BenchmarkChainSquash(b *testing.B) {
	ctx := context.Background()
	base, disk := benchChainInputs(b)
	setup := func(b *testing.B) *ChainDir {
		b.Helper()
		dir := filepath.Join(b.TempDir(), "chain")
		c, err := InitChain(ctx, dir, base, InitChainOptions{})
		if err == nil {
			err = c.AddLevel(ctx, "db", "base", AddLevelOptions{Import: disk})
		}
		if err == nil {
			err = c.AddVM(ctx, "vm", "db")
		}
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	b.Run("imgtool", func(b *testing.B) {
		b.SetBytes(24 << 20)
		b.ReportAllocs()
		for b.Loop() {
			b.StopTimer()
			c := setup(b)
			b.StartTimer()
			if err := c.Squash(ctx, "db", SquashOptions{}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("qemu-img", func(b *testing.B) {
		testutil.NeedTool(b, "qemu-img")
		b.SetBytes(24 << 20)
		for b.Loop() {
			b.StopTimer()
			c := setup(b)
			os.Chmod(filepath.Join(c.Dir(), "base.qcow2"), 0o644)
			b.StartTimer()
			testutil.Run(b, "qemu-img", "commit", "-d", filepath.Join(c.Dir(), "db.qcow2"))
			testutil.Run(b, "qemu-img", "rebase", "-u", "-b", "base.qcow2", "-F", "qcow2", filepath.Join(c.Dir(), "vm.qcow2"))
		}
	})
}
