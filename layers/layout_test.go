package layers

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	"github.com/klauspost/compress/gzip"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// layoutTestTar returns a gzip layer holding regular files name -> content.
func layoutTestTar(t testing.TB, files map[string]string) (blob []byte, diffID digest.Digest) {
	t.Helper()
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	for _, name := range layoutSortedKeys(files) {
		c := files[name]
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(c)), Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(c))
	}
	tw.Close()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(tb.Bytes())
	zw.Close()
	return gz.Bytes(), digest.FromBytes(tb.Bytes())
}

func layoutSortedKeys(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	for i := range ks {
		for j := i + 1; j < len(ks); j++ {
			if ks[j] < ks[i] {
				ks[i], ks[j] = ks[j], ks[i]
			}
		}
	}
	return ks
}

// layoutTestImageSpec describes a hand-made image for the tests.
type layoutTestImageSpec struct {
	platform      ocispec.Platform
	layers        []map[string]string
	layerMT       string // default OCI tar+gzip
	manifestMT    string // default OCI manifest
	configMT      string // default OCI config
	extraDiffIDs  int    // >0: config lists more diff_ids than layers
	corruptConfig bool   // config descriptor digest wrong
}

// layoutTestWriteImage stores the blobs of an image and returns the
// manifest descriptor (not tagged).
func layoutTestWriteImage(t testing.TB, l *Layout, s layoutTestImageSpec) ocispec.Descriptor {
	t.Helper()
	ctx := context.Background()
	lmt := s.layerMT
	if lmt == "" {
		lmt = ocispec.MediaTypeImageLayerGzip
	}
	cfg := ocispec.Image{Platform: s.platform, RootFS: ocispec.RootFS{Type: "layers"}}
	var lds []ocispec.Descriptor
	for _, files := range s.layers {
		blob, diffID := layoutTestTar(t, files)
		d, err := l.WriteBlobBytes(ctx, lmt, blob)
		if err != nil {
			t.Fatal(err)
		}
		lds = append(lds, d)
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, diffID)
	}
	for i := 0; i < s.extraDiffIDs; i++ {
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, digest.FromString("extra"))
	}
	cmt := s.configMT
	if cmt == "" {
		cmt = ocispec.MediaTypeImageConfig
	}
	cb, _ := json.Marshal(cfg)
	cd, err := l.WriteBlobBytes(ctx, cmt, cb)
	if err != nil {
		t.Fatal(err)
	}
	if s.corruptConfig {
		cd.Digest = digest.FromString("not the config")
		os.WriteFile(l.blobPath(cd.Digest), cb, 0o644)
	}
	mmt := s.manifestMT
	if mmt == "" {
		mmt = ocispec.MediaTypeImageManifest
	}
	m := ocispec.Manifest{MediaType: mmt, Config: cd, Layers: lds}
	m.SchemaVersion = 2
	mb, _ := json.Marshal(m)
	md, err := l.WriteBlobBytes(ctx, mmt, mb)
	if err != nil {
		t.Fatal(err)
	}
	p := s.platform
	md.Platform = &p
	return md
}

func layoutTestIndex(t testing.TB, l *Layout, mt string, descs ...ocispec.Descriptor) ocispec.Descriptor {
	t.Helper()
	idx := ocispec.Index{MediaType: mt, Manifests: descs}
	idx.SchemaVersion = 2
	b, _ := json.Marshal(idx)
	d, err := l.WriteBlobBytes(context.Background(), mt, b)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func layoutListDir(t testing.TB, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		if d.Type().IsRegular() {
			b, _ := os.ReadFile(p)
			out[p] = string(b)
		}
		return nil
	})
	return out
}

