package vmimage

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func TestValidName(t *testing.T) {
	for _, name := range []string{"base", "db", "web-2", "a.b_c", "0", strings.Repeat("x", 64), "disk"} {
		if err := ValidName(name); err != nil {
			t.Errorf("ValidName(%q) = %v", name, err)
		}
	}
	for _, name := range []string{"", ".hidden", "-opt", "..", "a..b", "a/b", "a b", "a+b", "ü", strings.Repeat("x", 65), "a\x00b", "/abs"} {
		if err := ValidName(name); !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidName(%q) = %v, want ErrInvalidName", name, err)
		}
	}
}

// TestHeaderMatchesArchiveTar checks the fixed header against Go's
// archive/tar: its writer produces the same bytes for the same fields,
// and its reader sees one regular file with the contract's fields.
func TestHeaderMatchesArchiveTar(t *testing.T) {
	for _, size := range []int64{0, 1, 511, 512, 513, 1 << 20, 1<<33 - 1} {
		h, err := Header("web", size)
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		if err := tw.WriteHeader(&tar.Header{
			Typeflag: tar.TypeReg, Name: "disk/web.qcow2", Mode: 0o440, Uid: 107, Gid: 107,
			Size: size, ModTime: time.Unix(0, 0), Format: tar.FormatUSTAR,
		}); err != nil {
			t.Fatal(err)
		}
		if got := buf.Bytes()[:HeaderSize]; !bytes.Equal(got, h[:]) {
			t.Errorf("size %d: header differs from archive/tar's: %s", size, headerDiff(h[:], got))
		}
		got, err := ParseHeader(h[:], "web")
		if err != nil || got != size {
			t.Errorf("ParseHeader(Header(web, %d)) = %d, %v", size, got, err)
		}
	}
}

func TestLayerReadsWithArchiveTar(t *testing.T) {
	for _, size := range []int64{0, 100, 512, 4096 + 3, 1<<33 + 5} {
		h, err := Header("base", size)
		if err != nil {
			t.Fatal(err)
		}
		if got := int64(HeaderSize + (size+511)&^511 + TrailerSize); BlobSize(size) != got {
			t.Errorf("BlobSize(%d) = %d, want %d", size, BlobSize(size), got)
		}
		if size > 1<<20 {
			// Too big to materialize: check the header alone.
			hdr, err := tar.NewReader(bytes.NewReader(h[:])).Next()
			if err != nil || hdr.Size != size {
				t.Errorf("archive/tar reads the base-256 size as %v, %v; want %d", hdr, err, size)
			}
			if got, err := ParseHeader(h[:], "base"); err != nil || got != size {
				t.Errorf("ParseHeader = %d, %v", got, err)
			}
			continue
		}
		data := bytes.Repeat([]byte{0xa5}, int(size))
		blob := append(append(h[:], data...), Trailer(size)...)
		if int64(len(blob)) != BlobSize(size) {
			t.Fatalf("blob of %d bytes, BlobSize says %d", len(blob), BlobSize(size))
		}
		tr := tar.NewReader(bytes.NewReader(blob))
		hdr, err := tr.Next()
		if err != nil {
			t.Fatal(err)
		}
		if hdr.Name != "disk/base.qcow2" || hdr.Typeflag != tar.TypeReg || hdr.Mode != 0o440 || hdr.Uid != 107 || hdr.Gid != 107 || hdr.Size != size || !hdr.ModTime.Equal(time.Unix(0, 0)) {
			t.Errorf("archive/tar reads %+v", hdr)
		}
		got, _ := io.ReadAll(tr)
		if !bytes.Equal(got, data) {
			t.Error("file content differs")
		}
		if _, err := tr.Next(); err != io.EOF {
			t.Errorf("second Next = %v, want EOF", err)
		}
		if err := CheckTrailer(bytes.NewReader(blob[HeaderSize+size:]), "base", size); err != nil {
			t.Errorf("CheckTrailer: %v", err)
		}
	}
}

