package vmimage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/imgtool/imgtool/internal/testutil"
	"github.com/imgtool/imgtool/overlay/vmchain"
)

// qemuChain makes base <- db <- web and web2 (on db) in dir with
// qemu-img and qemu-io: 1 GiB virtual, a few MiB of distinct data per
// level. db and web2 name their backing file by absolute path, so Push
// has to rewrite their headers; web names db.qcow2 as the format wants.
func qemuChain(t testing.TB, dir string, mib int) map[string]string {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	p := func(n string) string { return filepath.Join(dir, n+".qcow2") }
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", p("base"), "1G")
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", p("base"), "-F", "qcow2", p("db"))
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "db.qcow2", "-F", "qcow2", p("web"))
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", p("db"), "-F", "qcow2", p("web2"))
	m := strconv.Itoa(mib) + "M"
	testutil.Run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 "+m, "-c", "write -P 0x12 512M "+m, p("base"))
	testutil.Run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x22 100M "+m, p("db"))
	testutil.Run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x33 200M "+m, "-c", "write -z 0 64k", p("web"))
	testutil.Run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x44 300M "+m, p("web2"))
	return map[string]string{"base": p("base"), "db": p("db"), "web": p("web"), "web2": p("web2")}
}

// uploadBytes sums the request bodies of blob uploads from request index
// from on.
func uploadBytes(p *testutil.Proxy, from int) int64 {
	var n int64
	for _, r := range p.Requests()[from:] {
		if strings.Contains(r.Path, "/blobs/uploads") {
			n += r.In
		}
	}
	return n
}

// dirState lists dir: name, size, mode, inode and mtime of each entry.
func dirState(t testing.TB, dir string) string {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return "<none>"
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		out = append(out, e.Name()+" "+strconv.FormatInt(fi.Size(), 10)+" "+fi.Mode().String()+" "+strconv.FormatUint(st.Ino, 10)+" "+fi.ModTime().String())
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}