func TestLayoutInitOpen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "img")
	if _, err := OpenLayout(dir); !errors.Is(err, ErrNotLayout) {
		t.Fatalf("OpenLayout(missing) = %v, want ErrNotLayout", err)
	}
	l, err := InitLayout(dir)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "oci-layout"))
	if string(b) != `{"imageLayoutVersion":"1.0.0"}` {
		t.Errorf("oci-layout = %s", b)
	}
	idx, err := l.Index(context.Background())
	if err != nil || len(idx.Manifests) != 0 || idx.SchemaVersion != 2 {
		t.Fatalf("Index = %+v, %v", idx, err)
	}
	if _, err := OpenLayout(dir); err != nil {
		t.Fatal(err)
	}
	// A non-empty directory that is not a layout is left alone.
	other := t.TempDir()
	os.WriteFile(filepath.Join(other, "precious"), []byte("x"), 0o644)
	if _, err := InitLayout(other); !errors.Is(err, ErrNotLayout) {
		t.Fatalf("InitLayout(non-layout) = %v, want ErrNotLayout", err)
	}
	if got := layoutListDir(t, other); len(got) != 1 {
		t.Errorf("InitLayout wrote into a non-layout dir: %v", got)
	}
	// Bad oci-layout version.
	os.WriteFile(filepath.Join(other, "oci-layout"), []byte(`{"imageLayoutVersion":"2.0.0"}`), 0o644)
	os.WriteFile(filepath.Join(other, "index.json"), []byte(`{"schemaVersion":2,"manifests":[]}`), 0o644)
	if _, err := OpenLayout(other); !errors.Is(err, ErrNotLayout) || !strings.Contains(err.Error(), "oci-layout") {
		t.Fatalf("OpenLayout(version 2) = %v, want ErrNotLayout naming oci-layout", err)
	}
}

func TestLayoutWriteBlob(t *testing.T) {
	ctx := context.Background()
	l, err := InitLayout(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("hello blob")
	d, err := l.WriteBlobBytes(ctx, "application/octet-stream", data)
	if err != nil {
		t.Fatal(err)
	}
	if d.Digest != digest.FromBytes(data) || d.Size != int64(len(data)) {
		t.Fatalf("descriptor %+v", d)
	}
	got, err := l.ReadBlob(ctx, d)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("ReadBlob = %q, %v", got, err)
	}
	fi1, _ := os.Stat(l.blobPath(d.Digest))

	// Wrong expected digest: nothing stored, no temp file left.
	before := layoutListDir(t, l.Dir())
	_, err = l.WriteBlob(ctx, bytes.NewReader([]byte("other")), ocispec.Descriptor{Digest: digest.FromString("different"), Size: 5})
	if !errors.Is(err, ErrBlobCorrupt) {
		t.Fatalf("WriteBlob(wrong digest) = %v, want ErrBlobCorrupt", err)
	}
	_, err = l.WriteBlob(ctx, bytes.NewReader([]byte("other")), ocispec.Descriptor{Digest: digest.FromString("other"), Size: 6})
	if !errors.Is(err, ErrBlobCorrupt) {
		t.Fatalf("WriteBlob(wrong size) = %v, want ErrBlobCorrupt", err)
	}
	if after := layoutListDir(t, l.Dir()); len(after) != len(before) {
		t.Fatalf("failed writes left files: %v", after)
	}

	// Writing an existing blob leaves the file alone.
	if _, err := l.WriteBlobBytes(ctx, "x", data); err != nil {
		t.Fatal(err)
	}
	fi2, _ := os.Stat(l.blobPath(d.Digest))
	if !os.SameFile(fi1, fi2) {
		t.Error("rewriting an existing blob replaced its file")
	}

	// Other algorithms are stored under their own directory.
	d512 := ocispec.Descriptor{Digest: digest.SHA512.FromBytes(data), Size: int64(len(data))}
	if _, err := l.WriteBlob(ctx, bytes.NewReader(data), d512); err != nil {
		t.Fatal(err)
	}
	if got, err := l.ReadBlob(ctx, d512); err != nil || !bytes.Equal(got, data) || !strings.Contains(l.blobPath(d512.Digest), "blobs/sha512/") {
		t.Fatalf("sha512 blob: %q, %v", got, err)
	}
	before = layoutListDir(t, l.Dir())

	// Cancelled context: nothing stored.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := l.WriteBlobBytes(cctx, "x", []byte("cancelled")); !errors.Is(err, context.Canceled) {
		t.Fatalf("WriteBlob(cancelled) = %v", err)
	}
	if after := layoutListDir(t, l.Dir()); len(after) != len(before) {
		t.Fatalf("cancelled write left files: %v", after)
	}
}

