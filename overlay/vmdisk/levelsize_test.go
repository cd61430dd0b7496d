package vmdisk

import (
	"context"
	"fmt"
	"math/rand"
	"path/filepath"
	"testing"

	"github.com/imgtool/imgtool/layers"
)

// randomFiles makes n files of random content and sizes up to max bytes
// under dir, with a seeded generator.
func randomFiles(rng *rand.Rand, dir string, n, max int) ([]tarEntry, int64) {
	es := []tarEntry{dirE(dir + "/")}
	var total int64
	for i := 0; i < n; i++ {
		b := make([]byte, 1+rng.Intn(max))
		rng.Read(b)
		es = append(es, fileE(fmt.Sprintf("%s/f%04d", dir, i), 0o644, b))
		total += int64(len(b))
	}
	return es, total
}

// TestLevelSize checks the size goal on a 5-layer image: each level file
// is at most 1.1 x the file data its layer adds + 2 MiB, at the default
// 16 GiB size and 4 KiB clusters.
func TestLevelSize(t *testing.T) {
	rng := rand.New(rand.NewSource(5))
	dir := t.TempDir()
	var paths []string
	var adds []int64
	for k := 0; k < 5; k++ {
		es, n := randomFiles(rng, fmt.Sprintf("usr/l%d", k), 100+50*k, 200<<10)
		es = append([]tarEntry{dirE("usr/")}, es...)
		if k > 0 {
			// Replace and delete some of the previous layer's files.
			more, m := randomFiles(rng, fmt.Sprintf("usr/l%d", k-1), 20, 100<<10)
			es = append(es, more[1:]...)
			n += m
			es = append(es, fileE(fmt.Sprintf("usr/l%d/.wh.f0050", k-1), 0o644, nil))
		}
		p := filepath.Join(dir, fmt.Sprintf("%d.tar", k))
		writeTar(t, p, es)
		paths = append(paths, p)
		adds = append(adds, n)
	}
	res, err := Build(context.Background(), layers.ImageRef{Dir: layoutOf(t, dir, paths), Tag: "v"}, filepath.Join(dir, "disk"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	for k, lv := range res.Levels {
		limit := adds[k]*11/10 + 2<<20
		t.Logf("level %d: file %d bytes, layer adds %d bytes of data (file = %.3f x data, or data + %d KiB); limit 1.1 x data + 2 MiB = %d",
			k, lv.FileSize, adds[k], float64(lv.FileSize)/float64(adds[k]), (lv.FileSize-adds[k])>>10, limit)
		if lv.FileSize > limit {
			t.Errorf("level %d: %d bytes > 1.1 x %d + 2 MiB", k, lv.FileSize, adds[k])
		}
	}
}

// TestLevelSizeSmallFiles: for a layer of small files the goal of 1.1 x
// data + 2 MiB cannot hold with 4 KiB blocks (a 1-byte file takes a whole
// block, in mkfs.ext4 -d's filesystems too), so the bound checked is the
// one the allocator controls: 1.1 x the layer's data in whole blocks,
// plus 2 MiB. The raw ratio is logged.
func TestLevelSizeSmallFiles(t *testing.T) {
	rng := rand.New(rand.NewSource(6))
	dir := t.TempDir()
	var paths []string
	var adds, blocks []int64
	for k := 0; k < 2; k++ {
		es := []tarEntry{dirE("etc/")}
		var n, nb int64
		for i := 0; i < 3000; i++ {
			b := make([]byte, 1+rng.Intn(6000))
			rng.Read(b)
			es = append(es, fileE(fmt.Sprintf("etc/l%d-%05d", k, i), 0o644, b))
			n += int64(len(b))
			nb += (int64(len(b)) + 4095) / 4096
		}
		p := filepath.Join(dir, fmt.Sprintf("%d.tar", k))
		writeTar(t, p, es)
		paths = append(paths, p)
		adds, blocks = append(adds, n), append(blocks, nb*4096)
	}
	res, err := Build(context.Background(), layers.ImageRef{Dir: layoutOf(t, dir, paths), Tag: "v"}, filepath.Join(dir, "disk"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	for k, lv := range res.Levels {
		limit := blocks[k]*11/10 + 2<<20
		t.Logf("level %d: file %d bytes; data %d bytes (%.3f x), in blocks %d bytes (%.3f x); limit %d",
			k, lv.FileSize, adds[k], float64(lv.FileSize)/float64(adds[k]), blocks[k], float64(lv.FileSize)/float64(blocks[k]), limit)
		if lv.FileSize > limit {
			t.Errorf("level %d: %d bytes > 1.1 x %d bytes of blocks + 2 MiB", k, lv.FileSize, blocks[k])
		}
	}
}
