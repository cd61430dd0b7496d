package layers

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/imgtool/imgtool/internal/tartest"
	"golang.org/x/sys/unix"
)

// listTree returns "path type" lines (plus content for files) of a tree.
func listTree(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	must(t, filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		s := rel
		switch {
		case info.IsDir():
			s += "/"
		case info.Mode()&os.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			s += " -> " + l
		case info.Mode()&os.ModeCharDevice != 0:
			st := info.Sys().(*syscall.Stat_t)
			s += " c " + strings.Join([]string{itoa(unix.Major(st.Rdev)), itoa(unix.Minor(st.Rdev))}, "/")
		case info.Mode().IsRegular():
			b, _ := os.ReadFile(p)
			s += "=" + string(b)
		}
		out = append(out, s)
		return nil
	}))
	slices.Sort(out)
	return out
}

func itoa(v uint32) string { return string(rune('0' + v)) }

func TestApplyFlattening(t *testing.T) {
	lower := tartest.Tar(
		tartest.Dir("a/"), tartest.File("a/x", "lx"), tartest.File("a/y", "ly"),
		tartest.Dir("a/sub/"), tartest.File("a/sub/z", "lz"),
		tartest.File("b", "lb"), tartest.Dir("c/"), tartest.File("c/k", "lk"),
		tartest.File("f", "lf"), tartest.Dir("g/"), tartest.File("g/in", "gi"),
	)
	cases := []struct {
		name  string
		layer []tartest.Entry
		want  []string
	}{
		{"whiteouts remove lower", []tartest.Entry{tartest.Whiteout("b"), tartest.Whiteout("a/x"), tartest.Whiteout("a/sub")},
			[]string{"a/", "a/y=ly", "c/", "c/k=lk", "f=lf", "g/", "g/in=gi"}},
		{"whiteout spares this layer", []tartest.Entry{tartest.File("b", "new"), tartest.Whiteout("b"), tartest.File("a/n", "n"), tartest.Whiteout("a")},
			[]string{"a/", "a/n=n", "b=new", "c/", "c/k=lk", "f=lf", "g/", "g/in=gi"}},
		{"opaque first wherever it is", []tartest.Entry{tartest.Dir("a/"), tartest.File("a/new", "n"), tartest.Dir("a/sub/"), tartest.File("a/sub/w", "w"), tartest.Opaque("a")},
			[]string{"a/", "a/new=n", "a/sub/", "a/sub/w=w", "b=lb", "c/", "c/k=lk", "f=lf", "g/", "g/in=gi"}},
		{"opaque of a missing dir", []tartest.Entry{tartest.Opaque("nope"), tartest.Whiteout("nope/x")},
			[]string{"a/", "a/sub/", "a/sub/z=lz", "a/x=lx", "a/y=ly", "b=lb", "c/", "c/k=lk", "f=lf", "g/", "g/in=gi"}},
		{"file over dir, dir over file, symlink over file", []tartest.Entry{tartest.File("c", "file"), tartest.Dir("f/"), tartest.File("f/in", "i"), tartest.Symlink("b", "/a")},
			[]string{"a/", "a/sub/", "a/sub/z=lz", "a/x=lx", "a/y=ly", "b -> /a", "c=file", "f/", "f/in=i", "g/", "g/in=gi"}},
		{"dir over dir keeps content", []tartest.Entry{tartest.Dir("g/").With(func(h *tar.Header) { h.Mode = 0o700 }), tartest.File("g/more", "m")},
			[]string{"a/", "a/sub/", "a/sub/z=lz", "a/x=lx", "a/y=ly", "b=lb", "c/", "c/k=lk", "f=lf", "g/", "g/in=gi", "g/more=m"}},
		{"hardlink to lower content", []tartest.Entry{tartest.Hardlink("h", "a/x")},
			[]string{"a/", "a/sub/", "a/sub/z=lz", "a/x=lx", "a/y=ly", "b=lb", "c/", "c/k=lk", "f=lf", "g/", "g/in=gi", "h=lx"}},
		{"whiteout of the root-level dir then new content", []tartest.Entry{tartest.Whiteout("a"), tartest.Dir("a/"), tartest.File("a/q", "q")},
			[]string{"a/", "a/q=q", "b=lb", "c/", "c/k=lk", "f=lf", "g/", "g/in=gi"}},
		{"implicit parents", []tartest.Entry{tartest.File("new/deep/file", "d")},
			[]string{"a/", "a/sub/", "a/sub/z=lz", "a/x=lx", "a/y=ly", "b=lb", "c/", "c/k=lk", "f=lf", "g/", "g/in=gi", "new/", "new/deep/", "new/deep/file=d"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			must(t, applyBytes(dir, lower, ApplyOptions{}))
			must(t, applyBytes(dir, tartest.Tar(c.layer...), ApplyOptions{}))
			if d := cmp.Diff(c.want, listTree(t, dir)); d != "" {
				t.Errorf("tree (-want +got):\n%s", d)
			}
		})
	}
}