func TestLayoutReadBlobCorrupt(t *testing.T) {
	ctx := context.Background()
	l, _ := InitLayout(t.TempDir())
	d, _ := l.WriteBlobBytes(ctx, "x", []byte("0123456789"))
	p := l.blobPath(d.Digest)
	cases := []struct {
		name    string
		content string
		desc    ocispec.Descriptor
		want    error
	}{
		{"same size, other bytes", "9876543210", d, ErrBlobCorrupt},
		{"shorter", "01234", d, ErrBlobCorrupt},
		{"longer", "0123456789AB", d, ErrBlobCorrupt},
		{"missing", "", ocispec.Descriptor{Digest: digest.FromString("nope"), Size: 4}, ErrBlobNotFound},
		{"bad digest", "", ocispec.Descriptor{Digest: "sha256:../../etc/passwd", Size: 4}, ErrBlobCorrupt},
		{"bad algorithm", "", ocispec.Descriptor{Digest: "md5:d41d8cd98f00b204e9800998ecf8427e", Size: 4}, ErrBlobCorrupt},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.content != "" {
				os.Chmod(p, 0o644)
				if err := os.WriteFile(p, []byte(c.content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			_, err := l.ReadBlob(ctx, c.desc)
			if !errors.Is(err, c.want) {
				t.Fatalf("ReadBlob = %v, want %v", err, c.want)
			}
			// Streaming reads fail at the end too.
			if rc, err := l.OpenBlob(c.desc); err == nil {
				_, err = io.Copy(io.Discard, rc)
				rc.Close()
				if !errors.Is(err, c.want) {
					t.Fatalf("streaming read = %v, want %v", err, c.want)
				}
			}
		})
	}
}

func TestLayoutSetTag(t *testing.T) {
	ctx := context.Background()
	l, _ := InitLayout(t.TempDir())
	a := layoutTestWriteImage(t, l, layoutTestImageSpec{platform: HostPlatform(), layers: []map[string]string{{"a": "1"}}})
	b := layoutTestWriteImage(t, l, layoutTestImageSpec{platform: HostPlatform(), layers: []map[string]string{{"b": "2"}}})
	for _, tag := range []string{"one", "two", "three"} {
		if err := l.SetTag(ctx, tag, a); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.SetTag(ctx, "two", b); err != nil {
		t.Fatal(err)
	}
	tags, descs, err := l.Tags(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(tags, ",") != "one,two,three" || descs[1].Digest != b.Digest || descs[0].Digest != a.Digest || descs[2].Digest != a.Digest {
		t.Fatalf("tags %v %v", tags, descs)
	}
	if err := l.SetTag(ctx, "bad tag", a); !errors.Is(err, ErrInvalidTag) {
		t.Errorf("SetTag(bad tag) = %v", err)
	}
	if err := l.SetTag(ctx, "x", ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("missing"), Size: 3}); !errors.Is(err, ErrBlobNotFound) {
		t.Errorf("SetTag(missing blob) = %v", err)
	}
	if err := l.RemoveTag(ctx, "one"); err != nil {
		t.Fatal(err)
	}
	if err := l.RemoveTag(ctx, "one"); !errors.Is(err, ErrTagNotFound) {
		t.Errorf("RemoveTag twice = %v", err)
	}
	tags, _, _ = l.Tags(ctx)
	if strings.Join(tags, ",") != "two,three" {
		t.Errorf("after RemoveTag: %v", tags)
	}
	// No temp files left next to index.json.
	ents, _ := os.ReadDir(l.Dir())
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp") {
			t.Errorf("temp file left: %s", e.Name())
		}
	}
}

