package layers

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// buildTestTree writes files (name -> content; a name ending in / is a
// directory) under a new temp dir and returns it.
func buildTestTree(t testing.TB, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, c := range files {
		p := filepath.Join(root, name)
		if strings.HasSuffix(name, "/") {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// buildTestSnapshotLayout records every file of a layout with its bytes.
func buildTestSnapshotLayout(t testing.TB, dir string) map[string]string {
	return layoutListDir(t, dir)
}

// buildTestCheckIntact fails if a file of before changed or vanished, or a
// temp file was left anywhere in the layout.
func buildTestCheckIntact(t testing.TB, dir string, before map[string]string) {
	t.Helper()
	after := layoutListDir(t, dir)
	for p, c := range before {
		if after[p] != c {
			t.Errorf("%s changed or vanished", p)
		}
	}
	for p := range after {
		if strings.Contains(filepath.Base(p), ".tmp") {
			t.Errorf("temp file left: %s", p)
		}
	}
}

func TestBuildFailureLeavesLayoutIntact(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "layout")
	l1 := buildTestTree(t, map[string]string{"a": "1", "d/b": "2"})
	if _, err := Build(ctx, dir, BuildOptions{Layers: []string{l1}, Tag: "v1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := Build(ctx, dir, BuildOptions{Base: "v1", Layers: []string{buildTestTree(t, map[string]string{"c": "3"})}, Tag: "v2"}); err != nil {
		t.Fatal(err)
	}
	before := buildTestSnapshotLayout(t, dir)
	idxBefore := before[filepath.Join(dir, "index.json")]

	garbage := filepath.Join(t.TempDir(), "garbage.tar")
	os.WriteFile(garbage, bytes.Repeat([]byte("not a tar "), 100), 0o644)
	truncated := filepath.Join(t.TempDir(), "truncated.tar.gz")
	blob, _ := layoutTestTar(t, map[string]string{"x": strings.Repeat("y", 10000)})
	os.WriteFile(truncated, blob[:len(blob)/2], 0o644)
	cancelled, cancel := context.WithCancel(ctx)
	cancel()

	// A second layout whose base layer blob is corrupt.
	other := filepath.Join(t.TempDir(), "other")
	if _, err := Build(ctx, other, BuildOptions{Layers: []string{buildTestTree(t, map[string]string{"o": "other"})}, Tag: "base"}); err != nil {
		t.Fatal(err)
	}
	ol := mustOpen(t, other)
	oimg, _ := ol.Resolve(ctx, "base", ResolveOptions{})
	lp := ol.blobPath(oimg.Manifest.Layers[0].Digest)
	b, _ := os.ReadFile(lp)
	b[len(b)/2] ^= 0x55
	os.WriteFile(lp, b, 0o644)

	newDir := buildTestTree(t, map[string]string{"new": "n"})
	cases := []struct {
		name string
		ctx  context.Context
		opts BuildOptions
		want error
	}{
		{"missing layer path", ctx, BuildOptions{Base: "v1", Layers: []string{newDir, "/nonexistent/layer"}, Tag: "v1"}, os.ErrNotExist},
		{"garbage layer file", ctx, BuildOptions{Base: "v1", Layers: []string{newDir, garbage}, Tag: "v1"}, ErrCorrupt},
		{"truncated gzip layer", ctx, BuildOptions{Base: "v2", Layers: []string{newDir, truncated}, Tag: "v2"}, ErrCorrupt},
		{"missing base tag", ctx, BuildOptions{Base: "nope", Layers: []string{newDir}, Tag: "v1"}, ErrTagNotFound},
		{"corrupt base blob", ctx, BuildOptions{BaseLayout: other, Base: "base", Layers: []string{newDir}, Tag: "v1"}, ErrBlobCorrupt},
		{"cancelled", cancelled, BuildOptions{Base: "v2", Layers: []string{newDir}, Tag: "v2"}, context.Canceled},
		{"invalid tag", ctx, BuildOptions{Layers: []string{newDir}, Tag: "no spaces"}, ErrInvalidTag},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Build(c.ctx, dir, c.opts)
			if !errors.Is(err, c.want) {
				t.Fatalf("Build = %v, want %v", err, c.want)
			}
			buildTestCheckIntact(t, dir, before)
			if got, _ := os.ReadFile(filepath.Join(dir, "index.json")); string(got) != idxBefore {
				t.Fatalf("index.json changed:\n%s\n%s", idxBefore, got)
			}
		})
	}
	// A build into a new layout with a bad base creates nothing.
	fresh := filepath.Join(t.TempDir(), "fresh")
	if _, err := Build(ctx, fresh, BuildOptions{BaseLayout: dir, Base: "nope", Layers: []string{newDir}}); !errors.Is(err, ErrTagNotFound) {
		t.Fatalf("Build with a missing base = %v", err)
	}
	if _, err := os.Stat(fresh); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("failed build created its layout: %v", err)
	}
	// The images are still whole.
	for _, tag := range []string{"v1", "v2"} {
		out := filepath.Join(t.TempDir(), "rootfs")
		if _, err := Unpack(ctx, dir, tag, out, UnpackOptions{}); err != nil {
			t.Fatalf("Unpack %s after failed builds: %v", tag, err)
		}
	}
}

