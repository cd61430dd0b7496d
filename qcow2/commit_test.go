package qcow2

import (
	"bufio"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgtool/imgtool/internal/imagelock"
	"github.com/imgtool/imgtool/internal/testutil"
)

// cmChain builds base <- mid <- top in dir with qemu-img and qemu-io:
// overlapping writes, zero writes and a compressed cluster in each layer.
func cmChain(t *testing.T, dir, baseFmt, topOpts string) {
	t.Helper()
	base := filepath.Join(dir, "base."+baseFmt)
	testutil.Run(t, "qemu-img", "create", "-q", "-f", baseFmt, base, "8M")
	qio(t, base, baseFmt, "write -P 1 0 3M", "write -P 2 5M 1M")
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=32k", "-b", "base."+baseFmt, "-F", baseFmt, filepath.Join(dir, "mid.qcow2"))
	qio(t, filepath.Join(dir, "mid.qcow2"), "qcow2", "write -P 3 1M 1M", "write -z 2M 64k", "write -c -P 9 6M 64k")
	args := []string{"create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2"}
	if topOpts != "" {
		args = append(args, "-o", topOpts)
	}
	testutil.Run(t, "qemu-img", append(args, filepath.Join(dir, "top.qcow2"))...)
	qio(t, filepath.Join(dir, "top.qcow2"), "qcow2", "write -P 4 1500k 700k", "write -z 0 4k", "write -z 7M 128k", "write -c -P 5 4M 64k", "write -P 6 8380416 4096")
}