func TestInteropPushPullUpdate(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	proxy := testutil.StartProxy(t, reg.Host)
	ctx := context.Background()
	src := qemuChain(t, t.TempDir(), 3)
	ref1, ref2 := proxy.Host+"/vm:1", proxy.Host+"/vm:2"

	res1, err := Push(ctx, src["web"], ref1, PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res1.Uploaded != 3 || res1.Skipped != 0 || len(res1.Levels) != 3 || res1.Levels[0].Name != "base" || res1.Levels[2].Parent != "db" {
		t.Fatalf("push vm:1 = %+v", res1)
	}
	// Same chain again: the same manifest digest, nothing uploaded.
	mark := proxy.Mark()
	again, err := Push(ctx, src["web"], proxy.Host+"/vm:1b", PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if again.Digest != res1.Digest || again.Uploaded != 0 || uploadBytes(proxy, mark) != 0 {
		t.Errorf("second push of the same chain: digest %s (first %s), uploaded %d, %d bytes sent", again.Digest, res1.Digest, again.Uploaded, uploadBytes(proxy, mark))
	}

	// The update: only web2's blob (and the tiny config) reach the registry.
	mark = proxy.Mark()
	res2, err := Push(ctx, src["web2"], ref2, PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	web2 := res2.Levels[2]
	if res2.Uploaded != 1 || !web2.Uploaded || web2.Name != "web2" || res2.Levels[1].Digest != res1.Levels[1].Digest || res2.Levels[0].Digest != res1.Levels[0].Digest {
		t.Fatalf("push vm:2 = %+v", res2)
	}
	sent := uploadBytes(proxy, mark)
	if sent < web2.BlobSize || sent > web2.BlobSize+4096 {
		t.Errorf("push vm:2 sent %d upload bytes, want web2's blob (%d) plus the config", sent, web2.BlobSize)
	}
	t.Logf("update push: %d bytes uploaded (web2 blob %d; base+db %d bytes not sent)", sent, web2.BlobSize, res2.Levels[0].BlobSize+res2.Levels[1].BlobSize)

	// Pull vm:1, then vm:2 into the same directory: only web2 moves.
	dir := filepath.Join(t.TempDir(), "pulled")
	p1, err := Pull(ctx, ref1, dir, PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p1.Fetched != 3 || p1.Top != filepath.Join(dir, "web.qcow2") {
		t.Fatalf("pull vm:1 = %+v", p1)
	}
	stBase, _ := os.Stat(filepath.Join(dir, "base.qcow2"))
	stDB, _ := os.Stat(filepath.Join(dir, "db.qcow2"))
	mark = proxy.Mark()
	p2, err := Pull(ctx, ref2, dir, PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p2.Fetched != 1 || p2.Kept != 2 || p2.Top != filepath.Join(dir, "web2.qcow2") {
		t.Fatalf("pull vm:2 = %+v", p2)
	}
	got := proxy.BlobBytes(mark)
	var total int64
	for d, n := range got {
		total += n
		if d != web2.Digest && n > 4096 {
			t.Errorf("pull vm:2 downloaded %d bytes of blob %s, which is not web2", n, d)
		}
	}
	if got[web2.Digest] != web2.BlobSize {
		t.Errorf("pull vm:2 downloaded %d bytes of web2, want %d", got[web2.Digest], web2.BlobSize)
	}
	t.Logf("update pull: %d blob bytes downloaded (web2 blob %d)", total, web2.BlobSize)
	for _, n := range []string{"base.qcow2", "db.qcow2"} {
		want := stBase
		if n == "db.qcow2" {
			want = stDB
		}
		fi, err := os.Stat(filepath.Join(dir, n))
		if err != nil || !os.SameFile(fi, want) || !fi.ModTime().Equal(want.ModTime()) {
			t.Errorf("%s was rewritten by the update pull", n)
		}
	}

	// Oracles: the pulled tops read as the sources, every level checks clean,
	// and each backing name is the relative PARENT.qcow2.
	testutil.Run(t, "qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", p2.Top, src["web2"])
	testutil.Run(t, "qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", p1.Top, src["web"])
	for _, n := range []string{"base", "db", "web", "web2"} {
		testutil.Run(t, "qemu-img", "check", "-f", "qcow2", filepath.Join(dir, n+".qcow2"))
	}
	var info []struct {
		Filename        string `json:"filename"`
		BackingFilename string `json:"backing-filename"`
	}
	out := testutil.Run(t, "qemu-img", "info", "--output=json", "--backing-chain", p2.Top)
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatal(err)
	}
	var backing []string
	for _, in := range info {
		backing = append(backing, in.BackingFilename)
	}
	if d := cmp.Diff([]string{"db.qcow2", "base.qcow2", ""}, backing); d != "" {
		t.Errorf("backing names in qemu-img info --backing-chain of the pulled top (-want +got):\n%s\n%s", d, out)
	}
	// The user's source files were only read.
	if out := testutil.Run(t, "qemu-img", "info", "--output=json", src["db"]); !strings.Contains(string(out), `"backing-filename": "`+src["base"]) {
		t.Errorf("the source db.qcow2 no longer names its backing by absolute path:\n%s", out)
	}

	t.Run("skopeo+umoci", func(t *testing.T) {
		testutil.NeedTool(t, "skopeo", "umoci")
		work := t.TempDir()
		layout := filepath.Join(work, "layout")
		testutil.Run(t, "skopeo", "copy", "--src-tls-verify=false", "docker://"+ref1, "oci:"+layout+":vm")
		bundle := filepath.Join(work, "bundle")
		testutil.Run(t, "umoci", "raw", "unpack", "--image", layout+":vm", bundle)
		top := filepath.Join(bundle, "disk", "web.qcow2")
		fi, err := os.Stat(top)
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); fi.Mode().Perm() != 0o440 || (os.Geteuid() == 0 && (st.Uid != 107 || st.Gid != 107)) {
			t.Errorf("umoci unpacked %s with mode %v owner %d:%d, want 0440 107:107", top, fi.Mode().Perm(), st.Uid, st.Gid)
		}
		out := testutil.Run(t, "qemu-img", "info", "--output=json", "--backing-chain", top)
		var info []struct {
			Filename string `json:"filename"`
		}
		if err := json.Unmarshal(out, &info); err != nil {
			t.Fatal(err)
		}
		if len(info) != 3 || filepath.Base(info[2].Filename) != "base.qcow2" {
			t.Errorf("qemu-img info --backing-chain of umoci's %s:\n%s", top, out)
		}
		testutil.Run(t, "qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", top, src["web"])
	})

	t.Run("chain-dir", func(t *testing.T) {
		cdir := filepath.Join(t.TempDir(), "chain")
		seed := filepath.Join(t.TempDir(), "seed.raw")
		testutil.Run(t, "qemu-img", "create", "-q", "-f", "raw", seed, "1M")
		cd, err := vmchain.InitChain(ctx, cdir, seed, vmchain.InitChainOptions{Name: "seed"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Pull(ctx, ref2, cdir, PullOptions{}); err != nil {
			t.Fatal(err)
		}
		imgs, err := cd.Images(ctx)
		if err != nil {
			t.Fatal(err)
		}
		kinds := map[string]string{}
		for _, im := range imgs {
			kinds[im.Name] = string(im.Kind) + "/" + im.Parent
		}
		for n, want := range map[string]string{"base": "level/", "db": "level/base", "web2": "level/db", "seed": "level/"} {
			if kinds[n] != want {
				t.Errorf("chain tree: %s is %q, want %q (all: %v)", n, kinds[n], want, kinds)
			}
		}
		if fi, _ := os.Stat(filepath.Join(cdir, "db.qcow2")); fi == nil || fi.Mode().Perm() != 0o444 {
			t.Errorf("db.qcow2 in the chain directory is not read-only: %v", fi)
		}
	})

	t.Run("flatten", func(t *testing.T) {
		res, err := Push(ctx, src["web"], proxy.Host+"/flat:1", PushOptions{Flatten: true, TempDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Levels) != 1 || res.Levels[0].Name != "disk" || res.Levels[0].Parent != "" {
			t.Fatalf("flatten push = %+v", res)
		}
		dir := filepath.Join(t.TempDir(), "flat")
		p, err := Pull(ctx, proxy.Host+"/flat:1", dir, PullOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if p.Top != filepath.Join(dir, "disk.qcow2") {
			t.Errorf("top %s", p.Top)
		}
		out := testutil.Run(t, "qemu-img", "info", "--output=json", p.Top)
		if strings.Contains(string(out), "backing-filename") {
			t.Errorf("flattened disk has a backing file:\n%s", out)
		}
		testutil.Run(t, "qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", p.Top, src["web"])
	})
}

// rawManifest puts hand-made manifests.
type rawManifest []byte

func (r rawManifest) RawManifest() ([]byte, error)        { return r, nil }
func (r rawManifest) MediaType() (types.MediaType, error) { return ManifestMediaType, nil }

// putChain uploads blobs and a manifest listing them with the given
// annotations (each level: its blob and annotations), plus a config with
// matching diffIDs, as a hostile registry would serve them.
func putChain(t *testing.T, ref string, blobs [][]byte, ann []map[string]string, top string) {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	m := &v1.Manifest{SchemaVersion: 2, MediaType: ManifestMediaType, Annotations: map[string]string{AnnotationTop: top}}
	var levels []Level
	for i, b := range blobs {
		l := static.NewLayer(b, LayerMediaType)
		if err := remote.WriteLayer(r.Context(), l); err != nil {
			t.Fatal(err)
		}
		d, _ := l.Digest()
		m.Layers = append(m.Layers, v1.Descriptor{MediaType: LayerMediaType, Size: int64(len(b)), Digest: d, Annotations: ann[i]})
		levels = append(levels, Level{Digest: d})
	}
	cfg, _ := ConfigJSON(levels, runtime.GOARCH)
	cl := static.NewLayer(cfg, ConfigMediaType)
	if err := remote.WriteLayer(r.Context(), cl); err != nil {
		t.Fatal(err)
	}
	cd, _ := cl.Digest()
	m.Config = v1.Descriptor{MediaType: ConfigMediaType, Size: int64(len(cfg)), Digest: cd}
	raw, _ := json.Marshal(m)
	if err := remote.Put(r, rawManifest(raw)); err != nil {
		t.Fatal(err)
	}
}

// levelBlob frames file as the layer of level name.
func levelBlob(t *testing.T, name string, file []byte) []byte {
	h, err := Header(name, int64(len(file)))
	if err != nil {
		t.Fatal(err)
	}
	return append(append(h[:], file...), Trailer(int64(len(file)))...)
}

func levelAnn(name, parent string, size, vsize int64) map[string]string {
	a := map[string]string{AnnotationName: name, AnnotationSize: strconv.FormatInt(size, 10), AnnotationVirtualSize: strconv.FormatInt(vsize, 10), AnnotationTitle: Title(name)}
	if parent != "" {
		a[AnnotationParent] = parent
	}
	return a
}

// TestInteropPullHostile serves chain images that must be refused, each
// with a clear error and nothing written into DIR.
func TestInteropPullHostile(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	testutil.NeedTool(t, "qemu-img")
	ctx := context.Background()
	work := t.TempDir()
	mk := func(n string, args ...string) []byte {
		p := filepath.Join(work, n)
		testutil.Run(t, "qemu-img", append(append([]string{"create", "-q", "-f", "qcow2"}, args...), p, "64M")...)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	base := mk("base.qcow2")
	db := mk("db.qcow2", "-u", "-b", "base.qcow2", "-F", "qcow2")
	escAbs := mk("abs.qcow2", "-u", "-b", "/etc/passwd", "-F", "qcow2")
	escDot := mk("dot.qcow2", "-u", "-b", "../base.qcow2", "-F", "qcow2")
	rawBacking := mk("rawb.qcow2", "-u", "-b", "base.qcow2", "-F", "raw")
	const vs = 64 << 20
	sz := func(b []byte) int64 { return int64(len(b)) }

	// Two files in one layer: db's file, then a second tar header in the
	// place of the end-of-archive (archive/tar would list two files).
	twoFiles := levelBlob(t, "db", db)
	second, _ := Header("evil", 0)
	copy(twoFiles[len(twoFiles)-TrailerSize:], second[:])

	cases := []struct {
		name  string
		blobs [][]byte
		ann   []map[string]string
		top   string
		want  string
	}{
		{"missing parent", [][]byte{levelBlob(t, "base", base), levelBlob(t, "db", db)},
			[]map[string]string{levelAnn("base", "", sz(base), vs), levelAnn("db", "app", sz(db), vs)}, "db", `parent "app" is missing`},
		{"loop", [][]byte{levelBlob(t, "base", base), levelBlob(t, "db", db)},
			[]map[string]string{levelAnn("base", "db", sz(base), vs), levelAnn("db", "base", sz(db), vs)}, "db", "backing loop"},
		{"two files in a layer", [][]byte{levelBlob(t, "base", base), twoFiles},
			[]map[string]string{levelAnn("base", "", sz(base), vs), levelAnn("db", "base", sz(db), vs)}, "db", "non-zero byte"},
		{"absolute backing", [][]byte{levelBlob(t, "base", base), levelBlob(t, "db", escAbs)},
			[]map[string]string{levelAnn("base", "", sz(base), vs), levelAnn("db", "base", sz(escAbs), vs)}, "db", `names backing file "/etc/passwd"`},
		{"dot-dot backing", [][]byte{levelBlob(t, "base", base), levelBlob(t, "db", escDot)},
			[]map[string]string{levelAnn("base", "", sz(base), vs), levelAnn("db", "base", sz(escDot), vs)}, "db", `names backing file "../base.qcow2"`},
		{"raw backing format", [][]byte{levelBlob(t, "base", base), levelBlob(t, "db", rawBacking)},
			[]map[string]string{levelAnn("base", "", sz(base), vs), levelAnn("db", "base", sz(rawBacking), vs)}, "db", `backing format "raw"`},
		{"wrong virtual size", [][]byte{levelBlob(t, "base", base)},
			[]map[string]string{levelAnn("base", "", sz(base), 1<<30)}, "base", "guest bytes"},
		{"layer name differs from its tar", [][]byte{levelBlob(t, "other", base)},
			[]map[string]string{levelAnn("base", "", sz(base), vs)}, "base", "tar header"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ref := reg.Host + "/hostile" + strconv.Itoa(i) + ":1"
			putChain(t, ref, tc.blobs, tc.ann, tc.top)
			nested := filepath.Join(t.TempDir(), "a")
			for _, dir := range []string{filepath.Join(t.TempDir(), "new"), t.TempDir(), filepath.Join(nested, "b", "new")} {
				before := dirState(t, dir)
				_, err := Pull(ctx, ref, dir, PullOptions{})
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("Pull = %v, want an error saying %q", err, tc.want)
				}
				t.Log(err)
				if !strings.Contains(err.Error(), "hostile"+strconv.Itoa(i)) {
					t.Errorf("error %q does not name the reference", err)
				}
				if after := dirState(t, dir); after != before {
					t.Errorf("Pull wrote into %s:\nbefore %s\nafter %s", dir, before, after)
				}
			}
			if _, err := os.Stat(nested); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("Pull left %s, a parent it made for DIR: %v", nested, err)
			}
		})
	}

	t.Run("blob fails its digest", func(t *testing.T) {
		ref := reg.Host + "/corrupt:1"
		b := levelBlob(t, "base", base)
		putChain(t, ref, [][]byte{b}, []map[string]string{levelAnn("base", "", sz(base), vs)}, "base")
		sum := sha256.Sum256(b)
		path := reg.BlobPath("sha256:" + hex.EncodeToString(sum[:]))
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		data[HeaderSize+100] ^= 0xff // inside the qcow2 header padding: still parses
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		before := dirState(t, dir)
		_, err = Pull(ctx, ref, dir, PullOptions{})
		if err == nil || !strings.Contains(err.Error(), "fails its digest") {
			t.Fatalf("Pull = %v, want a digest failure", err)
		}
		if after := dirState(t, dir); after != before {
			t.Errorf("Pull wrote into %s:\nbefore %s\nafter %s", dir, before, after)
		}
	})

	t.Run("conflicting local file", func(t *testing.T) {
		ref := reg.Host + "/conflict:1"
		putChain(t, ref, [][]byte{levelBlob(t, "base", base)}, []map[string]string{levelAnn("base", "", sz(base), vs)}, "base")
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "base.qcow2"), make([]byte, len(base)), 0o644); err != nil {
			t.Fatal(err)
		}
		before := dirState(t, dir)
		_, err := Pull(ctx, ref, dir, PullOptions{})
		if err == nil || !strings.Contains(err.Error(), "different content") {
			t.Fatalf("Pull = %v, want a refusal to replace base.qcow2", err)
		}
		if after := dirState(t, dir); after != before {
			t.Errorf("Pull changed %s", dir)
		}
	})

	t.Run("not a chain image", func(t *testing.T) {
		// An ordinary container image is refused from its manifest.
		r, _ := name.ParseReference(reg.Host + "/plain:1")
		img, err := random.Image(1024, 1)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(r, img); err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(t.TempDir(), "d")
		if _, err := Pull(ctx, r.String(), dir, PullOptions{}); !errors.Is(err, ErrNotChain) {
			t.Fatalf("Pull of a container image = %v, want ErrNotChain", err)
		}
		if _, err := Pull(ctx, reg.Host+"/plain:404", dir, PullOptions{}); err == nil {
			t.Fatal("Pull of a missing tag succeeded")
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("Pull created %s: %v", dir, err)
		}
	})
}
