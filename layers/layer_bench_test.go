package layers

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/imgtool/imgtool/internal/testutil"
	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// benchTreeBytes is the size of the benchmark tree: 200 MiB of files.
const benchTreeBytes = 200 << 20

// benchTree builds (once, cached under os.TempDir()) a 200 MiB tree of
// files from 1 KiB to 8 MiB whose content compresses about 3:1, plus dirs
// and symlinks. It returns the dir.
func benchTree(b *testing.B) string {
	b.Helper()
	dir := filepath.Join(os.TempDir(), "imgtool-layers-bench-tree-200m")
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err == nil {
		return dir
	}
	os.RemoveAll(dir)
	r := rand.New(rand.NewPCG(1, 2))
	words := strings.Fields("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore magna aliqua")
	var written int64
	for f := 0; written < benchTreeBytes; f++ {
		size := 1 << (10 + r.IntN(14)) // 1 KiB .. 8 MiB
		size = min(size, benchTreeBytes-int(written))
		buf := make([]byte, 0, size+16)
		for len(buf) < size {
			if r.IntN(3) == 0 {
				buf = append(buf, byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32()))
			} else {
				buf = append(buf, words[r.IntN(len(words))]...)
				buf = append(buf, ' ')
			}
		}
		buf = buf[:size]
		p := filepath.Join(dir, fmt.Sprintf("d%02d/s%d/f%05d", f%40, f%7, f))
		must(b, os.MkdirAll(filepath.Dir(p), 0o755))
		must(b, os.WriteFile(p, buf, 0o644))
		if f%50 == 0 {
			must(b, os.Symlink(filepath.Base(p), p+".link"))
		}
		written += int64(size)
	}
	must(b, os.WriteFile(filepath.Join(dir, ".complete"), nil, 0o644))
	return dir
}

// benchLayer creates (once, cached) the layer blob of the bench tree.
func benchLayer(b *testing.B, c Compression) (string, Descriptor) {
	b.Helper()
	tree := benchTree(b)
	path := filepath.Join(os.TempDir(), "imgtool-layers-bench-layer-200m-v3."+c.String())
	if f, err := os.Open(path); err == nil {
		defer f.Close()
		d, err := List(context.Background(), f, nil, Limits{})
		if err == nil {
			return path, d
		}
	}
	f, err := os.Create(path + ".tmp")
	must(b, err)
	d, err := Create(context.Background(), f, tree, CreateOptions{Compression: c})
	must(b, err)
	must(b, f.Close())
	must(b, os.Rename(path+".tmp", path))
	return path, d
}

// benchLayout writes a minimal OCI image layout holding one image whose
// only layer is the blob at path, tagged "bench", for umoci.
func benchLayout(b *testing.B, path string, d Descriptor) string {
	b.Helper()
	return writeTestLayout(b, b.TempDir(), "bench", []string{path}, []Descriptor{d})
}

// writeTestLayout writes an OCI image layout into dir by hand (oci-layout,
// index.json, manifest, config, blobs hard-linked from paths) holding one
// image with the given layers, tagged tag. It is independent of the
// package's layout code so that umoci judges our layers alone.
func writeTestLayout(tb testing.TB, dir, tag string, paths []string, descs []Descriptor) string {
	tb.Helper()
	blobs := filepath.Join(dir, "blobs", "sha256")
	must(tb, os.MkdirAll(blobs, 0o755))
	put := func(v any) (digest.Digest, int64) {
		raw, err := json.Marshal(v)
		must(tb, err)
		dg := digest.FromBytes(raw)
		must(tb, os.WriteFile(filepath.Join(blobs, dg.Encoded()), raw, 0o644))
		return dg, int64(len(raw))
	}
	var diffIDs []string
	var layers []any
	for i, d := range descs {
		dst := filepath.Join(blobs, d.Digest.Encoded())
		if _, err := os.Stat(dst); err != nil {
			must(tb, os.Link(paths[i], dst))
		}
		diffIDs = append(diffIDs, d.DiffID.String())
		layers = append(layers, map[string]any{"mediaType": d.MediaType, "digest": d.Digest, "size": d.Size})
	}
	cfg, cfgSize := put(map[string]any{
		"architecture": "amd64", "os": "linux",
		"rootfs": map[string]any{"type": "layers", "diff_ids": diffIDs},
	})
	man, manSize := put(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": cfgSize},
		"layers": layers,
	})
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"manifests": []any{map[string]any{
			"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": man, "size": manSize,
			"annotations": map[string]string{"org.opencontainers.image.ref.name": tag},
		}},
	})
	must(tb, err)
	must(tb, os.WriteFile(filepath.Join(dir, "index.json"), index, 0o644))
	must(tb, os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644))
	return dir
}

