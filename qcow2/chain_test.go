package qcow2

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// copyFixture copies a fixture image to dir/name.
func copyFixture(t *testing.T, fix, dir, name string) string {
	t.Helper()
	b, err := os.ReadFile(fixture(fix))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// setBacking rewrites the header of the image at path to name backing
// (with format fmt, "" for none), using Header.MarshalBinary.
func setBacking(t *testing.T, path, backing, format string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h, err := parseHeader(path, b, int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	h.RemoveExtension(ExtBackingFormat)
	if format != "" {
		h.SetExtension(ExtBackingFormat, []byte(format))
	}
	h.BackingFile = backing
	out, err := h.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	clear(b[:h.ClusterSize()])
	copy(b, out)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestHeaderRoundTrip(t *testing.T) {
	for _, name := range fixtures {
		b, err := os.ReadFile(fixture(name))
		if err != nil {
			t.Fatal(err)
		}
		h, err := parseHeader(name, b, int64(len(b)))
		if err != nil {
			t.Fatal(err)
		}
		out, err := h.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		nb := append([]byte(nil), b...)
		clear(nb[:h.ClusterSize()])
		copy(nb, out)
		h2, err := parseHeader(name, nb, int64(len(b)))
		if err != nil {
			t.Fatalf("%s: re-parsing: %v", name, err)
		}
		if fmt.Sprintf("%+v", h) != fmt.Sprintf("%+v", h2) {
			t.Errorf("%s: header changed in round trip:\n%+v\n%+v", name, h, h2)
		}
	}
}

func TestChainPolicy(t *testing.T) {
	dir := t.TempDir()
	base := copyFixture(t, "chain/base.qcow2", dir, "base.qcow2")
	_ = base
	top := copyFixture(t, "chain/top.qcow2", dir, "top.qcow2")

	open := func(opts Options) error {
		img, err := Open(top, opts)
		if err == nil {
			img.Close()
		}
		return err
	}
	for _, name := range []string{"json:{\"driver\":\"file\",\"filename\":\"/etc/passwd\"}", "nbd://host/export", "http://example.com/x.qcow2", "file:base.qcow2"} {
		setBacking(t, top, name, "qcow2")
		if err := open(Options{}); !errors.Is(err, ErrRefused) {
			t.Errorf("backing %q: %v, want ErrRefused", name, err)
		}
		// Info must refuse too (it resolves the reference).
		if _, err := ChainInfo(top, Options{}); !errors.Is(err, ErrRefused) {
			t.Errorf("ChainInfo with backing %q: %v, want ErrRefused", name, err)
		}
	}

	// A relative name with a colon after a slash is a path.
	sub := filepath.Join(dir, "a:b")
	os.Mkdir(sub, 0o755)
	copyFixture(t, "chain/base.qcow2", sub, "base.qcow2")
	setBacking(t, top, "./a:b/base.qcow2", "qcow2")
	if err := open(Options{}); err != nil {
		t.Errorf("backing ./a:b/base.qcow2: %v", err)
	}

	// The policy hook sees the resolved path and can refuse.
	setBacking(t, top, "base.qcow2", "qcow2")
	var seen []Reference
	hook := func(r Reference) error {
		seen = append(seen, r)
		if strings.HasSuffix(r.Path, "base.qcow2") {
			return errors.New("outside the allowed directory")
		}
		return nil
	}
	if err := open(Options{CheckReference: hook}); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "outside the allowed directory") {
		t.Errorf("policy refusal: %v", err)
	}
	if len(seen) != 1 || seen[0].Path != filepath.Join(dir, "base.qcow2") || seen[0].Name != "base.qcow2" || seen[0].Kind != "backing" {
		t.Errorf("hook saw %+v", seen)
	}
	if err := open(Options{}); err != nil {
		t.Errorf("allowed chain: %v", err)
	}

	// A missing backing file fails Open but not info of the top alone.
	setBacking(t, top, "missing.qcow2", "qcow2")
	if err := open(Options{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing backing: %v, want ErrNotExist", err)
	}
	if err := open(Options{NoBacking: true}); err != nil {
		t.Errorf("NoBacking with a missing backing file: %v", err)
	}

	// Unsupported backing format.
	setBacking(t, top, "base.qcow2", "vmdk")
	if err := open(Options{}); !errors.Is(err, ErrUnsupportedFeature) {
		t.Errorf("vmdk backing: %v", err)
	}
}

func TestChainLoopAndDepth(t *testing.T) {
	dir := t.TempDir()
	a := copyFixture(t, "chain/top.qcow2", dir, "a.qcow2")
	b := copyFixture(t, "chain/top.qcow2", dir, "b.qcow2")
	setBacking(t, a, "b.qcow2", "qcow2")
	setBacking(t, b, "a.qcow2", "")
	if _, err := Open(a, Options{}); !errors.Is(err, ErrChainLoop) {
		t.Errorf("loop: %v, want ErrChainLoop", err)
	}
	if _, err := ChainInfo(a, Options{}); !errors.Is(err, ErrChainLoop) {
		t.Errorf("ChainInfo loop: %v, want ErrChainLoop", err)
	}
	setBacking(t, a, "a.qcow2", "qcow2")
	if _, err := Open(a, Options{}); !errors.Is(err, ErrChainLoop) {
		t.Errorf("self loop: %v, want ErrChainLoop", err)
	}

	// A chain of 6 images: 5 backing files.
	prev := copyFixture(t, "chain/base.qcow2", dir, "l0.qcow2")
	for i := 1; i < 6; i++ {
		p := copyFixture(t, "chain/top.qcow2", dir, fmt.Sprintf("l%d.qcow2", i))
		setBacking(t, p, filepath.Base(prev), "qcow2")
		prev = p
	}
	img, err := Open(prev, Options{MaxChainDepth: 5})
	if err != nil {
		t.Fatalf("depth 5 with limit 5: %v", err)
	}
	if img.Layer(5) == nil || img.Layer(6) != nil {
		t.Error("chain should have 6 layers")
	}
	img.Close()
	if _, err := Open(prev, Options{MaxChainDepth: 4}); !errors.Is(err, ErrChainTooDeep) {
		t.Errorf("depth 5 with limit 4: %v, want ErrChainTooDeep", err)
	}
	if _, err := ChainInfo(prev, Options{MaxChainDepth: 4}); !errors.Is(err, ErrChainTooDeep) {
		t.Errorf("ChainInfo depth 5 with limit 4: %v, want ErrChainTooDeep", err)
	}

	// Each failure is said once, however deep it lies: not wrapped once
	// per level of the chain.
	_, deep := Open(prev, Options{MaxChainDepth: 2})
	if !errors.Is(deep, ErrChainTooDeep) || strings.Count(deep.Error(), "too deep") != 1 || strings.Contains(deep.Error(), "backing file of") {
		t.Errorf("too deep: %q, want the refusal said once", deep)
	}
	if err := os.Remove(filepath.Join(dir, "l0.qcow2")); err != nil {
		t.Fatal(err)
	}
	_, missing := Open(prev, Options{})
	if !errors.Is(missing, os.ErrNotExist) {
		t.Fatalf("missing base: %v, want ErrNotExist", missing)
	}
	if msg := missing.Error(); !strings.HasPrefix(msg, "qcow2: ") || strings.Count(msg, "qcow2: open") != 1 ||
		strings.Count(msg, "backing file of") != 1 || !strings.Contains(msg, "l1.qcow2") {
		t.Errorf("missing base: %q, want one prefix naming l1.qcow2 as the image whose backing file is missing", missing)
	}
}