// cmCopy copies the chain files of dir into a new directory.
func cmCopy(t *testing.T, dir string) string {
	t.Helper()
	out := t.TempDir()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(out, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// cmSame asserts that file name reads the same in directories a and b
// (whole chains) and passes qemu-img check in both.
func cmSame(t *testing.T, a, b, name string) {
	t.Helper()
	pa, pb := filepath.Join(a, name), filepath.Join(b, name)
	for _, p := range []string{pa, pb} {
		if out, err := testutil.Exec("qemu-img", "check", "-U", p); err != nil && exitCodeOf(err) != 63 {
			t.Fatalf("qemu-img check %s: %v\n%s", p, err, out)
		}
	}
	if out, err := testutil.Exec("qemu-img", "compare", "-U", pa, pb); err != nil {
		t.Fatalf("%s differs from qemu-img's result: %v\n%s", name, err, out)
	}
}

func TestCommitAgainstQemu(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	cases := []struct {
		name, baseFmt, topOpts string
		opts                   CommitOptions
		qemuArgs               []string
	}{
		{name: "default", baseFmt: "qcow2"},
		{name: "drop", baseFmt: "qcow2", opts: CommitOptions{Drop: true}, qemuArgs: []string{"-d"}},
		{name: "raw-base-deep", baseFmt: "raw", opts: CommitOptions{Base: "base.raw"}, qemuArgs: []string{"-b", "base.raw"}},
		{name: "qcow2-base-deep", baseFmt: "qcow2", opts: CommitOptions{Base: "base.qcow2"}, qemuArgs: []string{"-b", "base.qcow2"}},
		{name: "extl2-top", baseFmt: "qcow2", topOpts: "extended_l2=on"},
		{name: "v2-top", baseFmt: "qcow2", topOpts: "compat=0.10"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			cmChain(t, dir, c.baseFmt, c.topOpts)
			ours, theirs := cmCopy(t, dir), cmCopy(t, dir)
			before := cmCopy(t, dir)
			args := append([]string{"commit", "-q"}, c.qemuArgs...)
			if c.opts.Base != "" {
				args[len(args)-1] = filepath.Join(theirs, c.opts.Base)
				c.opts.Base = filepath.Join(ours, c.opts.Base)
			}
			testutil.Run(t, "qemu-img", append(args, filepath.Join(theirs, "top.qcow2"))...)
			var last int64
			c.opts.Progress = func(done, total int64) { last = done }
			if err := Commit(context.Background(), filepath.Join(ours, "top.qcow2"), c.opts); err != nil {
				t.Fatal(err)
			}
			if last != 8<<20 {
				t.Errorf("progress ended at %d", last)
			}
			cmSame(t, ours, theirs, "base."+c.baseFmt)
			if c.opts.Base == "" {
				cmSame(t, ours, theirs, "mid.qcow2")
				cmSame(t, ours, theirs, "top.qcow2")
				// The top still reads as before the commit.
				cmSame(t, ours, before, "top.qcow2")
			}
			if !c.opts.Drop && c.opts.Base == "" {
				top := cvOpen(t, filepath.Join(ours, "top.qcow2"))
				top.WalkExtents(0, top.Size(), func(e Extent) error {
					if e.Depth == 0 && e.Kind != KindUnallocated {
						t.Errorf("top still allocates %+v", e)
					}
					return nil
				})
			}
		})
	}
}

func TestCommitRefusesLockedImages(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	cmChain(t, dir, "qcow2", "")
	for _, name := range []string{"top.qcow2", "mid.qcow2"} {
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := imagelock.Acquire(f, imagelock.Writer); err != nil {
			t.Fatal(err)
		}
		if err := Commit(context.Background(), filepath.Join(dir, "top.qcow2"), CommitOptions{}); err == nil {
			t.Errorf("commit succeeded while %s is held by a writer", name)
		}
		f.Close()
	}
	if err := Commit(context.Background(), filepath.Join(dir, "top.qcow2"), CommitOptions{Base: "nothere.qcow2"}); err == nil {
		t.Error("commit into an image outside the chain succeeded")
	}
	if err := Commit(context.Background(), filepath.Join(dir, "top.qcow2"), CommitOptions{}); err != nil {
		t.Fatalf("commit after the locks were released: %v", err)
	}
}

// TestCommitInterrupted cancels a commit part way: every image stays
// clean and the top reads as before.
func TestCommitInterrupted(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	cmChain(t, dir, "qcow2", "")
	before := cmCopy(t, dir)
	ctx, cancel := context.WithCancel(context.Background())
	err := Commit(ctx, filepath.Join(dir, "top.qcow2"), CommitOptions{Workers: 1, Progress: func(done, total int64) {
		if done > 2<<20 {
			cancel()
		}
	}})
	if err == nil {
		t.Fatal("cancelled commit returned no error")
	}
	for _, n := range []string{"base.qcow2", "mid.qcow2", "top.qcow2"} {
		if out, err := testutil.Exec("qemu-img", "check", "-U", filepath.Join(dir, n)); err != nil {
			t.Fatalf("qemu-img check %s: %v\n%s", n, err, out)
		}
	}
	cmSame(t, dir, before, "top.qcow2")
}

// TestCommitRefusesRunningQemu keeps the top image open in qemu-io (which
// takes QEMU's write locks) while Commit runs.
func TestCommitRefusesRunningQemu(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	cmChain(t, dir, "qcow2", "")
	for _, held := range []string{"top.qcow2", "mid.qcow2"} {
		cmd := exec.Command("qemu-io", "-f", "qcow2", filepath.Join(dir, held))
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// qemu-io has the image open once it answers a command.
		io.WriteString(stdin, "read 0 512\n")
		sc := bufio.NewScanner(stdout)
		for sc.Scan() && !strings.Contains(sc.Text(), "read 512/512") {
		}
		err = Commit(context.Background(), filepath.Join(dir, "top.qcow2"), CommitOptions{})
		stdin.Close()
		io.Copy(io.Discard, stdout)
		cmd.Wait()
		if err == nil {
			t.Errorf("commit succeeded while qemu-io holds %s", held)
		} else {
			t.Logf("refused while qemu-io holds %s: %v", held, err)
		}
	}
}
