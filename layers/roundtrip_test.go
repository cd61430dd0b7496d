package layers

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imgtool/imgtool/internal/treecmp"
	"golang.org/x/sys/unix"
)

// randTree fills dir with a random tree: nested dirs, files (some sparse,
// some empty), symlinks (relative, absolute, dangling), hard-link groups,
// fifos, devices (as root), special mode bits, user xattrs, owners (as
// root) and nanosecond mtimes. Directory mtimes are set last.
type randTree struct {
	r      *rand.Rand
	root   string
	files  []string // regular files, for hard links
	dirs   []string // relative dirs, "" is the root
	isRoot bool
}

func newRandTree(t testing.TB, seed uint64, root string, n int) *randTree {
	rt := &randTree{r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), root: root, dirs: []string{""}, isRoot: os.Geteuid() == 0}
	for i := 0; i < n; i++ {
		rt.add(t, i)
	}
	rt.fixDirTimes(t)
	return rt
}

func (rt *randTree) name(i int) string {
	names := []string{"a", "b", "etc", "usr", "x.y", "long-" + strings.Repeat("n", 120), "sp ace", "ünï", "d"}
	return fmt.Sprintf("%s%d", names[rt.r.IntN(len(names))], i)
}

func (rt *randTree) mtime() time.Time {
	return time.Unix(1500000000+rt.r.Int64N(200000000), rt.r.Int64N(1e9))
}

func (rt *randTree) add(t testing.TB, i int) {
	dir := rt.dirs[rt.r.IntN(len(rt.dirs))]
	rel := filepath.Join(dir, rt.name(i))
	p := filepath.Join(rt.root, rel)
	kind := rt.r.IntN(20)
	switch {
	case kind < 5:
		must(t, os.Mkdir(p, 0o755))
		rt.dirs = append(rt.dirs, rel)
	case kind < 12:
		rt.writeFile(t, p)
		rt.files = append(rt.files, rel)
	case kind < 14:
		targets := []string{"../" + rt.name(i+1), "/etc/passwd", "/", "/.", "dangling", rt.name(i - 1), "./x/../y"}
		must(t, os.Symlink(targets[rt.r.IntN(len(targets))], p))
	case kind < 16 && len(rt.files) > 0:
		must(t, os.Link(filepath.Join(rt.root, rt.files[rt.r.IntN(len(rt.files))]), p))
		return // shares the inode's attributes
	case kind < 17:
		must(t, unix.Mkfifo(p, 0o644))
	case kind < 18 && rt.isRoot:
		must(t, unix.Mknod(p, unix.S_IFCHR|0o600, int(unix.Mkdev(uint32(1+rt.r.IntN(200)), uint32(rt.r.IntN(300))))))
	case kind < 19 && rt.isRoot:
		must(t, unix.Mknod(p, unix.S_IFBLK|0o600, int(unix.Mkdev(8, uint32(rt.r.IntN(16))))))
	default:
		rt.writeFile(t, p)
		rt.files = append(rt.files, rel)
	}
	rt.attrs(t, p)
}

func (rt *randTree) writeFile(t testing.TB, p string) {
	var data []byte
	switch rt.r.IntN(5) {
	case 0: // empty
	case 1: // sparse: a hole then data
		f, err := os.Create(p)
		must(t, err)
		_, err = f.WriteAt([]byte("tail"), int64(64<<10+rt.r.IntN(1<<20)))
		must(t, err)
		must(t, f.Close())
		return
	default:
		data = make([]byte, rt.r.IntN(40000))
		for i := range data {
			data[i] = byte(rt.r.IntN(4)) // compressible, with zero runs
		}
	}
	must(t, os.WriteFile(p, data, 0o644))
}

func (rt *randTree) attrs(t testing.TB, p string) {
	var st unix.Stat_t
	must(t, unix.Lstat(p, &st))
	isLink := st.Mode&unix.S_IFMT == unix.S_IFLNK
	if rt.isRoot {
		must(t, unix.Lchown(p, rt.r.IntN(3000), rt.r.IntN(3000)))
	}
	if !isLink {
		modes := []uint32{0o755, 0o644, 0o600, 0o4755, 0o2755, 0o1777, 0o6711, 0o444, 0o700}
		must(t, unix.Chmod(p, modes[rt.r.IntN(len(modes))]))
		if st.Mode&unix.S_IFMT == unix.S_IFREG || st.Mode&unix.S_IFMT == unix.S_IFDIR {
			if rt.r.IntN(3) == 0 {
				must(t, unix.Lsetxattr(p, "user.test", []byte(fmt.Sprint(rt.r.IntN(1000))), 0))
			}
			if rt.isRoot && rt.r.IntN(8) == 0 {
				// A v2 file capability (cap_net_bind_service).
				capv2 := []byte{0, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
				must(t, unix.Lsetxattr(p, "security.capability", capv2, 0))
			}
		}
	}
	mt := unix.NsecToTimespec(rt.mtime().UnixNano())
	must(t, unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{mt, mt}, unix.AT_SYMLINK_NOFOLLOW))
}

// fixDirTimes gives directories random mtimes after their children exist.
func (rt *randTree) fixDirTimes(t testing.TB) {
	for i := len(rt.dirs) - 1; i >= 1; i-- {
		p := filepath.Join(rt.root, rt.dirs[i])
		if _, err := os.Lstat(p); err != nil {
			continue
		}
		mt := unix.NsecToTimespec(rt.mtime().UnixNano())
		must(t, unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{mt, mt}, unix.AT_SYMLINK_NOFOLLOW))
	}
}