func TestBuildAndUnpack(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "layout")
	a := buildTestTree(t, map[string]string{"keep": "k", "gone": "g", "d/x": "x", "d/y": "y", "e/": ""})
	b := buildTestTree(t, map[string]string{"keep": "k", "d/x": "x2", "e": "now a file", "new/z": "z"})
	c := buildTestTree(t, map[string]string{"keep": "k", "d/x": "x2", "e": "now a file", "new/z": "z", "last": "l"})
	epoch := time.Unix(1700000000, 0).UTC()
	var events int
	res, err := Build(ctx, dir, BuildOptions{Layers: []string{a, b, c}, Tag: "t", SourceDateEpoch: &epoch,
		Progress: func(done, total int64) { events++ }})
	if err != nil {
		t.Fatal(err)
	}
	if events == 0 {
		t.Error("no progress reported")
	}
	// Each layer holds only the difference: c adds just "last".
	if names := buildTestLayerNames(t, mustOpen(t, dir), res.Layers[2]); strings.Join(names, ",") != "last" {
		t.Errorf("third layer holds %q, want just last", names)
	}

	img, err := mustOpen(t, dir).Resolve(ctx, "t", ResolveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if img.Config.Created == nil || !img.Config.Created.Equal(epoch) || len(img.Config.History) != 3 || !img.Config.History[0].Created.Equal(epoch) {
		t.Errorf("config created/history: %+v", img.Config)
	}
	if img.Config.OS != "linux" || img.Config.Architecture != HostPlatform().Architecture {
		t.Errorf("platform %+v", img.Config.Platform)
	}
	for i, d := range res.Layers {
		if img.Config.RootFS.DiffIDs[i] != d.DiffID || img.Manifest.Layers[i].Digest != d.Digest {
			t.Errorf("layer %d: config/manifest disagree with the result", i)
		}
	}
	out := filepath.Join(t.TempDir(), "rootfs")
	var last, total int64
	if _, err := Unpack(ctx, dir, "t", out, UnpackOptions{Progress: func(d, tt int64) { last, total = d, tt }}); err != nil {
		t.Fatal(err)
	}
	if last != total || total == 0 {
		t.Errorf("progress ended at %d of %d", last, total)
	}
	want := snapTree(t, c, snapOptions{})
	got := snapTree(t, out, snapOptions{})
	delete(want, ".")
	delete(got, ".")
	if d := snapDiff(want, got, "want", "unpacked"); len(d) > 0 {
		t.Fatalf("unpacked tree differs:\n%s", strings.Join(d, "\n"))
	}

	// Reproducible: the same build into another layout has the same digest.
	dir2 := filepath.Join(t.TempDir(), "layout2")
	res2, err := Build(ctx, dir2, BuildOptions{Layers: []string{a, b, c}, Tag: "t", SourceDateEpoch: &epoch})
	if err != nil {
		t.Fatal(err)
	}
	if res2.Manifest.Digest != res.Manifest.Digest {
		t.Errorf("not reproducible: %s vs %s", res.Manifest.Digest, res2.Manifest.Digest)
	}

	// Unpack refuses a non-empty target and leaves it alone.
	if _, err := Unpack(ctx, dir, "t", out, UnpackOptions{}); !errors.Is(err, ErrTargetNotEmpty) {
		t.Errorf("Unpack into non-empty dir = %v", err)
	}
}

