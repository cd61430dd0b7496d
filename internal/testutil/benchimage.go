package testutil

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// BenchImage is an OCI layout made by BenchLayout.
type BenchImage struct {
	Dir          string // the layout; the image is tagged "bench"
	Tag          string
	Layers       int
	Compressed   int64 // bytes of all layer blobs
	Uncompressed int64 // bytes of all layer tars
	Files        int   // regular files in all layers
}

// BenchLayout returns an OCI layout holding one image of n gzip layers of
// about layerBytes compressed each, built on first use and cached under
// os.TempDir() (imgtool-bench-registry-*; delete it to rebuild). The
// layers look like a distribution's: many files in nested directories,
// sizes from 256 B to 4 MiB, most of them small, about two in three of them text (scripts,
// configs, logs; gzip shrinks them several times) and the rest random bytes
// (binaries, compressed data), plus symlinks. The content is
// fixed by a seed, so every rebuild makes the same image.
func BenchLayout(tb testing.TB, n int, layerBytes int64) *BenchImage {
	tb.Helper()
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("imgtool-bench-registry-%dx%d", n, layerBytes))
	meta := filepath.Join(dir, "bench.json")
	var bi BenchImage
	if b, err := os.ReadFile(meta); err == nil && json.Unmarshal(b, &bi) == nil {
		return &bi
	}
	os.RemoveAll(dir)
	start := time.Now()
	bi = BenchImage{Dir: dir, Tag: "bench", Layers: n}
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
		tb.Fatal(err)
	}
	put := func(b []byte) ocispec.Descriptor {
		d := digest.FromBytes(b)
		if err := os.WriteFile(filepath.Join(dir, "blobs", "sha256", d.Encoded()), b, 0o644); err != nil {
			tb.Fatal(err)
		}
		return ocispec.Descriptor{Digest: d, Size: int64(len(b))}
	}
	cfg := ocispec.Image{Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"}, RootFS: ocispec.RootFS{Type: "layers"}}
	var man ocispec.Manifest
	man.SchemaVersion = 2
	man.MediaType = ocispec.MediaTypeImageManifest
	for i := 0; i < n; i++ {
		desc, diffID, usize, files := benchLayer(tb, dir, i, layerBytes)
		man.Layers = append(man.Layers, desc)
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, diffID)
		cfg.History = append(cfg.History, ocispec.History{CreatedBy: fmt.Sprintf("benchmark layer %d", i)})
		bi.Compressed += desc.Size
		bi.Uncompressed += usize
		bi.Files += files
	}
	cb, _ := json.Marshal(cfg)
	man.Config = put(cb)
	man.Config.MediaType = ocispec.MediaTypeImageConfig
	mb, _ := json.Marshal(man)
	md := put(mb)
	md.MediaType = ocispec.MediaTypeImageManifest
	md.Annotations = map[string]string{ocispec.AnnotationRefName: bi.Tag}
	ib, _ := json.Marshal(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{md}})
	for p, b := range map[string][]byte{"index.json": ib, "oci-layout": []byte(`{"imageLayoutVersion":"1.0.0"}`)} {
		if err := os.WriteFile(filepath.Join(dir, p), b, 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	b, _ := json.Marshal(bi)
	if err := os.WriteFile(meta, b, 0o644); err != nil {
		tb.Fatal(err)
	}
	tb.Logf("built the benchmark image %s (%d layers, %d MiB compressed, %d MiB of tar, %d files) in %v",
		dir, n, bi.Compressed>>20, bi.Uncompressed>>20, bi.Files, time.Since(start).Round(time.Second))
	return &bi
}

var benchWords = strings.Fields(`the of and to in is for on that with as by this from at be are or an it
config server client request response error value default path file user
return func struct import package include define static const void int char
usr lib bin etc share local var log tmp proc sys dev opt srv run home root`)

// benchLayer writes layer i as a gzip tar blob into the layout dir,
// adding files until the blob reaches about size bytes.
func benchLayer(tb testing.TB, dir string, i int, size int64) (ocispec.Descriptor, digest.Digest, int64, int) {
	tb.Helper()
	rng := rand.New(rand.NewPCG(uint64(i)+1, 0x696d67746f6f6c))
	tmp, err := os.CreateTemp(dir, ".layer-*")
	if err != nil {
		tb.Fatal(err)
	}
	defer os.Remove(tmp.Name())
	blobHash := sha256.New()
	counted := &countWriter{w: io.MultiWriter(tmp, blobHash)}
	gz, _ := gzip.NewWriterLevel(counted, gzip.DefaultCompression)
	tarHash := sha256.New()
	usize := &countWriter{w: io.Discard}
	tw := tar.NewWriter(io.MultiWriter(gz, tarHash, usize))
	mtime := time.Unix(1700000000, 0)
	top := fmt.Sprintf("layer%d", i)
	files := 0
	buf := make([]byte, 4<<20)
	for d := 0; counted.n < size; d++ {
		dname := fmt.Sprintf("%s/%s/d%03d/", top, benchWords[rng.IntN(len(benchWords))], d)
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dname, Mode: 0o755, ModTime: mtime, Format: tar.FormatPAX}); err != nil {
			tb.Fatal(err)
		}
		for f := 0; f < 40 && counted.n < size; f++ {
			n := 256 << min(rng.IntN(15), rng.IntN(15)) // 256 B .. 4 MiB, mostly small
			n += rng.IntN(n)
			if n > len(buf) {
				n = len(buf)
			}
			b := buf[:n]
			mode := int64(0o644)
			if rng.IntN(3) == 0 {
				for j := 0; j+8 <= n; j += 8 {
					v := rng.Uint64()
					for k := 0; k < 8; k++ {
						b[j+k] = byte(v >> (8 * k))
					}
				}
				mode = 0o755
			} else {
				benchText(rng, b)
			}
			name := fmt.Sprintf("%sf%03d", dname, f)
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Size: int64(n), Mode: mode, ModTime: mtime, Format: tar.FormatPAX}); err != nil {
				tb.Fatal(err)
			}
			if _, err := tw.Write(b); err != nil {
				tb.Fatal(err)
			}
			files++
			if f%10 == 9 {
				tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: name + ".link", Linkname: fmt.Sprintf("f%03d", f), Mode: 0o777, ModTime: mtime, Format: tar.FormatPAX})
			}
		}
	}
	if err := tw.Close(); err != nil {
		tb.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		tb.Fatal(err)
	}
	if err := tmp.Close(); err != nil {
		tb.Fatal(err)
	}
	d := digest.NewDigest(digest.SHA256, blobHash)
	if err := os.Rename(tmp.Name(), filepath.Join(dir, "blobs", "sha256", d.Encoded())); err != nil {
		tb.Fatal(err)
	}
	return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: d, Size: counted.n}, digest.NewDigest(digest.SHA256, tarHash), usize.n, files
}

// benchText fills b with lines of words, as text files hold.
func benchText(rng *rand.Rand, b []byte) {
	i := 0
	for i < len(b) {
		w := benchWords[rng.IntN(len(benchWords))]
		if rng.IntN(8) == 0 {
			w = fmt.Sprintf("%d", rng.IntN(100000))
		}
		i += copy(b[i:], w)
		if i < len(b) {
			if rng.IntN(10) == 0 {
				b[i] = '\n'
			} else {
				b[i] = ' '
			}
			i++
		}
	}
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return n, err
}