func snapshot(t testing.TB, dir string) map[string]treecmp.Entry {
	t.Helper()
	s, err := treecmp.Snapshot(dir, treecmp.Options{NoOwner: os.Geteuid() != 0})
	must(t, err)
	return s
}

func assertSameTree(t testing.TB, want, got string) {
	t.Helper()
	if d := treecmp.Diff(snapshot(t, want), snapshot(t, got)); d != nil {
		if len(d) > 20 {
			d = append(d[:20], "...")
		}
		t.Fatalf("trees differ (%s vs %s):\n%s", want, got, strings.Join(d, "\n"))
	}
}

func createBytes(t testing.TB, dir string, opts CreateOptions) ([]byte, Descriptor) {
	t.Helper()
	var buf bytes.Buffer
	d, err := Create(context.Background(), &buf, dir, opts)
	must(t, err)
	return buf.Bytes(), d
}

// TestRoundTrip: tree -> layer -> apply equals the tree, for random trees
// and every compression.
func TestRoundTrip(t *testing.T) {
	n := seeds()
	for seed := range uint64(n) {
		// Each compression gets every third seed.
		for _, c := range []Compression{[]Compression{Gzip, Zstd, None}[seed%3]} {
			t.Run(fmt.Sprintf("seed%d/%v", seed, c), func(t *testing.T) {
				src := t.TempDir()
				newRandTree(t, seed, src, 120)
				blob, d := createBytes(t, src, CreateOptions{Compression: c})
				dst := filepath.Join(t.TempDir(), "dst")
				got, err := Apply(context.Background(), bytes.NewReader(blob), dst, ApplyOptions{ExpectDigest: d.Digest, ExpectDiffID: d.DiffID})
				must(t, err)
				if got != d {
					t.Errorf("Apply descriptor %+v, Create descriptor %+v", got, d)
				}
				assertSameTree(t, src, dst)
			})
		}
	}
}

// cpTree copies a tree with cp -a (an oracle we did not write).
func cpTree(t testing.TB, src, dst string) {
	t.Helper()
	out, err := exec.Command("cp", "-a", "--preserve=all", src+"/.", dst).CombinedOutput()
	if err != nil {
		t.Fatalf("cp -a: %v\n%s", err, out)
	}
}

// mutateTree changes tree b (a copy of a): deletes files and dirs, replaces
// dirs by files and files by dirs, rewrites content in place with the same
// size and mtime, changes modes, owners and xattrs, adds hard links and
// new subtrees.
func mutateTree(t testing.TB, seed uint64, b string) {
	r := rand.New(rand.NewPCG(seed, 7))
	var paths []string
	must(t, filepath.Walk(b, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if p != b {
			paths = append(paths, p)
		}
		return nil
	}))
	rt := &randTree{r: r, root: b, dirs: []string{""}, isRoot: os.Geteuid() == 0}
	for i, p := range paths {
		if r.IntN(4) != 0 {
			continue
		}
		st, err := os.Lstat(p)
		if err != nil {
			continue // removed with its parent
		}
		switch r.IntN(7) {
		case 0:
			must(t, os.RemoveAll(p))
		case 1: // replace by a file, or a dir by a file
			must(t, os.RemoveAll(p))
			rt.writeFile(t, p)
			rt.attrs(t, p)
		case 2: // replace by a dir with content
			must(t, os.RemoveAll(p))
			must(t, os.Mkdir(p, 0o755))
			must(t, os.WriteFile(filepath.Join(p, "new"), []byte("n"), 0o644))
			rt.attrs(t, p)
		case 3:
			if st.Mode().IsRegular() && st.Size() > 0 {
				// Same size, same mtime, different bytes.
				var s unix.Stat_t
				must(t, unix.Lstat(p, &s))
				f, err := os.OpenFile(p, os.O_WRONLY, 0)
				if err == nil {
					f.WriteAt([]byte{0xff}, st.Size()/2)
					f.Close()
				}
				must(t, unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{s.Atim, s.Mtim}, unix.AT_SYMLINK_NOFOLLOW))
			}
		case 4:
			if st.Mode()&os.ModeSymlink == 0 {
				rt.attrs(t, p)
			}
		case 5:
			if st.Mode().IsRegular() {
				must(t, os.Link(p, p+fmt.Sprintf(".link%d", i)))
			}
		case 6:
			if st.IsDir() {
				// A new subtree in a fresh dir (random names could
				// collide with what p holds).
				sub := filepath.Join(p, fmt.Sprintf("added%d", i))
				if os.Mkdir(sub, 0o755) == nil {
					newRandTree(t, seed+uint64(i), sub, 5)
				}
			}
		}
	}
}

// TestDiffRoundTrip: diff(A, B) applied to a copy of A equals B.
func TestDiffRoundTrip(t *testing.T) {
	n := seeds()
	for seed := range uint64(n) {
		t.Run(fmt.Sprintf("seed%d", seed), func(t *testing.T) {
			a, b, target := t.TempDir(), t.TempDir(), t.TempDir()
			newRandTree(t, seed, a, 100)
			cpTree(t, a, b)
			mutateTree(t, seed, b)
			cpTree(t, a, target)
			blob, _ := createBytes(t, b, CreateOptions{Lower: a})
			if err := applyBytes(target, blob, ApplyOptions{}); err != nil {
				t.Fatal(err)
			}
			assertSameTree(t, b, target)
		})
	}
}

// seeds is the number of random trees per property test: 12, 4 with
// -short, or LAYERS_SEEDS.
func seeds() int {
	if v, err := strconv.Atoi(os.Getenv("LAYERS_SEEDS")); err == nil && v > 0 {
		return v
	}
	if testing.Short() {
		return 4
	}
	return 12
}
