package layers

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/imgtool/imgtool/internal/tartest"
	"github.com/imgtool/imgtool/internal/treecmp"
	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// sandbox is a temp dir holding the target "root" and, next to it, an
// "outside" dir with a file the layers must never touch.
type sandbox struct {
	parent, root, outside string
	before                map[string]treecmp.Entry
}

func newSandbox(t *testing.T) *sandbox {
	t.Helper()
	p := t.TempDir()
	s := &sandbox{parent: p, root: filepath.Join(p, "root"), outside: filepath.Join(p, "outside")}
	must(t, os.MkdirAll(s.root, 0o755))
	must(t, os.MkdirAll(filepath.Join(s.outside, "dir"), 0o755))
	must(t, os.WriteFile(filepath.Join(s.outside, "victim"), []byte("keep me"), 0o600))
	var err error
	s.before, err = treecmp.Snapshot(s.outside, treecmp.Options{})
	must(t, err)
	return s
}

// check fails the test if anything outside the target changed.
func (s *sandbox) check(t *testing.T) {
	t.Helper()
	after, err := treecmp.Snapshot(s.outside, treecmp.Options{})
	must(t, err)
	if d := treecmp.Diff(s.before, after); d != nil {
		t.Errorf("outside of the target changed:\n%s", strings.Join(d, "\n"))
	}
	var st unix.Stat_t
	must(t, unix.Lstat(s.outside, &st))
	if st.Mode&0o7777 != 0o755 || st.Uid != uint32(os.Getuid()) {
		t.Errorf("outside dir mode/owner changed: %#o %d", st.Mode&0o7777, st.Uid)
	}
	ents, err := os.ReadDir(s.parent)
	must(t, err)
	for _, e := range ents {
		if e.Name() != "root" && e.Name() != "outside" {
			t.Errorf("%s written next to the target", e.Name())
		}
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func applyBytes(dir string, blob []byte, opts ApplyOptions) error {
	_, err := Apply(context.Background(), bytes.NewReader(blob), dir, opts)
	return err
}

func ptr[T any](v T) *T { return &v }

func TestApplySecurity(t *testing.T) {
	// Paths that tests put into layers must be absolute paths of the
	// sandbox; build them per test.
	type tc struct {
		name    string
		layers  func(s *sandbox) [][]byte
		opts    ApplyOptions
		wantErr error // nil: any error when anyErr, else success
		anyErr  bool
		after   func(t *testing.T, s *sandbox)
	}
	one := func(es ...tartest.Entry) func(*sandbox) [][]byte {
		return func(*sandbox) [][]byte { return [][]byte{tartest.Tar(es...)} }
	}
	zeros := make([]byte, 8<<20)
	many := make([]tartest.Entry, 50)
	for i := range many {
		many[i] = tartest.File("f"+strings.Repeat("x", i), "")
	}
	gz := tartest.Gzip(tartest.Tar(tartest.File("a", strings.Repeat("hello world ", 10000))))
	zs := tartest.Zstd(tartest.Tar(tartest.File("a", strings.Repeat("hello world ", 10000))), 0)
	corrupt := func(b []byte) []byte {
		c := bytes.Clone(b)
		for i := len(c) / 3; i < len(c)/3+16; i++ {
			c[i] ^= 0x5a
		}
		return c
	}
	exists := func(rel string) func(t *testing.T, s *sandbox) {
		return func(t *testing.T, s *sandbox) {
			if _, err := os.Lstat(filepath.Join(s.root, rel)); err != nil {
				t.Errorf("want %s inside the target: %v", rel, err)
			}
		}
	}
	cases := []tc{
		{name: "dotdot", layers: one(tartest.File("../victim", "pwned")), wantErr: ErrUnsafePath},
		{name: "dotdot inside", layers: one(tartest.Dir("a/"), tartest.File("a/../../victim", "pwned")), wantErr: ErrUnsafePath},
		{name: "absolute", layers: func(s *sandbox) [][]byte {
			return [][]byte{tartest.Tar(tartest.File(filepath.Join(s.outside, "victim"), "pwned"))}
		}, wantErr: ErrUnsafePath},
		{name: "unclean", layers: one(tartest.File("a//b", "x")), wantErr: ErrUnsafePath},
		{name: "symlink then file through it", layers: func(s *sandbox) [][]byte {
			return [][]byte{tartest.Tar(tartest.Symlink("link", s.outside), tartest.File("link/victim", "pwned"))}
		}, anyErr: true},
		{name: "relative symlink up then file through it", layers: one(
			tartest.Symlink("link", "../outside"), tartest.File("link/victim", "pwned")), anyErr: true},
		{name: "symlink to root then entries", layers: one(
			tartest.Symlink("x", "/"), tartest.File("x/etc/passwd", "root::0:0")),
			after: exists("etc/passwd")},
		{name: "symlink to /. then later layer", layers: func(s *sandbox) [][]byte {
			return [][]byte{
				tartest.Tar(tartest.Symlink("x", "/.")),
				tartest.Tar(tartest.Dir("x/"), tartest.File("x/victim", "pwned")),
			}
		}, after: exists("x/victim")},
		{name: "symlink to /. then later layer writing through it", layers: func(s *sandbox) [][]byte {
			return [][]byte{
				tartest.Tar(tartest.Symlink("x", "/.")),
				tartest.Tar(tartest.File("x/"+strings.TrimPrefix(s.outside, "/")+"/victim", "pwned")),
			}
		}, after: func(t *testing.T, s *sandbox) {
			exists(strings.TrimPrefix(s.outside, "/")+"/victim")(t, s)
		}},
		{name: "hardlink outside", layers: one(tartest.Hardlink("h", "../outside/victim")), wantErr: ErrHardlink},
		{name: "hardlink absolute", layers: func(s *sandbox) [][]byte {
			return [][]byte{tartest.Tar(tartest.Hardlink("h", filepath.Join(s.outside, "victim")))}
		}, wantErr: ErrHardlink},
		{name: "hardlink through symlink", layers: func(s *sandbox) [][]byte {
			return [][]byte{tartest.Tar(tartest.Symlink("l", s.outside), tartest.Hardlink("h", "l/victim"))}
		}, wantErr: ErrHardlink},
		{name: "hardlink to symlink links the symlink", layers: func(s *sandbox) [][]byte {
			return [][]byte{
				tartest.Tar(tartest.Symlink("s", filepath.Join(s.outside, "victim")), tartest.Hardlink("h", "s")),
				tartest.Tar(tartest.File("h", "pwned")),
			}
		}, after: func(t *testing.T, s *sandbox) {
			l, err := os.Readlink(filepath.Join(s.root, "s"))
			if err != nil || l != filepath.Join(s.outside, "victim") {
				t.Errorf("s: %q %v", l, err)
			}
		}},
		{name: "hardlink to dir", layers: one(tartest.Dir("d/"), tartest.Hardlink("h", "d")), wantErr: ErrHardlink},
		{name: "chmod and chown through symlink", layers: func(s *sandbox) [][]byte {
			return [][]byte{
				tartest.Tar(tartest.Symlink("d", s.outside), tartest.Symlink("f", filepath.Join(s.outside, "victim"))),
				tartest.Tar(
					tartest.Dir("d/").With(func(h *tar.Header) { h.Mode = 0o777; h.Uid = 4242 }),
					tartest.Fifo("f").With(func(h *tar.Header) { h.Mode = 0o777; h.Uid = 4242 })),
			}
		}, after: exists("f")},
		{name: "chmod of the root through a symlinked parent", layers: func(s *sandbox) [][]byte {
			return [][]byte{
				tartest.Tar(tartest.Symlink("d", s.outside)),
				tartest.Tar(tartest.Dir("d/dir/").With(func(h *tar.Header) { h.Mode = 0o777 })),
			}
		}, anyErr: true},
		{name: "device not permitted", layers: one(tartest.Char("null", 1, 3)), opts: ApplyOptions{AllowDevices: ptr(false)}, wantErr: ErrDevicesNotPermitted},
		{name: "block device not permitted", layers: one(tartest.Block("sda", 8, 0)), opts: ApplyOptions{AllowDevices: ptr(false)}, wantErr: ErrDevicesNotPermitted},
		{name: "device skipped", layers: one(tartest.Char("null", 1, 3), tartest.File("ok", "")), opts: ApplyOptions{AllowDevices: ptr(false), SkipDevices: true},
			after: func(t *testing.T, s *sandbox) {
				if _, err := os.Lstat(filepath.Join(s.root, "null")); err == nil {
					t.Error("device created although not permitted")
				}
			}},
		{name: "duplicate", layers: one(tartest.File("a", "1"), tartest.File("a", "2")), wantErr: ErrDuplicateEntry},
		{name: "duplicate spelled differently", layers: one(tartest.Dir("d/"), tartest.Dir("./d")), wantErr: ErrDuplicateEntry},
		{name: "bare whiteout", layers: one(tartest.File(".wh.", "")), wantErr: ErrBadWhiteout},
		{name: "whiteout of dotdot", layers: one(tartest.Dir("a/"), tartest.File("a/.wh...", "")), wantErr: ErrBadWhiteout},
		{name: "whiteout of dot", layers: one(tartest.File(".wh..", "")), wantErr: ErrBadWhiteout},
		{name: "whiteout through symlink", layers: func(s *sandbox) [][]byte {
			return [][]byte{tartest.Tar(tartest.Symlink("l", s.outside), tartest.Whiteout("l/victim"), tartest.Opaque("l"))}
		}},
		{name: "bytes bomb", layers: func(*sandbox) [][]byte {
			return [][]byte{tartest.Gzip(tartest.Tar(tartest.File("zeros", string(zeros))))}
		}, opts: ApplyOptions{Limits: Limits{MaxBytes: 1 << 20}}, wantErr: ErrLimitExceeded},
		{name: "entries bomb", layers: one(many...), opts: ApplyOptions{Limits: Limits{MaxEntries: 10}}, wantErr: ErrLimitExceeded},
		{name: "truncated gzip", layers: func(*sandbox) [][]byte { return [][]byte{gz[:len(gz)/2]} }, wantErr: ErrCorrupt},
		{name: "corrupt gzip", layers: func(*sandbox) [][]byte { return [][]byte{corrupt(gz)} }, wantErr: ErrCorrupt},
		{name: "truncated zstd", layers: func(*sandbox) [][]byte { return [][]byte{zs[:len(zs)/2]} }, wantErr: ErrCorrupt},
		{name: "corrupt zstd", layers: func(*sandbox) [][]byte { return [][]byte{corrupt(zs)} }, wantErr: ErrCorrupt},
		{name: "zstd window too large", layers: func(*sandbox) [][]byte {
			return [][]byte{tartest.Zstd(tartest.Tar(tartest.File("zeros", string(zeros))), 8<<20)}
		}, opts: ApplyOptions{Limits: Limits{ZstdMaxWindow: 1 << 20}}, wantErr: ErrLimitExceeded},
		{name: "truncated tar", layers: func(*sandbox) [][]byte {
			b := tartest.Tar(tartest.File("a", strings.Repeat("x", 5000)))
			return [][]byte{b[:2000]}
		}, wantErr: ErrCorrupt},
		{name: "pax bomb over archive/tar cap", layers: func(*sandbox) [][]byte {
			return [][]byte{tartest.RawPAXHeader(2<<20, []byte(paxRecord("path", strings.Repeat("A", 2<<20))))}
		}, wantErr: ErrCorrupt},
		{name: "pax bomb over our cap", layers: func(*sandbox) [][]byte { return [][]byte{tartest.PAXBomb(8 << 10)} },
			opts: ApplyOptions{Limits: Limits{MaxPAXHeaderBytes: 4096}}, wantErr: ErrLimitExceeded},
		{name: "pax header claiming a terabyte", layers: func(*sandbox) [][]byte {
			return [][]byte{tartest.RawPAXHeader(1<<40, []byte("30 path=aaaaaaaaaaaaaaaaaaaaa\n"))}
		}, wantErr: ErrCorrupt},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newSandbox(t)
			var err error
			for _, l := range c.layers(s) {
				if err = applyBytes(s.root, l, c.opts); err != nil {
					break
				}
			}
			switch {
			case c.wantErr != nil:
				if !errors.Is(err, c.wantErr) {
					t.Errorf("got error %v, want %v", err, c.wantErr)
				}
			case c.anyErr:
				if err == nil {
					t.Error("got no error")
				}
			case err != nil:
				t.Errorf("unexpected error: %v", err)
			}
			if err != nil {
				t.Logf("error: %v", err)
			}
			s.check(t)
			if c.after != nil {
				c.after(t, s)
			}
		})
	}
}