func TestImageResolve(t *testing.T) {
	ctx := context.Background()
	l, _ := InitLayout(t.TempDir())
	host := HostPlatform()
	other := ocispec.Platform{OS: "linux", Architecture: "s390x"}
	if host.Architecture == "s390x" {
		other.Architecture = "riscv64"
	}
	hostImg := layoutTestWriteImage(t, l, layoutTestImageSpec{platform: host, layers: []map[string]string{{"host": "h"}}})
	otherImg := layoutTestWriteImage(t, l, layoutTestImageSpec{platform: other, layers: []map[string]string{{"other": "o"}, {"more": "m"}}})
	dockerImg := layoutTestWriteImage(t, l, layoutTestImageSpec{platform: host, layers: []map[string]string{{"d": "d"}},
		layerMT: mediaTypeDockerLayerGzipForTest, manifestMT: mediaTypeDockerManifest, configMT: mediaTypeDockerConfig})
	nondist := layoutTestWriteImage(t, l, layoutTestImageSpec{platform: host, layers: []map[string]string{{"n": "n"}},
		layerMT: "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"})
	artifact := layoutTestWriteImage(t, l, layoutTestImageSpec{platform: host, configMT: "application/vnd.example.sbom+json"})
	mismatch := layoutTestWriteImage(t, l, layoutTestImageSpec{platform: host, layers: []map[string]string{{"a": "a"}}, extraDiffIDs: 1})
	badConfig := layoutTestWriteImage(t, l, layoutTestImageSpec{platform: host, layers: []map[string]string{{"a": "a"}}, corruptConfig: true})

	multi := layoutTestIndex(t, l, ocispec.MediaTypeImageIndex, otherImg, hostImg)
	nested := layoutTestIndex(t, l, ocispec.MediaTypeImageIndex, layoutTestIndex(t, l, mediaTypeDockerManifestList, otherImg), layoutTestIndex(t, l, ocispec.MediaTypeImageIndex, hostImg))
	onlyOther := layoutTestIndex(t, l, ocispec.MediaTypeImageIndex, otherImg, otherImg)
	deep := hostImg
	for i := 0; i < layoutMaxIndexDepth+1; i++ {
		deep = layoutTestIndex(t, l, ocispec.MediaTypeImageIndex, deep)
	}
	single := hostImg
	single.Platform = nil
	for tag, d := range map[string]ocispec.Descriptor{
		"host": hostImg, "other": otherImg, "docker": dockerImg, "nondist": nondist, "artifact": artifact,
		"mismatch": mismatch, "badconfig": badConfig, "multi": multi, "nested": nested, "onlyother": onlyOther,
		"deep": deep, "single": single,
	} {
		if err := l.SetTag(ctx, tag, d); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		tag      string
		platform *ocispec.Platform
		want     digest.Digest
		err      error
	}{
		{tag: "host", want: hostImg.Digest},
		{tag: "other", want: otherImg.Digest}, // the only manifest, whatever its platform
		{tag: "other", platform: &host, err: ErrNoMatchingPlatform},
		{tag: "single", platform: &other, err: ErrNoMatchingPlatform}, // checked against the config
		{tag: "single", platform: &host, want: hostImg.Digest},
		{tag: "docker", want: dockerImg.Digest},
		{tag: "nondist", want: nondist.Digest},
		{tag: "multi", want: hostImg.Digest},
		{tag: "multi", platform: &other, want: otherImg.Digest},
		{tag: "nested", want: hostImg.Digest},
		{tag: "nested", platform: &other, want: otherImg.Digest},
		{tag: "onlyother", err: ErrNoMatchingPlatform},
		{tag: "deep", err: ErrBlobCorrupt},
		{tag: "artifact", err: ErrUnsupportedMediaType},
		{tag: "mismatch", err: ErrBlobCorrupt},
		{tag: "badconfig", err: ErrBlobCorrupt},
		{tag: "nope", err: ErrTagNotFound},
	}
	for _, c := range cases {
		name := c.tag
		if c.platform != nil {
			name += "@" + c.platform.Architecture
		}
		t.Run(name, func(t *testing.T) {
			img, err := l.Resolve(ctx, c.tag, ResolveOptions{Platform: c.platform})
			if c.err != nil {
				if !errors.Is(err, c.err) {
					t.Fatalf("Resolve = %v, want %v", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if img.Descriptor.Digest != c.want {
				t.Fatalf("resolved %s, want %s", img.Descriptor.Digest, c.want)
			}
			if len(img.Config.RootFS.DiffIDs) != len(img.Manifest.Layers) {
				t.Fatal("diff_ids")
			}
		})
	}

	// A manifest blob whose bytes changed is refused.
	os.Chmod(l.blobPath(hostImg.Digest), 0o644)
	b, _ := os.ReadFile(l.blobPath(hostImg.Digest))
	b[len(b)-2] = ' '
	os.WriteFile(l.blobPath(hostImg.Digest), b, 0o644)
	if _, err := l.Resolve(ctx, "host", ResolveOptions{}); !errors.Is(err, ErrBlobCorrupt) || !strings.Contains(err.Error(), hostImg.Digest.Encoded()) {
		t.Fatalf("Resolve(tampered manifest) = %v, want ErrBlobCorrupt naming the blob", err)
	}
}

const mediaTypeDockerLayerGzipForTest = "application/vnd.docker.image.rootfs.diff.tar.gzip"

func TestLayoutIndexCorrupt(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		name, index string
		want        error
	}{
		{"not json", "{", ErrBlobCorrupt},
		{"schema 1", `{"schemaVersion":1,"manifests":[]}`, ErrBlobCorrupt},
		{"manifest type", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","manifests":[]}`, ErrUnsupportedMediaType},
		{"bad digest", `{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:../x","size":1}]}`, ErrBlobCorrupt},
		{"negative size", `{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:` + strings.Repeat("a", 64) + `","size":-1}]}`, ErrBlobCorrupt},
	} {
		t.Run(c.name, func(t *testing.T) {
			l, _ := InitLayout(t.TempDir())
			os.WriteFile(l.indexPath(), []byte(c.index), 0o644)
			_, err := l.Resolve(ctx, "latest", ResolveOptions{})
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), "index.json") {
				t.Fatalf("Resolve = %v, want %v naming index.json", err, c.want)
			}
		})
	}
}

func TestImageV1(t *testing.T) {
	ctx := context.Background()
	l, _ := InitLayout(t.TempDir())
	d := layoutTestWriteImage(t, l, layoutTestImageSpec{platform: HostPlatform(), layers: []map[string]string{{"a": "1"}, {"b/c": "2"}}})
	if err := l.SetTag(ctx, "v1", d); err != nil {
		t.Fatal(err)
	}
	img, err := l.Image(ctx, "v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(img); err != nil {
		t.Fatalf("ggcr validate.Image: %v", err)
	}
	h, err := img.Digest()
	if err != nil || h.String() != d.Digest.String() {
		t.Fatalf("Digest = %v, %v", h, err)
	}
	ls, _ := img.Layers()
	rc, err := ls[1].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(rc)
	hdr, err := tr.Next()
	if err != nil || hdr.Name != "b/c" {
		t.Fatalf("layer 1: %v %v", hdr, err)
	}
	rc.Close()
	cf, err := img.ConfigFile()
	if err != nil || cf.Architecture != runtime.GOARCH {
		t.Fatalf("ConfigFile = %+v, %v", cf, err)
	}
	// A tampered layer surfaces as an error while reading it.
	lh, _ := ls[0].Digest()
	ld := l.blobPath(digest.Digest(lh.String()))
	b, _ := os.ReadFile(ld)
	b[len(b)-1] ^= 0xff
	os.WriteFile(ld, b, 0o644)
	rc, _ = ls[0].Compressed()
	if _, err := io.Copy(io.Discard, rc); !errors.Is(err, ErrBlobCorrupt) {
		t.Fatalf("reading tampered layer: %v", err)
	}
}

func TestLayoutList(t *testing.T) {
	ctx := context.Background()
	l, _ := InitLayout(t.TempDir())
	host := HostPlatform()
	other := ocispec.Platform{OS: "linux", Architecture: "s390x"}
	a := layoutTestWriteImage(t, l, layoutTestImageSpec{platform: host, layers: []map[string]string{{"a": "1"}}})
	b := layoutTestWriteImage(t, l, layoutTestImageSpec{platform: other, layers: []map[string]string{{"b": "2"}, {"c": "3"}}})
	l.SetTag(ctx, "a", a)
	l.SetTag(ctx, "multi", layoutTestIndex(t, l, ocispec.MediaTypeImageIndex, a, b))
	got, err := l.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Tag != "a" || len(got[0].Images) != 1 || got[1].Tag != "multi" || len(got[1].Images) != 2 {
		t.Fatalf("List = %+v", got)
	}
	img := got[0].Images[0]
	var want int64 = a.Size
	r, _ := l.Resolve(ctx, "a", ResolveOptions{})
	want += r.Manifest.Config.Size + r.Manifest.Layers[0].Size
	if img.Size != want || img.Layers != 1 || img.Platform.Architecture != host.Architecture || img.Error != "" {
		t.Errorf("image info %+v, want size %d", img, want)
	}
	// A broken tag is listed with its error; the others still are.
	l.SetTag(ctx, "artifact", layoutTestWriteImage(t, l, layoutTestImageSpec{platform: host, configMT: "application/vnd.example+json"}))
	got, err = l.List(ctx)
	if err != nil || len(got) != 3 || got[2].Images[0].Error == "" || got[0].Images[0].Error != "" {
		t.Fatalf("List with an artifact = %+v, %v", got, err)
	}
}

func TestParseImageRef(t *testing.T) {
	for _, c := range []struct {
		in       string
		dir, tag string
		bad      bool
	}{
		{in: "img", dir: "img", tag: "latest"},
		{in: "img:v1", dir: "img", tag: "v1"},
		{in: "/a/b:c/img", dir: "/a/b:c/img", tag: "latest"},
		{in: "/a/b:c/img:1.0", dir: "/a/b:c/img", tag: "1.0"},
		{in: "./img:", bad: true},
		{in: ":tag", bad: true},
		{in: "", bad: true},
		{in: "img:bad tag", bad: true},
	} {
		r, err := ParseImageRef(c.in)
		if c.bad {
			if err == nil {
				t.Errorf("ParseImageRef(%q) = %+v, want error", c.in, r)
			}
			continue
		}
		if err != nil || r.Dir != c.dir || r.Tag != c.tag {
			t.Errorf("ParseImageRef(%q) = %+v, %v", c.in, r, err)
		}
	}
}

func TestImageResolveIndexBomb(t *testing.T) {
	ctx := context.Background()
	l, _ := InitLayout(t.TempDir())
	d := layoutTestWriteImage(t, l, layoutTestImageSpec{platform: ocispec.Platform{OS: "linux", Architecture: "s390x"}, layers: []map[string]string{{"a": "1"}}})
	// Each level lists the level below 20 times: 20^8 paths without a cap.
	for i := 0; i < layoutMaxIndexDepth; i++ {
		descs := make([]ocispec.Descriptor, 20)
		for j := range descs {
			descs[j] = d
		}
		d = layoutTestIndex(t, l, ocispec.MediaTypeImageIndex, descs...)
	}
	l.SetTag(ctx, "bomb", d)
	if _, err := l.Resolve(ctx, "bomb", ResolveOptions{}); !errors.Is(err, ErrBlobCorrupt) {
		t.Fatalf("Resolve(index bomb) = %v, want ErrBlobCorrupt", err)
	}
}

func TestLayoutSetTagConcurrent(t *testing.T) {
	ctx := context.Background()
	l, _ := InitLayout(t.TempDir())
	d := layoutTestWriteImage(t, l, layoutTestImageSpec{platform: HostPlatform(), layers: []map[string]string{{"a": "1"}}})
	const n = 16
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func(i int) {
			// Each goroutine opens the layout itself, as a process would.
			l2, err := OpenLayout(l.Dir())
			if err == nil {
				err = l2.SetTag(ctx, "t"+strconv.Itoa(i), d)
			}
			errs <- err
		}(i)
	}
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	tags, _, _ := l.Tags(ctx)
	if len(tags) != n {
		t.Fatalf("%d tags after %d concurrent SetTag calls: %v", len(tags), n, tags)
	}
}

