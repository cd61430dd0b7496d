package qcow2

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/imgtool/imgtool/internal/testutil"
)

// residentPages counts the pages of the file at path in the page cache.
func residentPages(t *testing.T, path string) (resident, total int) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	if fi.Size() == 0 {
		return 0, 0
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	pg := os.Getpagesize()
	vec := make([]byte, (len(m)+pg-1)/pg)
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		t.Fatal(e)
	}
	for _, v := range vec {
		if v&1 != 0 {
			resident++
		}
	}
	return resident, len(vec)
}

// TestConvertCacheModes: every -t mode converts correctly to qcow2 and
// raw; with none the data bypasses the page cache (the output's pages
// are not resident afterwards, while writeback leaves them cached).
func TestConvertCacheModes(t *testing.T) {
	testutil.NeedTool(t, "qemu-img")
	dir := t.TempDir()
	data := mixedData(11, 8<<20)
	for i := range data { // no zero blocks: every block is written
		if data[i] == 0 {
			data[i] = 1
		}
	}
	srcPath := writeRawFile(t, dir, "src.raw", data)
	for _, f := range []Format{FormatRaw, FormatQcow2} {
		for _, c := range []CacheMode{"", CacheWriteback, CacheWritethrough, CacheUnsafe, CacheNone, CacheDirectsync} {
			dst := filepath.Join(dir, "out-"+string(c)+"."+string(f))
			err := Convert(context.Background(), cvOpen(t, srcPath), dst, ConvertOptions{Create: CreateOptions{Format: f}, Cache: c})
			if errors.Is(err, ErrNoDirectIO) {
				t.Skipf("%s has no O_DIRECT: %v", dir, err)
			}
			if err != nil {
				t.Fatalf("%s -t %q: %v", f, c, err)
			}
			res, total := residentPages(t, dst)
			t.Logf("%s -t %q: %d of %d pages cached", f, c, res, total)
			if c.direct() && res > total/4 {
				t.Errorf("%s -t %s: %d of %d output pages in the page cache: O_DIRECT not used", f, c, res, total)
			}
			if c == CacheWriteback && res < total/2 {
				t.Logf("%s -t writeback: only %d of %d pages cached (memory pressure?)", f, res, total)
			}
			qemuSame(t, dst, srcPath)
			os.Remove(dst)
		}
	}
	if _, err := ParseCacheMode("bogus"); err == nil || !strings.Contains(err.Error(), "writeback") {
		t.Errorf("ParseCacheMode(bogus) = %v", err)
	}
	err := Convert(context.Background(), cvOpen(t, srcPath), filepath.Join(dir, "x"), ConvertOptions{Cache: "bogus"})
	if err == nil {
		t.Error("cache mode bogus accepted")
	}
}

// TestCacheNoneUnsupported: where the filesystem refuses O_DIRECT, -t
// none is a clear error for convert, commit and rebase, and convert
// leaves nothing behind.
func TestCacheNoneUnsupported(t *testing.T) {
	testutil.NeedTool(t, "qemu-img")
	old := openDirectFn
	openDirectFn = func(string, string) (*os.File, error) { return nil, syscall.EINVAL }
	defer func() { openDirectFn = old }()
	dir := t.TempDir()
	srcPath := writeRawFile(t, dir, "src.raw", mixedData(5, 1<<20))
	for _, f := range []Format{FormatRaw, FormatQcow2} {
		err := Convert(context.Background(), cvOpen(t, srcPath), filepath.Join(dir, "out"), ConvertOptions{Create: CreateOptions{Format: f}, Cache: CacheNone})
		if !errors.Is(err, ErrNoDirectIO) || !strings.Contains(err.Error(), "O_DIRECT") {
			t.Errorf("%s: err = %v, want ErrNoDirectIO", f, err)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("directory holds %d entries, want only the source", len(ents))
	}
	base := filepath.Join(dir, "base.qcow2")
	top := filepath.Join(dir, "top.qcow2")
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "1M")
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top)
	if err := Commit(context.Background(), top, CommitOptions{Cache: CacheNone}); !errors.Is(err, ErrNoDirectIO) {
		t.Errorf("commit -t none: %v, want ErrNoDirectIO", err)
	}
	if err := Rebase(context.Background(), top, RebaseOptions{Cache: CacheNone}); !errors.Is(err, ErrNoDirectIO) {
		t.Errorf("rebase -t none: %v, want ErrNoDirectIO", err)
	}
}