// BenchmarkUnpack unpacks a 200 MiB layer (gzip and zstd) with Apply,
// with `umoci raw unpack` of a layout holding it, and with
// go-containerregistry's mutate.Extract plus a plain archive/tar
// extraction. MB/s are of uncompressed tar bytes; cpu-s/op counts the CPU
// seconds of the process and its children (see cpuMeter); removing the
// output between iterations is not measured.
//
//	go test -run '^$' -bench BenchmarkUnpack -benchtime 3x ./layers
func BenchmarkUnpack(b *testing.B) {
	for _, c := range []Compression{Gzip, Zstd} {
		b.Run(c.String(), func(b *testing.B) {
			path, d := benchLayer(b, c)
			out := filepath.Join(b.TempDir(), "out")
			run := func(b *testing.B, unpack func()) {
				b.SetBytes(d.UncompressedSize)
				b.ReportAllocs()
				var cpu cpuMeter
				for b.Loop() {
					b.StopTimer()
					must(b, os.RemoveAll(out))
					b.StartTimer()
					cpu.start()
					unpack()
					cpu.stop()
				}
				cpu.report(b)
			}
			b.Run("imgtool", func(b *testing.B) {
				run(b, func() {
					f, err := os.Open(path)
					must(b, err)
					defer f.Close()
					_, err = Apply(context.Background(), f, out, ApplyOptions{ExpectDigest: d.Digest, ExpectDiffID: d.DiffID})
					must(b, err)
				})
			})
			b.Run("umoci", func(b *testing.B) {
				testutil.NeedTool(b, "umoci")
				layout := benchLayout(b, path, d)
				if _, err := testutil.Exec("umoci", "raw", "unpack", "--image", layout+":bench", out); err != nil {
					b.Skipf("umoci cannot unpack a %s layer: %v", d.MediaType, err)
				}
				run(b, func() { testutil.Run(b, "umoci", "raw", "unpack", "--image", layout+":bench", out) })
			})
			b.Run("ggcr-extract", func(b *testing.B) {
				l, err := tarball.LayerFromFile(path)
				must(b, err)
				img, err := mutate.AppendLayers(empty.Image, l)
				must(b, err)
				run(b, func() {
					rc := mutate.Extract(img)
					defer rc.Close()
					must(b, naiveExtract(rc, out))
				})
			})
		})
	}
}

// naiveExtract is the archive/tar extraction a go-containerregistry user
// writes around mutate.Extract (it has no hardening; benchmark only).
func naiveExtract(r io.Reader, dir string) error {
	tr := tar.NewReader(r)
	buf := make([]byte, 1<<20)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		p := filepath.Join(dir, h.Name)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, os.FileMode(h.Mode)&0o7777); err != nil {
				return err
			}
		case tar.TypeReg:
			os.MkdirAll(filepath.Dir(p), 0o755)
			f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, os.FileMode(h.Mode)&0o7777)
			if err != nil {
				return err
			}
			if _, err := io.CopyBuffer(f, tr, buf); err != nil {
				f.Close()
				return err
			}
			if err := f.Close(); err != nil {
				return err
			}
			os.Chtimes(p, h.ModTime, h.ModTime)
		case tar.TypeSymlink:
			os.Symlink(h.Linkname, p)
		}
	}
}

// BenchmarkCreate makes a layer of a 200 MiB tree with Create (gzip,
// zstd at the default level 3 and at level 1) and with `tar -c | gzip`
// and `tar -c | zstd -T0` (levels 3 and 1) exec'd. MB/s are of file
// bytes; cpu-s/op (CPU seconds of the process and its children) and
// blob-bytes compare work and ratio, which the noise of a shared machine
// leaves alone.
//
//	go test -run '^$' -bench BenchmarkCreate -benchtime 3x ./layers
func BenchmarkCreate(b *testing.B) {
	tree := benchTree(b)
	out := filepath.Join(b.TempDir(), "layer")
	run := func(b *testing.B, create func()) {
		b.SetBytes(benchTreeBytes)
		b.ReportAllocs()
		var cpu cpuMeter
		for b.Loop() {
			cpu.start()
			create()
			cpu.stop()
		}
		cpu.report(b)
		st, err := os.Stat(out)
		must(b, err)
		b.ReportMetric(float64(st.Size()), "blob-bytes")
	}
	for _, bc := range []struct {
		name  string
		c     Compression
		level int
	}{{"gzip", Gzip, 0}, {"zstd", Zstd, 0}, {"zstd-1", Zstd, 1}} {
		b.Run("imgtool-"+bc.name, func(b *testing.B) {
			run(b, func() {
				f, err := os.Create(out)
				must(b, err)
				_, err = Create(context.Background(), f, tree, CreateOptions{Compression: bc.c, Level: bc.level})
				must(b, err)
				must(b, f.Close())
			})
		})
	}
	for _, pc := range []struct{ name, cmd string }{
		{"tar|gzip", "gzip"}, {"tar|zstd", "zstd -q -T0"}, {"tar|zstd-1", "zstd -q -T0 -1"},
	} {
		b.Run(pc.name, func(b *testing.B) {
			testutil.NeedTool(b, "tar", strings.Fields(pc.cmd)[0])
			run(b, func() { testutil.Run(b, "sh", "-c", "tar -C "+tree+" -cf - . | "+pc.cmd+" > "+out) })
		})
	}
}

// cpuMeter adds up the CPU time (user and system) of this process and of
// its waited-for children between start and stop; on a shared machine it
// varies much less than the wall time.
type cpuMeter struct {
	t0, total time.Duration
	n         int
}

func cpuTime() time.Duration {
	var self, kids unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &self) != nil || unix.Getrusage(unix.RUSAGE_CHILDREN, &kids) != nil {
		return 0
	}
	ns := self.Utime.Nano() + self.Stime.Nano() + kids.Utime.Nano() + kids.Stime.Nano()
	return time.Duration(ns)
}

func (m *cpuMeter) start() { m.t0 = cpuTime() }
func (m *cpuMeter) stop()  { m.total += cpuTime() - m.t0; m.n++ }

func (m *cpuMeter) report(b *testing.B) {
	if m.n > 0 {
		b.ReportMetric(m.total.Seconds()/float64(m.n), "cpu-s/op")
	}
}