func TestLayoutVerify(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "layout")
	a := buildTestTree(t, map[string]string{"a": strings.Repeat("a", 3000)})
	b := buildTestTree(t, map[string]string{"a": strings.Repeat("a", 3000), "b": "b"})
	if _, err := Build(ctx, dir, BuildOptions{Layers: []string{a, b}, Tag: "one"}); err != nil {
		t.Fatal(err)
	}
	if _, err := Build(ctx, dir, BuildOptions{Base: "one", Layers: []string{b}, Tag: "two", Compression: Zstd}); err != nil {
		t.Fatal(err)
	}
	l := mustOpen(t, dir)
	rep, err := l.Verify(ctx, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	// one: manifest+config+2 layers; two: manifest+config+1 new layer.
	if rep.Tags != 2 || rep.Images != 2 || rep.Blobs != 7 || len(rep.Issues) != 0 {
		t.Fatalf("report %+v", rep)
	}
	img := mustResolve(t, l, "one")

	// A gzip header byte changed (the OS field): the tar, and so the
	// diffID, is unchanged; only the blob digest tells.
	p := l.blobPath(img.Manifest.Layers[0].Digest)
	blob, _ := os.ReadFile(p)
	blob[9] ^= 0x01
	os.WriteFile(p, blob, 0o644)
	if _, err := l.Verify(ctx, Limits{}); !errors.Is(err, ErrBlobCorrupt) {
		t.Fatalf("Verify after a gzip header change = %v, want ErrBlobCorrupt", err)
	}
	blob[9] ^= 0x01
	os.WriteFile(p, blob, 0o644)

	// A deleted layer is reported once, though both images use it.
	os.Remove(l.blobPath(img.Manifest.Layers[1].Digest))
	rep, err = l.Verify(ctx, Limits{})
	if !errors.Is(err, ErrBlobNotFound) || len(rep.Issues) != 1 {
		t.Fatalf("Verify with a missing layer = %v (%d issues)", err, len(rep.Issues))
	}
}

// TestNotLayoutNamesFileOnce: the error of a directory that is no layout
// names the file that makes it so once, then what is wrong with it.
func TestNotLayoutNamesFileOnce(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	noIndex := filepath.Join(dir, "noindex")
	if err := os.MkdirAll(noIndex, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(noIndex, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	for d, want := range map[string]string{
		missing: filepath.Join(missing, "oci-layout") + ": layers: not an OCI image layout: no such file or directory",
		noIndex: filepath.Join(noIndex, "index.json") + ": layers: not an OCI image layout: no such file or directory",
	} {
		_, err := OpenLayout(d)
		if !errors.Is(err, ErrNotLayout) {
			t.Fatalf("OpenLayout(%s) = %v, want ErrNotLayout", d, err)
		}
		if d := cmp.Diff(want, err.Error()); d != "" {
			t.Errorf("message (-want +got):\n%s", d)
		}
	}
}