func TestBuildOnBase(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "layout")
	l, _ := InitLayout(dir)
	// A Docker-typed base with extra config fields and a history.
	base := layoutTestWriteImage(t, l, layoutTestImageSpec{platform: HostPlatform(), layers: []map[string]string{{"etc/os-release": "base\n"}},
		layerMT: mediaTypeDockerLayerGzipForTest, manifestMT: mediaTypeDockerManifest, configMT: mediaTypeDockerConfig})
	if err := l.SetTag(ctx, "base", base); err != nil {
		t.Fatal(err)
	}
	other := buildTestTree(t, map[string]string{"x": "1"})
	if _, err := Build(ctx, dir, BuildOptions{Layers: []string{other}, Tag: "other"}); err != nil {
		t.Fatal(err)
	}
	upper := buildTestTree(t, map[string]string{"etc/os-release": "base\n", "app/bin": "app"})
	// Through a symlink to the directory.
	link := filepath.Join(t.TempDir(), "upper-link")
	if err := os.Symlink(upper, link); err != nil {
		t.Fatal(err)
	}
	res, err := Build(ctx, dir, BuildOptions{Base: "base", Layers: []string{link}, Tag: "app", CreatedBy: "test"})
	if err != nil {
		t.Fatal(err)
	}
	img, err := l.Resolve(ctx, "app", ResolveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(img.Manifest.Layers) != 2 || img.Manifest.Layers[0].Digest != mustResolve(t, l, "base").Manifest.Layers[0].Digest {
		t.Fatalf("layers %+v", img.Manifest.Layers)
	}
	// Never produce deprecated or Docker types.
	if img.Manifest.MediaType != ocispec.MediaTypeImageManifest || img.Manifest.Config.MediaType != ocispec.MediaTypeImageConfig || img.Manifest.Layers[0].MediaType != ocispec.MediaTypeImageLayerGzip {
		t.Errorf("media types %s %s %s", img.Manifest.MediaType, img.Manifest.Config.MediaType, img.Manifest.Layers[0].MediaType)
	}
	if img.Config.History[len(img.Config.History)-1].CreatedBy != "test" {
		t.Errorf("history %+v", img.Config.History)
	}
	if res.Layers[0].DiffID != img.Config.RootFS.DiffIDs[1] {
		t.Errorf("diff_ids %v", img.Config.RootFS.DiffIDs)
	}
	// The new layer holds app/ (and etc/os-release, whose mtime differs
	// from the base layer's; TestBuildAndUnpack checks minimal diffs).
	if names := buildTestLayerNames(t, l, res.Layers[0]); !slices.Contains(names, "app/bin") {
		t.Errorf("new layer holds %q, want app/bin among them", names)
	}
	tags, _, _ := l.Tags(ctx)
	if strings.Join(tags, ",") != "base,other,app" {
		t.Errorf("tags %v", tags)
	}
	// Rebuilding a tag replaces its entry and keeps the others.
	if _, err := Build(ctx, dir, BuildOptions{Base: "base", Layers: []string{other}, Tag: "other"}); err != nil {
		t.Fatal(err)
	}
	tags, descs, _ := l.Tags(ctx)
	if strings.Join(tags, ",") != "base,other,app" || descs[2].Digest != res.Manifest.Digest {
		t.Errorf("after rebuild: tags %v", tags)
	}
	out := filepath.Join(t.TempDir(), "rootfs")
	if _, err := Unpack(ctx, dir, "app", out, UnpackOptions{}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(out, "app/bin")); string(b) != "app" {
		t.Errorf("app/bin = %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(out, "etc/os-release")); string(b) != "base\n" {
		t.Errorf("etc/os-release = %q", b)
	}
}

func mustResolve(t testing.TB, l *Layout, tag string) *ResolvedImage {
	t.Helper()
	img, err := l.Resolve(context.Background(), tag, ResolveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestBuildFileLayer(t *testing.T) {
	ctx := context.Background()
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	tw.WriteHeader(&tar.Header{Name: "f", Mode: 0o644, Size: 5, Typeflag: tar.TypeReg})
	tw.Write([]byte("hello"))
	tw.Close()
	raw := tb.Bytes()
	diffID := digest.FromBytes(raw)
	var gz, zs bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(raw)
	zw.Close()
	ze, _ := zstd.NewWriter(&zs)
	ze.Write(raw)
	ze.Close()
	bomb := make([]byte, 0)
	{
		var b bytes.Buffer
		w := tar.NewWriter(&b)
		w.WriteHeader(&tar.Header{Name: "big", Mode: 0o644, Size: 1 << 20, Typeflag: tar.TypeReg})
		w.Write(make([]byte, 1<<20))
		w.Close()
		var g bytes.Buffer
		z := gzip.NewWriter(&g)
		z.Write(b.Bytes())
		z.Close()
		bomb = g.Bytes()
	}
	cases := []struct {
		name string
		data []byte
		lim  Limits
		mt   string
		err  error
	}{
		{"tar", raw, Limits{}, ocispec.MediaTypeImageLayer, nil},
		{"gzip", gz.Bytes(), Limits{}, ocispec.MediaTypeImageLayerGzip, nil},
		{"zstd", zs.Bytes(), Limits{}, ocispec.MediaTypeImageLayerZstd, nil},
		{"empty", nil, Limits{}, "", ErrCorrupt},
		{"truncated gzip", gz.Bytes()[:gz.Len()-10], Limits{}, "", ErrCorrupt},
		{"corrupt zstd", append(append([]byte{}, zs.Bytes()[:8]...), bytes.Repeat([]byte{0xff}, 40)...), Limits{}, "", ErrCorrupt},
		{"bomb", bomb, Limits{MaxBytes: 64 << 10}, "", ErrLimitExceeded},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "layout")
			p := filepath.Join(t.TempDir(), "layer")
			os.WriteFile(p, c.data, 0o644)
			res, err := Build(ctx, dir, BuildOptions{Layers: []string{p}, Apply: ApplyOptions{Limits: c.lim}})
			if c.err != nil {
				if !errors.Is(err, c.err) {
					t.Fatalf("Build = %v, want %v", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			d := res.Layers[0]
			if d.DiffID != diffID || d.MediaType != c.mt || d.Digest != digest.FromBytes(c.data) || d.Size != int64(len(c.data)) {
				t.Fatalf("descriptor %+v", d)
			}
			out := filepath.Join(t.TempDir(), "rootfs")
			if _, err := Unpack(ctx, dir, "latest", out, UnpackOptions{}); err != nil {
				t.Fatal(err)
			}
			if b, _ := os.ReadFile(filepath.Join(out, "f")); string(b) != "hello" {
				t.Fatalf("f = %q", b)
			}
		})
	}
}

func TestImageUnpackCorrupt(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "layout")
	if _, err := Build(ctx, dir, BuildOptions{Layers: []string{buildTestTree(t, map[string]string{"a": strings.Repeat("a", 5000)})}}); err != nil {
		t.Fatal(err)
	}
	l := mustOpen(t, dir)
	img := mustResolve(t, l, "latest")

	t.Run("wrong diffID", func(t *testing.T) {
		// A config that lies about the diffID, in a new manifest.
		var cfg map[string]any
		json.Unmarshal(img.RawConfig, &cfg)
		cfg["rootfs"] = map[string]any{"type": "layers", "diff_ids": []string{digest.FromString("lie").String()}}
		cb, _ := json.Marshal(cfg)
		cd, _ := l.WriteBlobBytes(ctx, ocispec.MediaTypeImageConfig, cb)
		m := img.Manifest
		m.Config = cd
		mb, _ := json.Marshal(m)
		md, _ := l.WriteBlobBytes(ctx, ocispec.MediaTypeImageManifest, mb)
		l.SetTag(ctx, "lie", md)
		out := filepath.Join(t.TempDir(), "rootfs")
		if _, err := Unpack(ctx, dir, "lie", out, UnpackOptions{}); !errors.Is(err, ErrDigestMismatch) {
			t.Fatalf("Unpack = %v, want ErrDigestMismatch", err)
		}
		if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("failed Unpack left its target: %v", err)
		}
	})
	t.Run("missing layer", func(t *testing.T) {
		// A foreign (non-distributable) layer is usually not in the layout.
		m := img.Manifest
		m.Layers = []ocispec.Descriptor{{MediaType: "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", Digest: digest.FromString("elsewhere"), Size: 9}}
		mb, _ := json.Marshal(m)
		md, _ := l.WriteBlobBytes(ctx, ocispec.MediaTypeImageManifest, mb)
		l.SetTag(ctx, "foreign", md)
		_, err := Unpack(ctx, dir, "foreign", filepath.Join(t.TempDir(), "rootfs"), UnpackOptions{})
		if !errors.Is(err, ErrBlobNotFound) || !strings.Contains(err.Error(), digest.FromString("elsewhere").Encoded()) {
			t.Fatalf("Unpack = %v, want ErrBlobNotFound naming the blob", err)
		}
	})
	t.Run("tampered layer", func(t *testing.T) {
		p := l.blobPath(img.Manifest.Layers[0].Digest)
		b, _ := os.ReadFile(p)
		b[len(b)-5] ^= 0xff // in the gzip trailer or the last block
		os.WriteFile(p, b, 0o644)
		out := filepath.Join(t.TempDir(), "rootfs")
		_, err := Unpack(ctx, dir, "latest", out, UnpackOptions{})
		if !errors.Is(err, ErrDigestMismatch) && !errors.Is(err, ErrBlobCorrupt) && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Unpack = %v, want a digest or corruption error", err)
		}
	})
}

// buildTestLayerNames lists the entry names of a stored layer, without a
// leading "./" and without the root entry.
func buildTestLayerNames(t testing.TB, l *Layout, d Descriptor) []string {
	t.Helper()
	rc, err := l.OpenBlob(ocispec.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var names []string
	if _, err := List(context.Background(), rc, func(h *tar.Header) error {
		if n := strings.TrimPrefix(h.Name, "./"); n != "" && n != "." {
			names = append(names, n)
		}
		return nil
	}, Limits{}); err != nil {
		t.Fatal(err)
	}
	return names
}
