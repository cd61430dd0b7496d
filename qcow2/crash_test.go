package qcow2

import (
	"bytes"
	"errors"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/imgtool/imgtool/internal/faultfile"
	"github.com/imgtool/imgtool/internal/testutil"
)

// teeStorage sends writes to a faultfile (which models what survives a
// power cut) and then to the real file the read path reads.
type teeStorage struct {
	ff *faultfile.File
	f  *os.File
}

func (s *teeStorage) ReadAt(p []byte, off int64) (int, error) { return s.f.ReadAt(p, off) }
func (s *teeStorage) WriteAt(p []byte, off int64) (int, error) {
	if _, err := s.ff.WriteAt(p, off); err != nil {
		return 0, err
	}
	return s.f.WriteAt(p, off)
}
func (s *teeStorage) Sync() error { return s.ff.Sync() }
func (s *teeStorage) Truncate(n int64) error {
	if err := s.ff.Truncate(n); err != nil {
		return err
	}
	return s.f.Truncate(n)
}
func (s *teeStorage) Size() (int64, error) { return s.ff.Size() }
func (s *teeStorage) Close() error         { return s.f.Close() }

// openTee opens path writable with its writes teed into a faultfile
// holding the same bytes.
func openTee(t *testing.T, path string) (*Image, *faultfile.File) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	img, err := Open(path, Options{Writable: true})
	if err != nil {
		t.Fatal(err)
	}
	ff := faultfile.New(data)
	old := img.w.st.(osStorage)
	tee := &teeStorage{ff: ff, f: old.File}
	img.w.st = tee
	img.w.rc.st = tee
	return img, ff
}

// crashWorkload is a deterministic sequence of writes with flushes. It
// calls flushed(ref) after each successful flush with the guest content
// that must survive from then on.
type crashWorkload struct {
	name  string
	opts  CreateOptions
	size  int64
	setup func(img *Image, ref []byte, rng *rand.Rand) error // runs before crashing starts
	run   func(img *Image, ref []byte, dirty *dirtySet, rng *rand.Rand, flushed func()) error
	// wantTableMove: the workload must move the refcount table.
	wantTableMove bool
	// backing: the image is an overlay over a full qcow2 base, so that
	// partial writes copy from it.
	backing bool
	// copiedWindow: the workload changes refcounts and COPIED flags
	// together (internal snapshots), which no write order makes atomic;
	// QEMU has the same window. qemu-img check may then report
	// OFLAG_COPIED mismatches, but only harmless ones (see
	// harmlessCopied), and check -r all must clean the image.
	copiedWindow bool
}

var (
	copiedDataRe = regexp.MustCompile(`^ERROR OFLAG_COPIED data cluster: l2_entry=([0-9a-f]+) refcount=(\d+)$`)
	copiedL2Re   = regexp.MustCompile(`^ERROR OFLAG_COPIED L2 cluster: l1_index=\d+ l1_entry=([0-9a-f]+) refcount=(\d+)$`)
	leakedRe     = regexp.MustCompile(`^Leaked cluster (\d+) refcount=\d+ reference=1$`)
)

// harmlessCopied reports whether the errors in qemu-img check output
// are all OFLAG_COPIED mismatches that cannot lose data: COPIED clear
// on a cluster with refcount 1 (a write copies it needlessly), or set on
// one whose refcount exceeds its single reference (a leak: the snapshot
// that would share it was never committed). COPIED set on a cluster
// that a committed snapshot really shares would let a write change the
// snapshot, and is refused.
func harmlessCopied(out string, clusterBits uint32) bool {
	leaked := map[uint64]bool{}
	for _, line := range strings.Split(out, "\n") {
		if m := leakedRe.FindStringSubmatch(strings.TrimSpace(line)); m != nil {
			c, _ := strconv.ParseUint(m[1], 10, 64)
			leaked[c] = true
		}
	}
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "ERROR") {
			continue
		}
		m := copiedDataRe.FindStringSubmatch(line)
		if m == nil {
			m = copiedL2Re.FindStringSubmatch(line)
		}
		if m == nil {
			return false
		}
		entry, _ := strconv.ParseUint(m[1], 16, 64)
		refcount, _ := strconv.ParseUint(m[2], 10, 64)
		if refcount >= 2 && !leaked[uint64(l2Entry(entry).host())>>clusterBits] {
			return false
		}
	}
	return true
}

// dirtySet records the guest ranges written since the last flush.
type dirtySet struct{ ranges [][2]int64 }

func (d *dirtySet) add(off, n int64) {
	if d != nil {
		d.ranges = append(d.ranges, [2]int64{off, off + n})
	}
}

func writeRef(img *Image, ref []byte, dirty *dirtySet, off int64, b []byte) error {
	dirty.add(off, int64(len(b)))
	copy(ref[off:], b)
	_, err := img.WriteAt(b, off)
	return err
}