func TestParseHeaderRefuses(t *testing.T) {
	good, _ := Header("web", 1000)
	tarHeader := func(mod func(*tar.Header)) []byte {
		h := &tar.Header{Typeflag: tar.TypeReg, Name: "disk/web.qcow2", Mode: 0o440, Uid: 107, Gid: 107, Size: 1000, ModTime: time.Unix(0, 0), Format: tar.FormatUSTAR}
		mod(h)
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()[:HeaderSize]
	}
	poke := func(off int, b string) []byte {
		h := good
		copy(h[off:], b)
		return h[:]
	}
	cases := map[string][]byte{
		"other name":   tarHeader(func(h *tar.Header) { h.Name = "disk/db.qcow2" }),
		"escape":       tarHeader(func(h *tar.Header) { h.Name = "../web.qcow2" }),
		"symlink":      tarHeader(func(h *tar.Header) { h.Typeflag, h.Linkname, h.Size = tar.TypeSymlink, "/etc/shadow", 0 }),
		"hardlink":     tarHeader(func(h *tar.Header) { h.Typeflag, h.Linkname, h.Size = tar.TypeLink, "disk/db.qcow2", 0 }),
		"mode":         tarHeader(func(h *tar.Header) { h.Mode = 0o4755 }),
		"owner":        tarHeader(func(h *tar.Header) { h.Uid = 0 }),
		"mtime":        tarHeader(func(h *tar.Header) { h.ModTime = time.Unix(1700000000, 0) }),
		"uname":        tarHeader(func(h *tar.Header) { h.Uname = "root" }),
		"pax":          tarHeader(func(h *tar.Header) { h.Format = tar.FormatPAX; h.PAXRecords = map[string]string{"comment": "x"} }),
		"gnu":          tarHeader(func(h *tar.Header) { h.Format = tar.FormatGNU }),
		"checksum":     poke(148, "000001\x00 "),
		"size garbage": poke(124, "zzzzzzzzzzz\x00"),
		"size base256 huge": func() []byte {
			h := good
			h[124] = 0x80
			for i := 125; i < 136; i++ {
				h[i] = 0xff
			}
			return h[:]
		}(),
		"zeros": make([]byte, HeaderSize),
		"short": good[:100],
	}
	for name, h := range cases {
		if _, err := ParseHeader(h, "web"); !errors.Is(err, ErrBadLayer) {
			t.Errorf("%s: ParseHeader = %v, want ErrBadLayer", name, err)
		}
	}
	if _, err := ParseHeader(good[:], "db"); !errors.Is(err, ErrBadLayer) {
		t.Errorf("header of web read as db: %v", err)
	}
}

func TestCheckTrailerRefuses(t *testing.T) {
	second, _ := Header("db", 3)
	cases := map[string][]byte{
		"short":        make([]byte, 1000),
		"second file":  append(append(make([]byte, 512-100), second[:]...), make([]byte, 1024+512)...),
		"extra bytes":  make([]byte, 512-100+1024+1),
		"dirty pad":    append([]byte{1}, make([]byte, 512-100-1+1024)...),
		"dirty end":    append(make([]byte, 512-100+1023), 7),
		"missing eoa":  make([]byte, 512-100),
		"nothing left": nil,
	}
	for name, rest := range cases {
		if err := CheckTrailer(bytes.NewReader(rest), "web", 100); !errors.Is(err, ErrBadLayer) {
			t.Errorf("%s: CheckTrailer = %v, want ErrBadLayer", name, err)
		}
	}
	if err := CheckTrailer(bytes.NewReader(make([]byte, 512-100+1024)), "web", 100); err != nil {
		t.Errorf("good trailer: %v", err)
	}
}

// testManifest builds the manifest of a chain of levels names[0] (base)
// <- names[1] <- ..., each level's file being size bytes.
func testManifest(names ...string) *v1.Manifest {
	m := &v1.Manifest{
		SchemaVersion: 2,
		MediaType:     ManifestMediaType,
		Config:        v1.Descriptor{MediaType: ConfigMediaType, Size: 2, Digest: fakeDigest("config")},
		Annotations:   map[string]string{AnnotationTop: names[len(names)-1]},
	}
	for i, n := range names {
		size := int64(1000 * (i + 1))
		a := map[string]string{
			AnnotationName:        n,
			AnnotationVirtualSize: "1073741824",
			AnnotationSize:        strconv.FormatInt(size, 10),
			AnnotationTitle:       Title(n),
		}
		if i > 0 {
			a[AnnotationParent] = names[i-1]
		}
		m.Layers = append(m.Layers, v1.Descriptor{MediaType: LayerMediaType, Size: BlobSize(size), Digest: fakeDigest(n), Annotations: a})
	}
	return m
}

func fakeDigest(s string) v1.Hash {
	sum := sha256.Sum256([]byte(s))
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}

func TestPlan(t *testing.T) {
	levels, err := Plan(testManifest("base", "db", "web"))
	if err != nil {
		t.Fatal(err)
	}
	want := []Level{
		{Index: 0, Name: "base", VirtualSize: 1 << 30, Size: 1000, Digest: fakeDigest("base"), BlobSize: BlobSize(1000)},
		{Index: 1, Name: "db", Parent: "base", VirtualSize: 1 << 30, Size: 2000, Digest: fakeDigest("db"), BlobSize: BlobSize(2000)},
		{Index: 2, Name: "web", Parent: "db", VirtualSize: 1 << 30, Size: 3000, Digest: fakeDigest("web"), BlobSize: BlobSize(3000)},
	}
	if d := cmp.Diff(want, levels); d != "" {
		t.Errorf("Plan (-want +got):\n%s", d)
	}
	if levels[2].Backing() != "db.qcow2" || levels[0].Backing() != "" || levels[1].File() != "db.qcow2" {
		t.Errorf("Backing/File wrong: %q %q %q", levels[2].Backing(), levels[0].Backing(), levels[1].File())
	}
}