// paxRecord formats one PAX record ("LEN key=value\n").
func paxRecord(k, v string) string {
	n := len(k) + len(v) + 3
	for {
		s := strconv.Itoa(n) + " " + k + "=" + v + "\n"
		if len(s) == n {
			return s
		}
		n = len(s)
	}
}

func digestOf(s string) digest.Digest { return digest.Digest(s) }

// TestApplyFailureRemovesCreatedDir: a bad blob leaves no directory
// behind when Apply made it, and leaves an existing directory in place.
func TestApplyFailureRemovesCreatedDir(t *testing.T) {
	garbage := bytes.Repeat([]byte("not a tar "), 100)
	fresh := filepath.Join(t.TempDir(), "new")
	if _, err := Apply(context.Background(), bytes.NewReader(garbage), fresh, ApplyOptions{}); err == nil {
		t.Fatal("garbage blob applied")
	}
	if _, err := os.Lstat(fresh); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("directory left behind: %v", err)
	}
	// A digest mismatch is found only after extraction.
	blob := tartest.Tar(tartest.File("f", "data"))
	bad := ApplyOptions{ExpectDigest: digest.Digest("sha256:" + strings.Repeat("0", 64))}
	if _, err := Apply(context.Background(), bytes.NewReader(blob), fresh, bad); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("err = %v, want ErrDigestMismatch", err)
	}
	if _, err := os.Lstat(fresh); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("directory left behind after digest mismatch: %v", err)
	}
	existing := t.TempDir()
	os.WriteFile(filepath.Join(existing, "keep"), []byte("x"), 0o644)
	if _, err := Apply(context.Background(), bytes.NewReader(garbage), existing, ApplyOptions{}); err == nil {
		t.Fatal("garbage blob applied")
	}
	if _, err := os.Stat(filepath.Join(existing, "keep")); err != nil {
		t.Fatalf("existing directory damaged: %v", err)
	}
}