func crashWorkloads() []crashWorkload {
	// 512-byte clusters with 64-bit refcounts: a refcount block covers
	// 64 clusters and a one-cluster refcount table 4096 clusters (2 MiB
	// of file), so a few hundred KiB of writes past 1.8 MiB of data
	// allocate L2 tables and refcount blocks and move the table.
	fill := func(n int64) func(img *Image, ref []byte, rng *rand.Rand) error {
		return func(img *Image, ref []byte, rng *rand.Rand) error {
			for off := int64(0); off < n; off += 64 << 10 {
				if err := writeRef(img, ref, nil, off, randBytes(rng, min(64<<10, n-off))); err != nil {
					return err
				}
			}
			return img.Flush()
		}
	}
	grow := func(from int64) func(img *Image, ref []byte, dirty *dirtySet, rng *rand.Rand, flushed func()) error {
		return func(img *Image, ref []byte, dirty *dirtySet, rng *rand.Rand, flushed func()) error {
			for i := range 6 {
				off := from + int64(i)*13000 + int64(rng.IntN(500))
				if err := writeRef(img, ref, dirty, off, randBytes(rng, 1500+int64(rng.IntN(2000)))); err != nil {
					return err
				}
				// An overwrite of existing data (in place) too.
				off = int64(rng.IntN(int(from)))
				if err := writeRef(img, ref, dirty, off, randBytes(rng, 700)); err != nil {
					return err
				}
				if i%3 == 2 {
					if err := img.Flush(); err != nil {
						return err
					}
					flushed()
				}
			}
			if err := img.WriteZeroes(0, 4096); err != nil {
				return err
			}
			clear(ref[:4096])
			dirty.add(0, 4096)
			if err := img.Flush(); err != nil {
				return err
			}
			flushed()
			return nil
		}
	}
	return []crashWorkload{
		{
			name:          "reftable-growth",
			wantTableMove: true,
			opts:          CreateOptions{ClusterSize: 512, RefcountBits: 64},
			size:          4 << 20,
			setup:         fill(1965 << 10),
			run:           grow(1965 << 10),
		},
		{
			name:  "lazy-refcounts",
			opts:  CreateOptions{ClusterSize: 512, RefcountBits: 64, LazyRefcounts: true},
			size:  4 << 20,
			setup: fill(1900 << 10),
			run:   grow(1900 << 10),
		},
		{
			name:  "v2-4k",
			opts:  CreateOptions{ClusterSize: 4096, Compat: "0.10"},
			size:  2 << 20,
			setup: fill(1 << 20),
			run:   grow(1 << 20),
		},
		{
			name:    "cow-over-backing",
			opts:    CreateOptions{ClusterSize: 4096},
			size:    2 << 20,
			backing: true,
			setup:   func(*Image, []byte, *rand.Rand) error { return nil },
			run:     grow(1 << 20),
		},
		{
			name:  "extl2-16k",
			opts:  CreateOptions{ClusterSize: 16 << 10, ExtendedL2: true},
			size:  2 << 20,
			setup: fill(1 << 20),
			run:   grow(1 << 20),
		},
	}
}

func TestCrash(t *testing.T) {
	testutil.NeedTool(t, "qemu-img")
	for wi, wl := range crashWorkloads() {
		t.Run(wl.name, func(t *testing.T) {
			t.Parallel()
			runCrash(t, wl, uint64(wi))
		})
	}
}