func TestApplyAttributes(t *testing.T) {
	dir := t.TempDir()
	mt := time.Unix(1600000000, 123456789)
	layer := tartest.Tar(
		tartest.Dir("d/").With(func(h *tar.Header) { h.Mode = 0o1777; h.ModTime = mt }),
		tartest.File("d/suid", "x").With(func(h *tar.Header) { h.Mode = 0o4755; h.Uid = 1000; h.Gid = 2000; h.ModTime = mt }),
		tartest.File("d/caps", "x").Xattr("security.capability", string([]byte{0, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})),
		tartest.File("d/xa", "x").Xattr("user.k", "v").Xattr("trusted.overlay.opaque", "y").Xattr("user.overlay.redirect", "/x").Xattr("trusted.other", "t"),
		tartest.Symlink("d/link", "/nowhere").With(func(h *tar.Header) { h.ModTime = mt; h.Uid = 7 }),
		tartest.File("sparse", string(make([]byte, 4<<20))+"end"),
	)
	must(t, applyBytes(dir, layer, ApplyOptions{}))
	var st unix.Stat_t
	must(t, unix.Lstat(filepath.Join(dir, "d"), &st))
	if st.Mode&0o7777 != 0o1777 || st.Mtim.Nano() != mt.UnixNano() {
		t.Errorf("dir mode %#o mtime %d (set after its children?)", st.Mode&0o7777, st.Mtim.Nano())
	}
	must(t, unix.Lstat(filepath.Join(dir, "d/suid"), &st))
	if st.Mode&0o7777 != 0o4755 {
		t.Errorf("setuid file mode %#o", st.Mode&0o7777)
	}
	if os.Geteuid() == 0 && (st.Uid != 1000 || st.Gid != 2000) {
		t.Errorf("owner %d:%d", st.Uid, st.Gid)
	}
	must(t, unix.Lstat(filepath.Join(dir, "d/link"), &st))
	if st.Mtim.Nano() != mt.UnixNano() || (os.Geteuid() == 0 && st.Uid != 7) {
		t.Errorf("symlink mtime %d uid %d", st.Mtim.Nano(), st.Uid)
	}
	xs, err := listXattrs(filepath.Join(dir, "d/xa"))
	must(t, err)
	if len(xs) != 1 || xs["user.k"] != "v" {
		t.Errorf("xattrs %v, want only user.k (overlay and trusted ones dropped)", xs)
	}
	if os.Geteuid() == 0 {
		xs, err = listXattrs(filepath.Join(dir, "d/caps"))
		must(t, err)
		if _, ok := xs["security.capability"]; !ok {
			t.Errorf("security.capability not set: %v", xs)
		}
	}
	must(t, unix.Stat(filepath.Join(dir, "sparse"), &st))
	if st.Size != 4<<20+3 || st.Blocks*512 > 64<<10 {
		t.Errorf("sparse file: size %d, %d bytes allocated", st.Size, st.Blocks*512)
	}
}

