package main

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/imgtool/imgtool/internal/testutil"
)

// BenchmarkLazy: a 3-level chain (1 GiB virtual, 64 MiB of data per
// level) pushed to the real docker-registry on loopback.
//
//   - map: `imgtool map --output=json` of the local chain, of
//     docker://REF (each run a new client and cache: manifest, tar
//     headers and qcow2 metadata by range), and qemu-img map of the local
//     chain.
//   - convert: `imgtool convert -O raw` of the local chain and of
//     docker://REF; bytes are the chain's level blob bytes, so MB/s is
//     how fast the lazy reader moves the chain's data.
//
// Run: go test ./cmd/imgtool -run '^$' -bench Lazy -benchtime 10x
func BenchmarkLazy(b *testing.B) {
	reg := testutil.StartRegistry(b, testutil.RegistryOptions{})
	dir := b.TempDir()
	top := lazyChain(b, dir, 64)
	blobBytes := lazyPush(b, top, reg.Host+"/vm:2")
	ref := "docker://" + reg.Host + "/vm:2"
	cli := func(b *testing.B, args ...string) {
		if code := run(args, io.Discard, os.Stderr); code != 0 {
			b.Fatalf("imgtool %v: exit %d", args, code)
		}
	}
	b.Run("map", func(b *testing.B) {
		b.Run("local", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				cli(b, "map", "--output=json", top)
			}
		})
		b.Run("lazy", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				cli(b, "map", "--output=json", ref)
			}
		})
		b.Run("qemu-img-local", func(b *testing.B) {
			testutil.NeedTool(b, "qemu-img")
			for b.Loop() {
				if out, err := exec.Command("qemu-img", "map", "--output=json", top).CombinedOutput(); err != nil {
					b.Fatalf("qemu-img map: %v: %s", err, out)
				}
			}
		})
	})
	b.Run("convert-raw", func(b *testing.B) {
		out := filepath.Join(b.TempDir(), "out.raw")
		for _, c := range []struct{ name, src string }{{"local", top}, {"lazy", ref}} {
			b.Run(c.name, func(b *testing.B) {
				b.SetBytes(blobBytes)
				b.ReportAllocs()
				for b.Loop() {
					os.Remove(out)
					cli(b, "convert", "-O", "raw", c.src, out)
				}
			})
		}
	})
}