// TestPlanHostile feeds Plan manifests that are not chains; each must be
// refused with an error naming the defect.
func TestPlanHostile(t *testing.T) {
	set := func(layer int, key, val string) func(*v1.Manifest) {
		return func(m *v1.Manifest) { m.Layers[layer].Annotations[key] = val }
	}
	del := func(layer int, key string) func(*v1.Manifest) {
		return func(m *v1.Manifest) { delete(m.Layers[layer].Annotations, key) }
	}
	cases := []struct {
		name  string
		names []string
		mod   func(*v1.Manifest)
		want  string
	}{
		{"nil layers", []string{"base"}, func(m *v1.Manifest) { m.Layers = nil }, "no layers"},
		{"docker manifest", []string{"base"}, func(m *v1.Manifest) { m.MediaType = "application/vnd.docker.distribution.manifest.v2+json" }, "manifest media type"},
		{"schema 1", []string{"base"}, func(m *v1.Manifest) { m.SchemaVersion = 1 }, "schemaVersion"},
		{"config type", []string{"base"}, func(m *v1.Manifest) { m.Config.MediaType = "application/vnd.oci.empty.v1+json" }, "config media type"},
		{"gzip layer", []string{"base", "db"}, func(m *v1.Manifest) { m.Layers[1].MediaType = "application/vnd.oci.image.layer.v1.tar+gzip" }, "layer 1: media type"},
		{"missing parent", []string{"base", "db", "web"}, set(2, AnnotationParent, "app"), `parent "app" is missing`},
		{"self loop", []string{"base", "db"}, set(1, AnnotationParent, "db"), "its own parent"},
		{"loop", []string{"base", "db", "web"}, func(m *v1.Manifest) {
			m.Layers[1].Annotations[AnnotationParent] = "web"
		}, "backing loop"},
		{"loop without base", []string{"a", "b"}, set(0, AnnotationParent, "b"), "backing loop"},
		{"fork", []string{"base", "db", "web"}, set(2, AnnotationParent, "base"), "fork"},
		{"two bases", []string{"base", "db", "web"}, del(2, AnnotationParent), "have no parent"},
		{"out of order", []string{"base", "db", "web"}, func(m *v1.Manifest) {
			m.Layers[1], m.Layers[2] = m.Layers[2], m.Layers[1]
			m.Annotations[AnnotationTop] = "db"
		}, "want the previous layer"},
		{"base not first", []string{"base", "db"}, func(m *v1.Manifest) {
			m.Layers[0], m.Layers[1] = m.Layers[1], m.Layers[0]
			m.Annotations[AnnotationTop] = "base"
		}, "base comes first"},
		{"duplicate name", []string{"base", "db", "db2"}, func(m *v1.Manifest) {
			set(2, AnnotationName, "db")(m)
			set(2, AnnotationTitle, Title("db"))(m)
		}, "both level"},
		{"bad name", []string{"base", "db"}, set(1, AnnotationName, "../etc"), "invalid level name"},
		{"bad parent name", []string{"base", "db"}, set(1, AnnotationParent, "/abs"), "invalid level name"},
		{"no name", []string{"base"}, del(0, AnnotationName), "annotation org.imgtool.level.name missing"},
		{"no size", []string{"base"}, del(0, AnnotationSize), "org.imgtool.level.size missing"},
		{"negative size", []string{"base"}, set(0, AnnotationSize, "-1"), "not a decimal size"},
		{"hex size", []string{"base"}, set(0, AnnotationSize, "0x10"), "not a decimal size"},
		{"huge size", []string{"base"}, set(0, AnnotationSize, "999999999999999999"), "out of range"},
		{"bad virtual size", []string{"base"}, set(0, AnnotationVirtualSize, "1e9"), "not a decimal size"},
		{"blob size mismatch", []string{"base"}, func(m *v1.Manifest) { m.Layers[0].Size++ }, "blob size"},
		{"title", []string{"base"}, set(0, AnnotationTitle, "disk/other.qcow2"), "image.title"},
		{"digest", []string{"base"}, func(m *v1.Manifest) { m.Layers[0].Digest = v1.Hash{Algorithm: "md5", Hex: "00"} }, "not sha256"},
		{"top", []string{"base", "db"}, func(m *v1.Manifest) { m.Annotations[AnnotationTop] = "base" }, "chain.top"},
		{"no top", []string{"base", "db"}, func(m *v1.Manifest) { m.Annotations = nil }, "chain.top"},
		{"too many", []string{"base"}, func(m *v1.Manifest) {
			for len(m.Layers) <= MaxLevels {
				m.Layers = append(m.Layers, m.Layers[0])
			}
		}, "levels are allowed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := testManifest(tc.names...)
			tc.mod(m)
			levels, err := Plan(m)
			if err == nil {
				t.Fatalf("Plan accepted it: %+v", levels)
			}
			if !errors.Is(err, ErrNotChain) && !errors.Is(err, ErrInvalidName) {
				t.Errorf("error %v wraps neither ErrNotChain nor ErrInvalidName", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
		})
	}
	if _, err := Plan(nil); !errors.Is(err, ErrNotChain) {
		t.Errorf("Plan(nil) = %v", err)
	}
}

func TestCheckBacking(t *testing.T) {
	base := Level{Name: "base"}
	web := Level{Name: "web", Parent: "db"}
	if err := base.CheckBacking("", ""); err != nil {
		t.Error(err)
	}
	if err := web.CheckBacking("db.qcow2", "qcow2"); err != nil {
		t.Error(err)
	}
	bad := []struct {
		l          Level
		name, form string
	}{
		{base, "db.qcow2", "qcow2"},
		{web, "", ""},
		{web, "/work/db.qcow2", "qcow2"},
		{web, "../db.qcow2", "qcow2"},
		{web, "./db.qcow2", "qcow2"},
		{web, "sub/db.qcow2", "qcow2"},
		{web, "base.qcow2", "qcow2"},
		{web, "nbd://host/db", "qcow2"},
		{web, "db.qcow2", "raw"},
		{web, "db.qcow2", ""},
	}
	for _, b := range bad {
		if err := b.l.CheckBacking(b.name, b.form); !errors.Is(err, ErrBadBacking) {
			t.Errorf("%s backing %q (%q): %v, want ErrBadBacking", b.l.Name, b.name, b.form, err)
		}
	}
}

func TestConfigJSON(t *testing.T) {
	levels, err := Plan(testManifest("base", "db"))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := ConfigJSON(levels, "amd64")
	if err != nil {
		t.Fatal(err)
	}
	want := `{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["` + levels[0].Digest.String() + `","` + levels[1].Digest.String() + `"]}}`
	if string(raw) != want {
		t.Errorf("ConfigJSON = %s\nwant %s", raw, want)
	}
	if err := CheckConfig(raw, levels); err != nil {
		t.Error(err)
	}
	if err := CheckConfig(raw, levels[:1]); !errors.Is(err, ErrNotChain) {
		t.Errorf("CheckConfig with a missing level = %v", err)
	}
	swapped := []Level{levels[1], levels[0]}
	if err := CheckConfig(raw, swapped); !errors.Is(err, ErrNotChain) {
		t.Errorf("CheckConfig with swapped levels = %v", err)
	}
	if err := CheckConfig([]byte("{"), levels); !errors.Is(err, ErrNotChain) {
		t.Errorf("CheckConfig of bad JSON = %v", err)
	}
}

func TestLevelNames(t *testing.T) {
	for in, want := range map[string]string{
		"/vms/base.qcow2":                          "base",
		"/vms/os image.qcow2":                      "os_image",
		"/vms/.hidden.qcow2":                       "_hidden",
		"/vms/-opt.qcow2":                          "_opt",
		"/vms/web+2.img":                           "web_2.img",
		"/vms/.qcow2":                              "level",
		"/vms/ünï.qcow2":                           "__n__", // per byte
		"/x/" + strings.Repeat("a", 80) + ".qcow2": strings.Repeat("a", 64),
	} {
		got := levelName(in)
		if got != want {
			t.Errorf("levelName(%q) = %q, want %q", in, got, want)
		}
		if err := ValidName(got); err != nil {
			t.Errorf("levelName(%q) = %q: %v", in, got, err)
		}
	}
	used := map[string]bool{}
	long := strings.Repeat("b", 64)
	for _, want := range []string{"disk", "disk-2", "disk-3"} {
		if got := uniqueName("disk", used); got != want {
			t.Errorf("uniqueName(disk) = %q, want %q", got, want)
		}
	}
	if got := uniqueName(long, used); got != long {
		t.Errorf("uniqueName(long) = %q", got)
	}
	if got := uniqueName(long, used); len(got) != 64 || !strings.HasSuffix(got, "-2") || ValidName(got) != nil {
		t.Errorf("uniqueName(long) again = %q", got)
	}
}