func TestApplyIDMap(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown")
	}
	dir := t.TempDir()
	layer := tartest.Tar(tartest.File("f", "x").With(func(h *tar.Header) { h.Uid = 5; h.Gid = 6 }))
	m := []IDMap{{ContainerID: 0, HostID: 100000, Size: 65536}}
	must(t, applyBytes(dir, layer, ApplyOptions{UIDMap: m, GIDMap: m}))
	var st unix.Stat_t
	must(t, unix.Lstat(filepath.Join(dir, "f"), &st))
	if st.Uid != 100005 || st.Gid != 100006 {
		t.Errorf("owner %d:%d, want 100005:100006", st.Uid, st.Gid)
	}
	err := applyBytes(t.TempDir(), layer, ApplyOptions{UIDMap: []IDMap{{ContainerID: 10, HostID: 1, Size: 1}}})
	if !errors.Is(err, ErrIDMap) {
		t.Errorf("unmapped uid: %v", err)
	}
}

func TestApplyOverlayFormat(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for whiteout devices and trusted xattrs")
	}
	for _, userx := range []bool{false, true} {
		dir := t.TempDir()
		layer := tartest.Tar(
			tartest.Whiteout("gone"), tartest.Dir("o/"), tartest.Opaque("o"), tartest.File("o/f", "f"),
			tartest.Whiteout("d/gone"), tartest.File("kept", "k"), tartest.Whiteout("kept"),
			tartest.File("esc", "e").Xattr("trusted.overlay.origin", "o").Xattr("user.overlay.origin", "u"),
		)
		must(t, applyBytes(dir, layer, ApplyOptions{Overlay: true, UserXattr: userx}))
		want := []string{"d/", "d/gone c 0/0", "esc=e", "gone c 0/0", "kept=k", "o/", "o/f=f"}
		if d := cmp.Diff(want, listTree(t, dir)); d != "" {
			t.Errorf("userxattr=%v: tree (-want +got):\n%s", userx, d)
		}
		prefix := "trusted.overlay."
		if userx {
			prefix = "user.overlay."
		}
		buf := make([]byte, 8)
		if n, err := unix.Lgetxattr(filepath.Join(dir, "o"), prefix+"opaque", buf); err != nil || string(buf[:n]) != "y" {
			t.Errorf("opaque xattr %s: %q %v", prefix+"opaque", buf[:n], err)
		}
		if _, err := unix.Lgetxattr(filepath.Join(dir, "esc"), prefix+"overlay.origin", buf); err != nil {
			t.Errorf("escaped overlay xattr %soverlay.origin missing: %v", prefix, err)
		}
		if _, err := unix.Lgetxattr(filepath.Join(dir, "esc"), prefix+"origin", buf); err == nil {
			t.Errorf("overlay xattr %sorigin from the tar set unescaped", prefix)
		}
	}
}

func TestApplyDigests(t *testing.T) {
	blob := tartest.Gzip(tartest.Tar(tartest.File("a", "b")))
	d, err := Apply(context.Background(), bytes.NewReader(blob), t.TempDir(), ApplyOptions{})
	must(t, err)
	if d.Size != int64(len(blob)) || d.MediaType != MediaTypeTarGzip {
		t.Errorf("descriptor %+v", d)
	}
	wrong := "sha256:" + strings.Repeat("0", 64)
	for _, o := range []ApplyOptions{{ExpectDigest: digestOf(wrong)}, {ExpectDiffID: digestOf(wrong)}} {
		_, err := Apply(context.Background(), bytes.NewReader(blob), t.TempDir(), o)
		if !errors.Is(err, ErrDigestMismatch) {
			t.Errorf("%+v: %v", o, err)
		}
	}
	if _, err := Apply(context.Background(), bytes.NewReader(blob), t.TempDir(), ApplyOptions{ExpectDigest: d.Digest, ExpectDiffID: d.DiffID}); err != nil {
		t.Error(err)
	}
}
