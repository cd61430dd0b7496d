package vmimage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"

	"github.com/imgtool/imgtool/internal/registry"
	"github.com/imgtool/imgtool/qcow2"
)

// makeChain creates base <- mid <- top in dir (1 GiB virtual each, named
// NAME.qcow2 with PARENT.qcow2 backing names) with a few random 64 KiB
// writes per level, and returns the top's path.
func makeChain(t *testing.T, dir string, names ...string) string {
	t.Helper()
	r := rand.New(rand.NewPCG(7, 7))
	var path string
	for i, n := range names {
		path = filepath.Join(dir, n+".qcow2")
		o := qcow2.CreateOptions{Size: 1 << 30}
		if i > 0 {
			o.BackingFile, o.BackingFormat = names[i-1]+".qcow2", qcow2.FormatQcow2
		}
		if err := qcow2.Create(path, o); err != nil {
			t.Fatal(err)
		}
		img, err := qcow2.Open(path, qcow2.Options{Writable: true})
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64<<10)
		for range 8 {
			for j := range buf {
				buf[j] = byte(r.Uint32())
			}
			if _, err := img.WriteAt(buf, r.Int64N(1<<14)<<16); err != nil {
				t.Fatal(err)
			}
		}
		if err := img.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

// pushChain pushes the levels names (files NAME.qcow2 in dir, base first)
// to ref as a chain image, building the layers by the format (a test
// stand-in for Push); tamper may change a layer blob or the manifest
// before it goes.
func pushChain(t *testing.T, ref string, dir string, names []string, tamper func(i int, blob []byte, m *v1.Manifest) []byte) {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	var levels []Level
	var blobs [][]byte
	for i, n := range names {
		file, err := os.ReadFile(filepath.Join(dir, n+".qcow2"))
		if err != nil {
			t.Fatal(err)
		}
		img, err := qcow2.Open(filepath.Join(dir, n+".qcow2"), qcow2.Options{NoBacking: true})
		if err != nil {
			t.Fatal(err)
		}
		vsize := img.Size()
		img.Close()
		h, err := Header(n, int64(len(file)))
		if err != nil {
			t.Fatal(err)
		}
		blob := append(append(h[:], file...), Trailer(int64(len(file)))...)
		if tamper != nil {
			blob = tamper(i, blob, nil)
		}
		sum := sha256.Sum256(blob)
		l := Level{Index: i, Name: n, VirtualSize: vsize, Size: int64(len(file)), Digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}, BlobSize: int64(len(blob))}
		if i > 0 {
			l.Parent = names[i-1]
		}
		levels = append(levels, l)
		blobs = append(blobs, blob)
	}
	cfg, err := ConfigJSON(levels, runtime.GOARCH)
	if err != nil {
		t.Fatal(err)
	}
	m, err := Manifest(levels, cfg)
	if err != nil {
		t.Fatal(err)
	}
	for i := range levels {
		if err := remote.WriteLayer(r.Context(), static.NewLayer(blobs[i], LayerMediaType)); err != nil {
			t.Fatal(err)
		}
	}
	if err := remote.WriteLayer(r.Context(), static.NewLayer(cfg, ConfigMediaType)); err != nil {
		t.Fatal(err)
	}
	if tamper != nil {
		tamper(-1, nil, m)
	}
	raw, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Put(r, rawManifest(raw)); err != nil {
		t.Fatal(err)
	}
}

// startRegistry starts go-containerregistry's in-process registry; with
// noRange set it answers blob range requests with the whole blob.
func startRegistry(t *testing.T) (host string, noRange *atomic.Bool) {
	reg := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	noRange = new(atomic.Bool)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if noRange.Load() {
			r.Header.Del("Range")
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), noRange
}

