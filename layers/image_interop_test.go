package layers

import (
	"archive/tar"
	"context"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imgtool/imgtool/internal/testutil"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
)

// imgTestMtime is the mtime the test trees give their entries.
var imgTestMtime = time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC)

// imgTestWrite makes a file (and its parents) with mode and owner.
func imgTestWrite(t testing.TB, root, rel, content string, mode os.FileMode, uid, gid int) {
	t.Helper()
	p := filepath.Join(root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	os.Remove(p)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(p, uid, gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

// imgTestTimes sets the mtime and atime of every entry under root,
// without following symlinks, directories last.
func imgTestTimes(t testing.TB, root string) {
	t.Helper()
	var dirs []string
	ts := []unix.Timespec{unix.NsecToTimespec(imgTestMtime.UnixNano()), unix.NsecToTimespec(imgTestMtime.UnixNano())}
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		if fi.IsDir() {
			dirs = append(dirs, p)
			return nil
		}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatal(err)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		unix.UtimesNanoAt(unix.AT_FDCWD, dirs[i], ts, unix.AT_SYMLINK_NOFOLLOW)
	}
}

// imgTestCapability is a valid VFS_CAP_REVISION_2 security.capability
// value granting cap_net_bind_service (effective).
func imgTestCapability() []byte {
	b := make([]byte, 20)
	binary.LittleEndian.PutUint32(b[0:], 0x02000001)
	binary.LittleEndian.PutUint32(b[4:], 1<<10)
	return b
}

// imgTestTreeA makes a tree with the entry kinds and attributes a layer
// carries. It needs root (owners, devices, security.capability).
func imgTestTreeA(t testing.TB, root string) {
	t.Helper()
	imgTestWrite(t, root, "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644, 0, 0)
	imgTestWrite(t, root, "etc/shadow", "root:*:19000::::::\n", 0o640, 0, 42)
	imgTestWrite(t, root, "bin/tool", "#!/bin/sh\necho tool\n", 0o4755|os.ModeSetuid, 0, 0)
	os.Chmod(filepath.Join(root, "bin/tool"), 0o755|os.ModeSetuid)
	imgTestWrite(t, root, "bin/sgid", "sgid\n", 0o755, 0, 50)
	os.Chmod(filepath.Join(root, "bin/sgid"), 0o755|os.ModeSetgid)
	if err := unix.Lsetxattr(filepath.Join(root, "bin/tool"), "security.capability", imgTestCapability(), 0); err != nil {
		t.Fatalf("setting security.capability: %v", err)
	}
	os.MkdirAll(filepath.Join(root, "tmp"), 0o755)
	os.Chmod(filepath.Join(root, "tmp"), 0o777|os.ModeSticky)
	imgTestWrite(t, root, "srv/data/a.txt", "alpha\n", 0o644, 1000, 1000)
	if err := unix.Lsetxattr(filepath.Join(root, "srv/data/a.txt"), "user.note", []byte("hello"), 0); err != nil {
		t.Fatalf("setting user.note: %v", err)
	}
	imgTestWrite(t, root, "srv/data/b.txt", "bravo\n", 0o600, 1000, 1000)
	imgTestWrite(t, root, "srv/data/sub/c.txt", "charlie\n", 0o644, 0, 0)
	imgTestWrite(t, root, "srv/data/sub/deeper/e.txt", "echo\n", 0o644, 0, 0)
	imgTestWrite(t, root, "srv/hard1", "shared inode\n", 0o640, 7, 8)
	if err := os.Link(filepath.Join(root, "srv/hard1"), filepath.Join(root, "srv/hard2")); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(root, "usr/lib"), 0o755)
	os.Symlink("/etc/passwd", filepath.Join(root, "usr/link-abs"))
	os.Symlink("../etc/passwd", filepath.Join(root, "usr/link-rel"))
	os.Symlink("/nonexistent/target", filepath.Join(root, "usr/dangling"))
	os.Symlink("/", filepath.Join(root, "usr/rootlink"))
	os.Lchown(filepath.Join(root, "usr/link-rel"), 5, 6)
	os.MkdirAll(filepath.Join(root, "run"), 0o755)
	if err := unix.Mkfifo(filepath.Join(root, "run/fifo"), 0o620); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(root, "dev"), 0o755)
	if err := unix.Mknod(filepath.Join(root, "dev/null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(root, "dev/null"), 0o666)
	os.MkdirAll(filepath.Join(root, "empty"), 0o700)
	imgTestWrite(t, root, "names/with space and ünïcode", "x", 0o644, 0, 0)
	long := strings.Repeat("long-directory-name/", 6) + strings.Repeat("f", 120)
	imgTestWrite(t, root, long, "long name\n", 0o644, 0, 0)
	imgTestWrite(t, root, "empty-file", "", 0o644, 0, 0)
	// A sparse file: 1 MiB hole, some data, another hole.
	f, err := os.Create(filepath.Join(root, "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("data in the middle"), 1<<20)
	f.Truncate(3 << 20)
	f.Close()
	os.Chmod(root, 0o755)
	imgTestTimes(t, root)
}

// imgTestTreeB copies tree A (with cp -a) to dst and changes it:
// deletions, a replaced directory, a dir replaced by a file and back, a
// new hardlink to a lower file, changed modes, owners and xattrs.
func imgTestTreeB(t testing.TB, a, dst string) {
	t.Helper()
	testutil.Run(t, "cp", "-a", a, dst)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Remove(filepath.Join(dst, "srv/data/b.txt")))
	must(os.RemoveAll(filepath.Join(dst, "srv/data/sub")))
	imgTestWrite(t, dst, "srv/data/sub/d.txt", "delta\n", 0o644, 0, 0) // replaced dir
	must(os.RemoveAll(filepath.Join(dst, "empty")))
	imgTestWrite(t, dst, "empty", "now a file\n", 0o644, 0, 0) // dir -> file
	must(os.Remove(filepath.Join(dst, "etc/shadow")))
	must(os.MkdirAll(filepath.Join(dst, "etc/shadow/now-a-dir"), 0o750)) // file -> dir
	must(os.Remove(filepath.Join(dst, "usr/link-rel")))
	imgTestWrite(t, dst, "usr/link-rel", "symlink -> file\n", 0o644, 0, 0)
	must(os.Remove(filepath.Join(dst, "usr/link-abs")))
	must(os.Symlink("/etc/motd", filepath.Join(dst, "usr/link-abs"))) // retargeted
	must(os.Link(filepath.Join(dst, "srv/hard1"), filepath.Join(dst, "srv/hard3")))
	imgTestWrite(t, dst, "srv/data/a.txt", "alpha, changed\n", 0o600, 1000, 1000)
	must(unix.Lsetxattr(filepath.Join(dst, "srv/data/a.txt"), "user.other", []byte("v2"), 0))
	must(os.Chmod(filepath.Join(dst, "etc/passwd"), 0o600))
	must(os.Lchown(filepath.Join(dst, "bin/sgid"), 3, 3))
	os.Chmod(filepath.Join(dst, "bin/sgid"), 0o755|os.ModeSetgid) // chown clears it
	imgTestWrite(t, dst, "etc/motd", "welcome\n", 0o644, 0, 0)
	must(os.Remove(filepath.Join(dst, "run/fifo")))
	imgTestTimes(t, dst)
}

// imgTestUmociRawUnpack runs umoci raw unpack of ref into a new dir.
func imgTestUmociRawUnpack(t testing.TB, ref string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "umoci-rootfs")
	testutil.Run(t, "umoci", "raw", "unpack", "--image", ref, out)
	return out
}

func imgTestOurUnpack(t testing.TB, dir, tag string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "imgtool-rootfs")
	if _, err := Unpack(context.Background(), dir, tag, out, UnpackOptions{}); err != nil {
		t.Fatalf("Unpack %s:%s: %v", dir, tag, err)
	}
	return out
}

// TestImageInteropBuildUmoci builds an image here (two directory layers
// and a layer file made by GNU tar) and checks that umoci and skopeo
// accept it and that umoci raw unpack gives the tree our Unpack gives.
func TestImageInteropBuildUmoci(t *testing.T) {
	testutil.NeedTool(t, "umoci")
	testutil.NeedTool(t, "skopeo")
	testutil.NeedTool(t, "tar")
	testutil.NeedRoot(t)
	for _, comp := range []Compression{Gzip, Zstd, None} {
		t.Run(comp.String(), func(t *testing.T) {
			ctx := context.Background()
			work := t.TempDir()
			a, b := filepath.Join(work, "a"), filepath.Join(work, "b")
			imgTestTreeA(t, a)
			imgTestTreeB(t, a, b)
			extra := filepath.Join(work, "extra")
			imgTestWrite(t, extra, "opt/extra/file", "from GNU tar\n", 0o644, 0, 0)
			blob := filepath.Join(work, "extra.tar.gz")
			testutil.Run(t, "tar", "-C", extra, "-czf", blob, ".")

			dir := filepath.Join(work, "layout")
			epoch := time.Unix(1700000000, 0).UTC()
			res, err := Build(ctx, dir, BuildOptions{Layers: []string{a, b, blob}, Tag: "v1", Compression: comp, SourceDateEpoch: &epoch})
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Layers) != 3 || res.Layers[2].MediaType != ocispec.MediaTypeImageLayerGzip {
				t.Fatalf("layers %+v", res.Layers)
			}
			ref := dir + ":v1"

			// skopeo inspect accepts it and sees our layers.
			var insp struct {
				Digest string
				Layers []string
				Os     string
			}
			if err := json.Unmarshal(testutil.Run(t, "skopeo", "inspect", "oci:"+ref), &insp); err != nil {
				t.Fatal(err)
			}
			if insp.Digest != res.Manifest.Digest.String() || len(insp.Layers) != 3 || insp.Layers[0] != res.Layers[0].Digest.String() || insp.Os != "linux" {
				t.Fatalf("skopeo inspect: %+v, want manifest %s", insp, res.Manifest.Digest)
			}

			ours := imgTestOurUnpack(t, dir, "v1")
			imgTestCheckTreeB(t, ours)
			// umoci 0.4 does not read zstd layers ("blob is not correct
			// mediatype"); skopeo and the tree comparison below cover them.
			if comp != Zstd {
				// umoci unpack (a runtime bundle) accepts it.
				bundle := filepath.Join(work, "bundle")
				testutil.Run(t, "umoci", "unpack", "--image", ref, bundle)
				if _, err := os.Stat(filepath.Join(bundle, "rootfs/opt/extra/file")); err != nil {
					t.Fatalf("umoci unpack: %v", err)
				}
				// umoci raw unpack equals our unpack, mtimes included.
				snapCompare(t, imgTestUmociRawUnpack(t, ref), ours, snapOptions{mtimes: true})
			}

			// And both equal tree B plus the extra layer (modulo mtimes
			// of what the extra layer holds: GNU tar stored them).
			want := filepath.Join(work, "want")
			testutil.Run(t, "cp", "-a", b, want)
			testutil.Run(t, "cp", "-a", extra+"/.", want)
			snapCompare(t, want, ours, snapOptions{})

			// skopeo copy of our image works, and we read what it wrote.
			dir2 := filepath.Join(work, "copied")
			testutil.Run(t, "skopeo", "copy", "oci:"+ref, "oci:"+dir2+":copy")
			snapCompare(t, ours, imgTestOurUnpack(t, dir2, "copy"), snapOptions{mtimes: true})
			for _, d := range []string{dir, dir2} {
				if _, err := mustOpen(t, d).Verify(ctx, Limits{}); err != nil {
					t.Errorf("Verify %s: %v", d, err)
				}
			}
		})
	}
}

// TestImageInteropUmociImages unpacks images that umoci made (umoci new,
// unpack, edit the rootfs, repack, several times) and compares with umoci
// raw unpack; then builds on top of one and compares again.
func TestImageInteropUmociImages(t *testing.T) {
	testutil.NeedRoot(t)
	ctx := context.Background()
	dir, step := testutil.UmociLayout(t)
	work := t.TempDir()
	step("base", "v1", func(r string) {
		os.RemoveAll(r)
		imgTestTreeA(t, r)
	})
	step("v1", "v2", func(r string) {
		tmp := filepath.Join(work, "b")
		imgTestTreeB(t, r, tmp)
		os.RemoveAll(r)
		testutil.Run(t, "cp", "-a", tmp, r)
	})
	step("v2", "v3", func(r string) {
		// Replace a directory wholesale, delete a hardlinked name, turn a
		// file back into a directory.
		os.RemoveAll(filepath.Join(r, "srv/data"))
		imgTestWrite(t, r, "srv/data/new.txt", "new\n", 0o644, 0, 0)
		os.Remove(filepath.Join(r, "srv/hard2"))
		os.Remove(filepath.Join(r, "empty"))
		os.MkdirAll(filepath.Join(r, "empty/again"), 0o711)
		os.RemoveAll(filepath.Join(r, "etc/shadow"))
		imgTestWrite(t, r, "etc/shadow", "back to a file\n", 0o600, 0, 42)
		// A dir becomes a symlink, a symlink a dir; a new hardlink to a
		// lower setuid file with a capability.
		os.RemoveAll(filepath.Join(r, "usr/lib"))
		os.Symlink("/opt", filepath.Join(r, "usr/lib"))
		os.Remove(filepath.Join(r, "usr/dangling"))
		os.MkdirAll(filepath.Join(r, "usr/dangling/sub"), 0o755)
		if err := os.Link(filepath.Join(r, "bin/tool"), filepath.Join(r, "bin/tool-link")); err != nil {
			t.Fatal(err)
		}
	})
	step("v3", "v4", func(r string) {
		// Only a deletion: a layer of whiteouts.
		os.Remove(filepath.Join(r, "etc/motd"))
		os.RemoveAll(filepath.Join(r, "usr/dangling"))
	})
	// umoci wrote v4's top layer as whiteouts: make sure they are tested.
	{
		img, err := mustOpen(t, dir).Resolve(ctx, "v4", ResolveOptions{})
		if err != nil {
			t.Fatal(err)
		}
		top := img.Manifest.Layers[len(img.Manifest.Layers)-1]
		rc, err := img.Layout.OpenBlob(top)
		if err != nil {
			t.Fatal(err)
		}
		var wh []string
		_, err = List(ctx, rc, func(h *tar.Header) error {
			if strings.Contains(h.Name, ".wh.") {
				wh = append(wh, h.Name)
			}
			return nil
		}, Limits{})
		rc.Close()
		if err != nil || len(wh) < 2 {
			t.Fatalf("v4 top layer whiteouts %v, %v", wh, err)
		}
	}
	for _, tag := range []string{"v1", "v2", "v3", "v4"} {
		t.Run(tag, func(t *testing.T) {
			img, err := mustOpen(t, dir).Resolve(ctx, tag, ResolveOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if len(img.Manifest.Layers) < 1 {
				t.Fatalf("%s: no layers", tag)
			}
			snapCompare(t, imgTestUmociRawUnpack(t, dir+":"+tag), imgTestOurUnpack(t, dir, tag), snapOptions{mtimes: true})
		})
	}

	if rep, err := mustOpen(t, dir).Verify(ctx, Limits{}); err != nil || rep.Images != 5 {
		t.Errorf("Verify of umoci's layout: %+v, %v", rep, err)
	}

	// Build on the umoci image: a directory layer diffed against its
	// flattened tree, into another layout.
	t.Run("build-on-umoci", func(t *testing.T) {
		upper := filepath.Join(work, "upper")
		testutil.Run(t, "umoci", "raw", "unpack", "--image", dir+":v4", upper)
		os.RemoveAll(filepath.Join(upper, "srv"))
		imgTestWrite(t, upper, "added/by/imgtool", "hi\n", 0o644, 0, 0)
		out := filepath.Join(work, "out")
		if _, err := Build(ctx, out, BuildOptions{BaseLayout: dir, Base: "v4", Layers: []string{upper}, Tag: "next"}); err != nil {
			t.Fatal(err)
		}
		ours := imgTestOurUnpack(t, out, "next")
		snapCompare(t, imgTestUmociRawUnpack(t, out+":next"), ours, snapOptions{mtimes: true})
		snapCompare(t, upper, ours, snapOptions{mtimes: true})
	})
}

// imgTestCheckTreeB checks, independently of any other tree, that an
// unpacked tree B holds what imgTestTreeB made: the comparisons with umoci
// would pass if both dropped the same thing.
func imgTestCheckTreeB(t testing.TB, root string) {
	t.Helper()
	s := snapTree(t, root, snapOptions{})
	check := func(path string, ok func(e snapEntry) bool, what string) {
		t.Helper()
		e, found := s[path]
		if !found || !ok(e) {
			t.Errorf("%s: want %s, have %+v (present %v)", path, what, e, found)
		}
	}
	absent := func(path string) {
		t.Helper()
		if _, found := s[path]; found {
			t.Errorf("%s: should have been deleted", path)
		}
	}
	check("bin/tool", func(e snapEntry) bool {
		return strings.Contains(e.Xattrs, "security.capability=") && e.Mode&os.ModeSetuid != 0
	}, "setuid with security.capability")
	check("srv/data/a.txt", func(e snapEntry) bool {
		// Rewritten in B: the lower file's user.note is gone.
		return !strings.Contains(e.Xattrs, "user.note=") && strings.Contains(e.Xattrs, "user.other=") && e.UID == 1000 && e.Mode.Perm() == 0o600
	}, "user.other only, uid 1000, 0600")
	check("srv/hard1", func(e snapEntry) bool { return e.UID == 7 && e.GID == 8 && e.Mode.Perm() == 0o640 }, "7:8 0640")
	check("srv/hard3", func(e snapEntry) bool { return e.Group == "srv/hard1|srv/hard2|srv/hard3" }, "hardlinked with hard1 and hard2")
	check("dev/null", func(e snapEntry) bool { return e.Type == "char" && e.Rdev == uint64(unix.Mkdev(1, 3)) }, "char 1:3")
	check("tmp", func(e snapEntry) bool { return e.Mode&os.ModeSticky != 0 }, "sticky")
	check("bin/sgid", func(e snapEntry) bool { return e.Mode&os.ModeSetgid != 0 && e.UID == 3 }, "setgid, uid 3")
	check("usr/link-abs", func(e snapEntry) bool { return e.Type == "symlink" && e.Link == "/etc/motd" }, "symlink to /etc/motd")
	check("usr/rootlink", func(e snapEntry) bool { return e.Type == "symlink" && e.Link == "/" }, "symlink to /")
	check("usr/link-rel", func(e snapEntry) bool { return e.Type == "reg" }, "a regular file")
	check("empty", func(e snapEntry) bool { return e.Type == "reg" }, "a regular file")
	check("etc/shadow/now-a-dir", func(e snapEntry) bool { return e.Type == "dir" && e.Mode.Perm() == 0o750 }, "a 0750 dir")
	check("srv/data/sub/d.txt", func(e snapEntry) bool { return e.Type == "reg" }, "a regular file")
	check("sparse", func(e snapEntry) bool { return e.Size == 3<<20 }, "3 MiB")
	absent("srv/data/b.txt")
	absent("srv/data/sub/c.txt")
	absent("srv/data/sub/deeper")
	absent("run/fifo")
}