func runCrash(t *testing.T, wl crashWorkload, seed uint64) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	opts := wl.opts
	opts.Size = wl.size
	ref0 := make([]byte, wl.size)
	if wl.backing {
		back := filepath.Join(dir, "back.qcow2")
		if err := Create(back, CreateOptions{Size: wl.size}); err != nil {
			t.Fatal(err)
		}
		img, err := Open(back, Options{Writable: true})
		if err != nil {
			t.Fatal(err)
		}
		copy(ref0, randBytes(rand.New(rand.NewPCG(seed, 3)), wl.size))
		if _, err := img.WriteAt(ref0, 0); err != nil {
			t.Fatal(err)
		}
		if err := img.Close(); err != nil {
			t.Fatal(err)
		}
		opts.BackingFile, opts.BackingFormat = "back.qcow2", FormatQcow2
	}
	if err := Create(base, opts); err != nil {
		t.Fatal(err)
	}
	{
		img, err := Open(base, Options{Writable: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := wl.setup(img, ref0, rand.New(rand.NewPCG(seed, 1))); err != nil {
			t.Fatal(err)
		}
		if err := img.Close(); err != nil {
			t.Fatal(err)
		}
	}
	baseBytes, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	// A run without crashing counts the writes.
	runOnce := func(crashAfter int) (ff *faultfile.File, durable []byte, dirty *dirtySet, werr error) {
		work := filepath.Join(dir, "work.qcow2")
		if err := os.WriteFile(work, baseBytes, 0o644); err != nil {
			t.Fatal(err)
		}
		img, ff := openTee(t, work)
		defer img.Close()
		ref := bytes.Clone(ref0)
		durable = bytes.Clone(ref0)
		dirty = &dirtySet{}
		ff.CrashAfter(crashAfter)
		werr = wl.run(img, ref, dirty, rand.New(rand.NewPCG(seed, 2)), func() {
			copy(durable, ref)
			dirty.ranges = dirty.ranges[:0]
		})
		return ff, durable, dirty, werr
	}
	ff, _, _, err := runOnce(0)
	if err != nil {
		t.Fatal(err)
	}
	if wl.wantTableMove {
		h0, err := parseHeader(base, baseBytes[:512], int64(len(baseBytes)))
		if err != nil {
			t.Fatal(err)
		}
		after := ff.Image(faultfile.KeepAll, nil)
		h1, err := parseHeader(base, after[:512], int64(len(after)))
		if err != nil {
			t.Fatal(err)
		}
		if h0.RefcountTableOffset == h1.RefcountTableOffset {
			t.Fatalf("workload did not move the refcount table (still at %#x; file %d -> %d bytes)", h0.RefcountTableOffset, len(baseBytes), len(after))
		}
	}
	total := ff.Writes()
	t.Logf("%s: %d writes, %d syncs, base %d bytes", wl.name, total, ff.Syncs(), len(baseBytes))
	lazy := wl.opts.LazyRefcounts
	// Every crash point of the refcount-table-growth workload is tested;
	// the others are sampled (every 4th write, with an offset per
	// workload) unless IMGTOOL_CRASH_FULL=1 asks for the exhaustive sweep
	// of every workload and every survival mode (CI runs the sampled
	// sweep under -race to stay within its time budget).
	full := os.Getenv("IMGTOOL_CRASH_FULL") == "1"
	step, first := 1, 1
	if !full && !wl.wantTableMove {
		step, first = 4, 1+int(seed%4)
	}
	checked := 0
	for n := first; n <= total; n += step {
		ff, durable, dirty, werr := runOnce(n)
		if werr == nil || !errors.Is(werr, faultfile.ErrCrashed) {
			if werr == nil {
				continue // crash point after the last write
			}
			t.Fatalf("crash after %d writes: unexpected error %v", n, werr)
		}
		rng := rand.New(rand.NewPCG(uint64(n), seed))
		for _, keep := range []faultfile.Keep{faultfile.KeepNone, faultfile.KeepAll, faultfile.KeepRandom} {
			if keep == faultfile.KeepRandom && !full && n%5 != 0 {
				continue
			}
			post := filepath.Join(dir, fmt.Sprintf("crash-%d-%d.qcow2", n, keep))
			if err := os.WriteFile(post, ff.Image(keep, rng), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := testutil.Exec("qemu-img", "check", "-U", post)
			code := exitCodeOf(err)
			switch {
			case code == 0 || code == 3:
			case lazy && code == 2:
				// Refcounts are not written before close with lazy
				// refcounts; the dirty bit says so, and a writable open
				// rebuilds them.
			case wl.copiedWindow && code == 2 && harmlessCopied(string(out), clusterBitsOf(wl.opts)):
				if out, err := testutil.Exec("qemu-img", "check", "-r", "all", post); exitCodeOf(err) != 0 {
					t.Fatalf("crash after %d writes (keep %d): qemu-img check -r all: %v\n%s", n, keep, err, out)
				}
				if out, err := testutil.Exec("qemu-img", "check", post); err != nil {
					t.Fatalf("crash after %d writes (keep %d): after check -r all: %v\n%s", n, keep, err, out)
				}
			default:
				t.Fatalf("crash after %d writes (keep %d): qemu-img check exit %d\n%s", n, keep, code, out)
			}
			if lazy {
				img, err := Open(post, Options{Writable: true})
				if err != nil {
					t.Fatalf("crash after %d writes: reopening: %v", n, err)
				}
				if err := img.Close(); err != nil {
					t.Fatal(err)
				}
				if out, err := testutil.Exec("qemu-img", "check", "-U", post); err != nil {
					t.Fatalf("crash after %d writes: after repair on open, qemu-img check: %v\n%s", n, err, out)
				}
			}
			img, err := Open(post, Options{})
			if err != nil {
				t.Fatalf("crash after %d writes: open: %v", n, err)
			}
			got := make([]byte, wl.size)
			if _, err := img.ReadAt(got, 0); err != nil {
				t.Fatalf("crash after %d writes: read: %v", n, err)
			}
			img.Close()
			// Bytes written since the last flush may hold either state.
			want := bytes.Clone(durable)
			for _, r := range dirty.ranges {
				copy(want[r[0]:r[1]], got[r[0]:r[1]])
			}
			if !bytes.Equal(got, want) {
				i := 0
				for got[i] == want[i] {
					i++
				}
				t.Fatalf("crash after %d writes (keep %d): flushed byte %d is %#x, want %#x", n, keep, i, got[i], want[i])
			}
			os.Remove(post)
			checked++
		}
	}
	t.Logf("%d crash images checked", checked)
}

// clusterBitsOf is the cluster_bits an image created with opts has.
func clusterBitsOf(opts CreateOptions) uint32 {
	if opts.ClusterSize == 0 {
		return 16
	}
	return uint32(bits.TrailingZeros64(uint64(opts.ClusterSize)))
}

func exitCodeOf(err error) int {
	if err == nil {
		return 0
	}
	var ee interface{ ExitCode() int }
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}