// TestOpenRemote opens a three-level chain image lazily and checks that
// it reads, maps and describes itself as the local chain does; that a
// registry without ranges fails saying to pull instead; and that
// manifests and layers breaking the format are refused.
func TestOpenRemote(t *testing.T) {
	host, noRange := startRegistry(t)
	dir := t.TempDir()
	names := []string{"base", "mid", "top"}
	top := makeChain(t, dir, names...)
	ref := "docker://" + host + "/vm:1"
	pushChain(t, strings.TrimPrefix(ref, "docker://"), dir, names, nil)
	ctx := context.Background()

	local, err := qcow2.Open(top, qcow2.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	img, err := OpenRemote(ctx, ref, RemoteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	wantMap, err := local.Map()
	if err != nil {
		t.Fatal(err)
	}
	gotMap, err := img.Map()
	if err != nil {
		t.Fatal(err)
	}
	for i := range gotMap {
		// The same levels, named by file and by reference.
		if f := gotMap[i].Filename; f != "" {
			gotMap[i].Filename = filepath.Join(dir, strings.TrimPrefix(f, "docker://"+host+"/vm:1/"))
		}
	}
	if d := cmp.Diff(wantMap, gotMap); d != "" {
		t.Errorf("map differs (-local +remote):\n%s", d)
	}
	depth := 0
	for l := img; l != nil; l = l.Backing() {
		if want := "docker://" + host + "/vm:1/" + names[2-depth] + ".qcow2"; l.Path() != want {
			t.Errorf("level %d named %q, want %q", depth, l.Path(), want)
		}
		depth++
	}
	if depth != 3 {
		t.Errorf("chain of %d levels, want 3", depth)
	}
	// Every written cluster reads the same (the whole 1 GiB is mostly
	// zeros; compare the first 1 GiB >> 2 where the writes are).
	a, b := make([]byte, 1<<20), make([]byte, 1<<20)
	for off := int64(0); off < 1<<30; off += 1 << 20 {
		if _, err := local.ReadAt(a, off); err != nil {
			t.Fatal(err)
		}
		if _, err := img.ReadAt(b, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Fatalf("bytes at %d differ", off)
		}
	}

	// No ranges: the error says to pull.
	noRange.Store(true)
	_, err = OpenRemote(ctx, ref, RemoteOptions{})
	if !errors.Is(err, registry.ErrRangeUnsupported) || !strings.Contains(err.Error(), "imgtool pull") {
		t.Errorf("registry without ranges: %v, want ErrRangeUnsupported saying to pull", err)
	}
	noRange.Store(false)

	// Hostile images.
	for _, c := range []struct {
		name   string
		tamper func(i int, blob []byte, m *v1.Manifest) []byte
		want   error
	}{
		{"backing escapes", func(i int, blob []byte, m *v1.Manifest) []byte {
			if i == 2 { // top names ../mid.qcow2
				return rewriteBacking(t, blob, "../mid.qcow2")
			}
			return blob
		}, ErrBadBacking},
		{"backing skips a level", func(i int, blob []byte, m *v1.Manifest) []byte {
			if i == 2 {
				return rewriteBacking(t, blob, "base.qcow2")
			}
			return blob
		}, ErrBadBacking},
		{"second file in a layer", func(i int, blob []byte, m *v1.Manifest) []byte {
			if i == 1 {
				blob[len(blob)-1024] = 'x' // end-of-archive is not zeros
			}
			return blob
		}, ErrBadLayer},
		{"tar header", func(i int, blob []byte, m *v1.Manifest) []byte {
			if i == 0 {
				blob[156] = '2' // a symlink
			}
			return blob
		}, ErrBadLayer},
		{"missing parent", func(i int, blob []byte, m *v1.Manifest) []byte {
			if m != nil {
				m.Layers[2].Annotations[AnnotationParent] = "nope"
			}
			return blob
		}, ErrNotChain},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := "docker://" + host + "/bad:" + strings.ReplaceAll(c.name, " ", "-")
			pushChain(t, strings.TrimPrefix(r, "docker://"), dir, names, c.tamper)
			img, err := OpenRemote(ctx, r, RemoteOptions{})
			if err == nil {
				img.Close()
			}
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), strings.TrimPrefix(r, "docker://")) {
				t.Errorf("%v, want %v naming the reference", err, c.want)
			}
			t.Log(err)
		})
	}
}

// rewriteBacking changes the backing file name in the qcow2 header of a
// layer blob (the name lives at the header's backing_file_offset).
func rewriteBacking(t *testing.T, blob []byte, name string) []byte {
	t.Helper()
	q := blob[HeaderSize:]
	off := int(uint64(q[8])<<56 | uint64(q[9])<<48 | uint64(q[10])<<40 | uint64(q[11])<<32 | uint64(q[12])<<24 | uint64(q[13])<<16 | uint64(q[14])<<8 | uint64(q[15]))
	copy(q[off:], name)
	n := len(name)
	q[16], q[17], q[18], q[19] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
	return blob
}