// TestCommitRebaseCacheModes: commit and rebase give the same result in
// every -t mode, checked by qemu-img (check clean, guest content as
// before).
func TestCommitRebaseCacheModes(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	for _, c := range []CacheMode{CacheWriteback, CacheUnsafe, CacheNone} {
		for _, baseFmt := range []string{"qcow2", "raw"} {
			dir := t.TempDir()
			base := filepath.Join(dir, "base."+baseFmt)
			top := filepath.Join(dir, "top.qcow2")
			testutil.Run(t, "qemu-img", "create", "-q", "-f", baseFmt, base, "4M")
			testutil.Run(t, "qemu-io", "-f", baseFmt, "-c", "write -P 0x11 0 2M", base)
			testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", filepath.Base(base), "-F", baseFmt, top)
			testutil.Run(t, "qemu-io", "-c", "write -P 0x22 1M 2M", "-c", "write -P 0x33 3M 4k", top)
			want := guestBytes(t, top)
			if err := Commit(context.Background(), top, CommitOptions{Cache: c}); errors.Is(err, ErrNoDirectIO) {
				t.Skip(err)
			} else if err != nil {
				t.Fatalf("commit -t %s (%s base): %v", c, baseFmt, err)
			}
			if baseFmt == "qcow2" {
				testutil.Run(t, "qemu-img", "check", "-q", base)
			}
			testutil.Run(t, "qemu-img", "check", "-q", top)
			if got := guestBytes(t, base); !bytes.Equal(got, want) {
				t.Errorf("commit -t %s (%s base): base differs from the chain before", c, baseFmt)
			}
			// Flatten the (now empty) top: it keeps reading the same.
			if err := Rebase(context.Background(), top, RebaseOptions{Backing: "", Cache: c}); err != nil {
				t.Fatalf("rebase -t %s: %v", c, err)
			}
			testutil.Run(t, "qemu-img", "check", "-q", top)
			if got := guestBytes(t, top); !bytes.Equal(got, want) {
				t.Errorf("rebase -t %s (%s base): top differs after flattening", c, baseFmt)
			}
		}
	}
}

// TestConvertNoCreate: convert -n writes src's content (zeros included)
// over the start of an existing larger target and leaves the rest, as
// qemu-img does; a smaller or missing target, and a target in src's own
// chain, are refused.
func TestConvertNoCreate(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	src := filepath.Join(dir, "src.qcow2")
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", src, "2M")
	testutil.Run(t, "qemu-io", "-c", "write -P 0x05 0 1M", src)
	for _, f := range []string{"qcow2", "raw"} {
		for _, tz := range []bool{false, true} {
			dst := filepath.Join(dir, "big."+f)
			testutil.Run(t, "qemu-img", "create", "-q", "-f", f, dst, "4M")
			testutil.Run(t, "qemu-io", "-f", f, "-c", "write -P 0x07 1M 2M", dst)
			// qemu-img's own result, for comparison.
			ref := filepath.Join(dir, "ref."+f)
			testutil.Run(t, "qemu-img", "create", "-q", "-f", f, ref, "4M")
			testutil.Run(t, "qemu-io", "-f", f, "-c", "write -P 0x07 1M 2M", ref)
			args := []string{"convert", "-n", "-O", f}
			if tz {
				args = append(args, "--target-is-zero")
			}
			testutil.Run(t, "qemu-img", append(args, src, ref)...)
			before, _ := os.Stat(dst)
			err := Convert(context.Background(), cvOpen(t, src), dst, ConvertOptions{
				Create: CreateOptions{Format: Format(f)}, NoCreate: true, TargetIsZero: tz})
			if err != nil {
				t.Fatalf("-n -O %s: %v", f, err)
			}
			if after, _ := os.Stat(dst); !os.SameFile(before, after) {
				t.Errorf("-n -O %s: the target was replaced, not written into", f)
			}
			if f == "qcow2" {
				testutil.Run(t, "qemu-img", "check", "-q", dst)
			}
			got, want := guestBytes(t, dst), guestBytes(t, ref)
			if !bytes.Equal(got, want) {
				t.Errorf("-n -O %s (target-is-zero %v): content differs from qemu-img convert -n", f, tz)
			}
		}
	}
	small := filepath.Join(dir, "small.qcow2")
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", small, "1M")
	err := Convert(context.Background(), cvOpen(t, src), small, ConvertOptions{NoCreate: true})
	if err == nil || !strings.Contains(err.Error(), "output file is smaller than input file") {
		t.Errorf("smaller target: %v", err)
	}
	err = Convert(context.Background(), cvOpen(t, src), filepath.Join(dir, "missing.qcow2"), ConvertOptions{NoCreate: true})
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing target: %v", err)
	}
	// Into the source's own backing file: refused by the lock.
	top := filepath.Join(dir, "top.qcow2")
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "src.qcow2", "-F", "qcow2", top)
	s, err := Open(top, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	err = Convert(context.Background(), s, src, ConvertOptions{NoCreate: true})
	if err == nil || !strings.Contains(err.Error(), `"write" lock`) {
		t.Errorf("-n onto the source's backing file: %v, want a write lock error", err)
	}
}
