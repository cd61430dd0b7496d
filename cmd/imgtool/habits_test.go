package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"testing"

	"github.com/imgtool/imgtool/internal/testutil"
	"github.com/imgtool/imgtool/qcow2"
)

func TestVersionOf(t *testing.T) {
	for _, c := range []struct {
		bi   debug.BuildInfo
		want string
	}{
		{debug.BuildInfo{Main: debug.Module{Version: "v1.2.3"}}, "v1.2.3"},
		{debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "0123456789abcdef0123"}, {Key: "vcs.modified", Value: "false"}}}, "devel-0123456789ab"},
		{debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "abc"}, {Key: "vcs.modified", Value: "true"}}}, "devel-abc+dirty"},
		{debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, "devel"},
	} {
		if got := versionOf(&c.bi); got != c.want {
			t.Errorf("versionOf(%+v) = %q, want %q", c.bi, got, c.want)
		}
	}
}

// TestInterruptedMessage: a command ended by Ctrl-C says "interrupted"
// and exits 130, not "context canceled".
func TestInterruptedMessage(t *testing.T) {
	var stderr bytes.Buffer
	code := exitCode("convert", fmt.Errorf("qcow2: writing out.qcow2: %w", context.Canceled), &stderr)
	if code != 130 || stderr.String() != "imgtool convert: interrupted\n" {
		t.Errorf("exit %d, stderr %q; want 130 and \"imgtool convert: interrupted\\n\"", code, stderr.String())
	}
}

// TestSnapshotListEmpty: like qemu-img, snapshot -l of an image without
// snapshots prints nothing.
func TestSnapshotListEmpty(t *testing.T) {
	p := filepath.Join(t.TempDir(), "a.qcow2")
	if code, _, stderr := runCmd("create", "-q", "-f", "qcow2", p, "1M"); code != 0 {
		t.Fatalf("create: %d %s", code, stderr)
	}
	code, stdout, stderr := runCmd("snapshot", "-l", p)
	if code != 0 || stdout != "" {
		t.Errorf("snapshot -l: exit %d, stdout %q, stderr %q; want 0 and nothing", code, stdout, stderr)
	}
	if code, _, stderr := runCmd("snapshot", "-c", "s1", p); code != 0 {
		t.Fatalf("snapshot -c: %d %s", code, stderr)
	}
	if _, stdout, _ := runCmd("snapshot", "-l", p); !bytes.HasPrefix([]byte(stdout), []byte("Snapshot list:\n")) {
		t.Errorf("snapshot -l with one snapshot: %q", stdout)
	}
}

// TestFormattingLineMatchesQemu runs create with the same arguments
// through imgtool and qemu-img and compares the "Formatting ..." lines.
func TestFormattingLineMatchesQemu(t *testing.T) {
	qemuImg := testutil.NeedTool(t, "qemu-img")
	for i, args := range [][]string{
		{"-f", "qcow2", "X", "1M"},
		{"-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "X"},
		{"-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "X", "2M"},
		{"-f", "qcow2", "-o", "cluster_size=16k,compression_type=zstd,extended_l2=on,lazy_refcounts=on,refcount_bits=64", "X", "1M"},
		{"-f", "qcow2", "-o", "compat=1.1,preallocation=metadata", "X", "1M"},
		{"-f", "qcow2", "-o", "compat=0.10", "X", "1M"},
		{"-f", "raw", "X", "1M"},
		{"-f", "raw", "-o", "preallocation=full", "X", "1M"},
	} {
		line := func(tool string) string {
			dir := filepath.Join(t.TempDir(), tool)
			os.MkdirAll(dir, 0o755)
			if out, err := testutil.Exec(qemuImg, "create", "-q", "-f", "qcow2", filepath.Join(dir, "base.qcow2"), "1M"); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			a := slices.Clone(args)
			a[slices.Index(a, "X")] = filepath.Join(dir, "img")
			var out []byte
			var err error
			if tool == "qemu-img" {
				out, err = testutil.Exec(qemuImg, append([]string{"create"}, a...)...)
			} else {
				var code int
				var stdout, stderr string
				code, stdout, stderr = runCmd(append([]string{"create"}, a...)...)
				out = []byte(stdout + stderr)
				if code != 0 {
					err = fmt.Errorf("exit %d", code)
				}
			}
			if err != nil {
				t.Fatalf("case %d %s: %v\n%s", i, tool, err, out)
			}
			return strings.ReplaceAll(strings.TrimSpace(string(out)), dir, "DIR")
		}
		if want, got := line("qemu-img"), line("imgtool"); got != want {
			t.Errorf("create %v:\n got %s\nwant %s", args, got, want)
		}
	}
}

// TestQuiet: -q silences the Formatting line of create and the message
// of resize, as in qemu-img.
func TestQuiet(t *testing.T) {
	p := filepath.Join(t.TempDir(), "a.qcow2")
	if code, stdout, stderr := runCmd("create", "-q", "-p", p, "1M"); code != 0 || stdout != "" || stderr != "" {
		t.Errorf("create -q: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if code, stdout, stderr := runCmd("resize", "-q", p, "2M"); code != 0 || stdout != "" || stderr != "" {
		t.Errorf("resize -q: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if code, stdout, _ := runCmd("resize", p, "3M"); code != 0 || stdout != "Image resized.\n" {
		t.Errorf("resize: exit %d, stdout %q", code, stdout)
	}
}

// TestLayerCreateDashO: -o means qemu options elsewhere, so layer create
// refuses it and names --output-file.
func TestLayerCreateDashO(t *testing.T) {
	dir := t.TempDir()
	code, _, stderr := runCmd("layer", "create", "-o", filepath.Join(dir, "l.tar"), dir)
	if code != 1 || !strings.Contains(stderr, "--output-file FILE") {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
	if code, _, stderr := runCmd("layer", "create", "--output-file", filepath.Join(dir, "l.tar"), dir); code != 0 {
		t.Errorf("--output-file: exit %d, %s", code, stderr)
	}
}

// TestMapRangeMatchesQemu: map --start-offset/--max-length of the example
// chain equals qemu-img's, human and JSON, including ranges that cut runs
// and ranges past the end.
func TestMapRangeMatchesQemu(t *testing.T) {
	testutil.NeedTool(t, "qemu-img")
	path := fixturePath("chain/top.qcow2")
	for _, r := range [][]string{
		{"--start-offset", "4k", "--max-length", "1M"},
		{"--start-offset", "1.5M"},
		{"--max-length", "100k"},
		{"--start-offset", "3M"},
		{"--start-offset", "64M"},
		{"--max-length", "0"},
		{"--start-offset", "0x1200", "--max-length", "512"},
	} {
		for _, o := range []string{"json", "human"} {
			args := append([]string{"map", "--output=" + o}, r...)
			want := string(testutil.Run(t, "qemu-img", append(append([]string{"map", "-U", "--output=" + o}, r...), path)...))
			code, got, errs := runCmd(append(args, path)...)
			if code != 0 {
				t.Fatalf("map %v: exit %d: %s", r, code, errs)
			}
			if got != want {
				t.Errorf("map %s %v:\n got %s\nwant %s", o, r, got, want)
			}
		}
	}
}

// TestLockHintOnlyWithDashU: a lock conflict suggests -U only on the
// commands that have it, and never for a destination being written.
func TestLockHintOnlyWithDashU(t *testing.T) {
	testutil.NeedTool(t, "qemu-io")
	dir := t.TempDir()
	p := filepath.Join(dir, "held.qcow2")
	if code, _, stderr := runCmd("create", "-q", p, "1M"); code != 0 {
		t.Fatal(stderr)
	}
	release := testutil.HoldWithQemuIO(t, p)
	defer release()
	code, _, stderr := runCmd("info", p)
	if code != 1 || !strings.Contains(stderr, "Use -U") {
		t.Errorf("info of a held image: exit %d, %q; want a -U hint", code, stderr)
	}
	// create --overwrite onto the held image is refused as qemu-img
	// refuses it, and the image is left as it was.
	before, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := runCmd("create", "--overwrite", p, "2M"); code == 0 || !strings.Contains(stderr, `Failed to get "write" lock`) {
		t.Errorf("create --overwrite of a held image: exit %d, %q; want the write-lock error", code, stderr)
	}
	if after, _ := os.ReadFile(p); !bytes.Equal(before, after) {
		t.Error("the refused create --overwrite changed the held image")
	}
	// check and compare exit with qemu-img's codes, and still hint.
	if code, _, stderr := runCmd("check", p); code != 1 || !strings.Contains(stderr, "Use -U") {
		t.Errorf("check of a held image: exit %d, %q; want 1 and a -U hint", code, stderr)
	}
	if code, _, stderr := runCmd("compare", p, p); code != 2 || !strings.Contains(stderr, "Use -U") {
		t.Errorf("compare of a held image: exit %d, %q; want 2 and a -U hint", code, stderr)
	}
	src := filepath.Join(dir, "src.qcow2")
	if code, _, stderr := runCmd("create", "-q", src, "1M"); code != 0 {
		t.Fatal(stderr)
	}
	for _, args := range [][]string{{"write", p, "0", "512"}, {"resize", p, "2M"}, {"snapshot", "-c", "s", p}, {"commit", p},
		{"convert", "-n", "-O", "qcow2", src, p}, {"rebase", "-u", "-b", "", p}} {
		_, _, stderr := runCmd(args...)
		if stderr == "" || strings.Contains(stderr, "-U") {
			t.Errorf("%v on a held image: %q; want an error without -U", args, stderr)
		}
	}
}

// TestBackingRootRefusesEscape: with --backing-root, an image whose
// backing name climbs out of the root is refused by every reading command
// before a byte of the outside file is read.
func TestBackingRootRefusesEscape(t *testing.T) {
	outside, root := t.TempDir(), t.TempDir()
	secret := filepath.Join(outside, "secret.raw")
	if err := os.WriteFile(secret, bytes.Repeat([]byte("s"), 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(root, secret)
	if err != nil {
		t.Fatal(err)
	}
	evil := filepath.Join(root, "evil.qcow2")
	if code, _, stderr := runCmd("create", "-q", "-u", "-b", rel, "-F", "raw", evil, "4096"); code != 0 {
		t.Fatal(stderr)
	}
	for _, args := range [][]string{
		{"info", "--backing-chain"}, {"map"}, {"convert", "-O", "raw"}, {"measure", "-O", "qcow2"}, {"compare"},
	} {
		a := append(append([]string{}, args...), "--backing-root", root, evil)
		switch args[0] {
		case "convert":
			a = append(a, filepath.Join(root, "out.raw"))
		case "compare":
			a = append(a, evil)
		}
		code, _, stderr := runCmd(a...)
		if code == 0 || !strings.Contains(stderr, "outside the backing root") {
			t.Errorf("%v: exit %d, %q; want a refusal", a, code, stderr)
		}
		// Without the root the escape is followed (as qemu-img does).
		if args[0] == "map" {
			if code, _, stderr := runCmd("map", evil); code != 0 {
				t.Errorf("map without --backing-root: %d %s", code, stderr)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(root, "out.raw")); !os.IsNotExist(err) {
		t.Errorf("a refused convert left output: %v", err)
	}
}

// TestQuietBeatsProgress: on the commands whose -p draws progress, -q
// silences it in either order.
func TestQuietBeatsProgress(t *testing.T) {
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "f"), bytes.Repeat([]byte("x"), 1<<20), 0o644)
	out := filepath.Join(t.TempDir(), "l.tar")
	for _, flags := range [][]string{{"-p", "-q"}, {"-q", "-p"}, {"-pq"}} {
		args := append(append([]string{"layer", "create"}, flags...), "--output-file", out, src)
		if code, _, stderr := runCmd(args...); code != 0 || strings.Contains(stderr, "100") {
			t.Errorf("%v: exit %d, stderr %q; want no progress", flags, code, stderr)
		}
	}
	if code, _, stderr := runCmd("layer", "create", "-p", "--output-file", out, src); code != 0 || !strings.Contains(stderr, "(100.00/100%)") {
		t.Errorf("-p alone: exit %d, stderr %q; want a final 100%% line", code, stderr)
	}
}

// TestConvertOntoChainMemberCLI: two VMs on one base; converting vm1 onto
// the base, as a new qcow2 or raw image or into it with -n, is refused
// with qemu-img's write-lock error and no -U hint (with -U the source
// would take no locks and the base would be overwritten under vm2); the
// base stays the same file with the same bytes and vm2 reads as before.
func TestConvertOntoChainMemberCLI(t *testing.T) {
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	web, vm1, vm2 := filepath.Join(dir, "web.qcow2"), filepath.Join(dir, "vm1.qcow2"), filepath.Join(dir, "vm2.qcow2")
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", web, "4M")
	testutil.Run(t, "qemu-io", "-c", "write -P 0x11 0 1M", web)
	for _, vm := range []string{vm1, vm2} {
		testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "web.qcow2", "-F", "qcow2", vm)
	}
	testutil.Run(t, "qemu-io", "-c", "write -P 0x66 512k 1M", vm1) // vm1's private data
	guest := func(p string) []byte {
		out := filepath.Join(t.TempDir(), "g.raw")
		testutil.Run(t, "qemu-img", "convert", "-U", "-O", "raw", p, out)
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	want := guest(vm2)
	before, err := os.ReadFile(web)
	if err != nil {
		t.Fatal(err)
	}
	fiBefore, _ := os.Stat(web)
	for _, args := range [][]string{
		{"convert", "-O", "qcow2", vm1, web},
		{"convert", "-O", "raw", vm1, web},
		{"convert", "-n", "-O", "qcow2", vm1, web},
		{"convert", "-p", "-m", "2", "-W", "-O", "qcow2", vm1, web},
	} {
		code, _, stderr := runCmd(args...)
		if code != 1 || !strings.Contains(stderr, `Failed to get "write" lock`) || !strings.Contains(stderr, "Is another process using the image") {
			t.Errorf("%v: exit %d, %q; want 1 and qemu-img's write-lock error", args, code, stderr)
		}
		if strings.Contains(stderr, "-U") {
			t.Errorf("%v: %q suggests -U for the destination", args, stderr)
		}
	}
	fiAfter, _ := os.Stat(web)
	if after, _ := os.ReadFile(web); !bytes.Equal(before, after) || !os.SameFile(fiBefore, fiAfter) {
		t.Error("the base image was replaced or written")
	}
	if got := guest(vm2); !bytes.Equal(got, want) {
		t.Error("vm2 reads differently after the refused converts")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 3 {
		t.Errorf("directory holds %d entries, want 3 (no temp files)", len(ents))
	}
}

// TestQuietEveryCommand: -q silences everything but errors on the
// commands whose other output is progress or a one-line report, in
// either order with -p (qemu-img's -q wins over -p).
func TestQuietEveryCommand(t *testing.T) {
	dir := t.TempDir()
	p := func(n string) string { return filepath.Join(dir, n) }
	if err := os.WriteFile(p("data"), bytes.Repeat([]byte("d"), 64<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"create", "-q", "-p", p("base.qcow2"), "4M"},
		{"write", p("base.qcow2"), "0", p("data")},
		{"create", "-p", "-q", "-b", "base.qcow2", "-F", "qcow2", p("vm.qcow2")},
		{"write", p("vm.qcow2"), "64K", p("data")},
		{"commit", "-q", "-p", p("vm.qcow2")},
		{"compare", "-p", "-q", p("vm.qcow2"), p("base.qcow2")},
		{"convert", "-q", "-p", "-O", "qcow2", p("base.qcow2"), p("copy.qcow2")},
		{"rebase", "-p", "-q", "-b", "copy.qcow2", "-F", "qcow2", p("vm.qcow2")},
		{"resize", "-q", p("copy.qcow2"), "8M"},
		{"chain", "init", "-q", "-p", p("vms"), "--base", p("base.qcow2")},
		{"chain", "add", "-p", "-q", p("vms"), "web", "--from", "base", "--import", p("copy.qcow2")},
		{"chain", "vm", "-q", p("vms"), "vm1", "--from", "web"},
		{"chain", "rm", "-q", p("vms"), "vm1"},
		{"chain", "squash", "-q", "-p", p("vms"), "web"},
	} {
		code, stdout, stderr := runCmd(args...)
		if args[0] == "write" {
			if code != 0 {
				t.Fatalf("%v: exit %d %s", args, code, stderr)
			}
			continue
		}
		if code != 0 || stdout != "" || stderr != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want 0 and nothing", args, code, stdout, stderr)
		}
	}
}

// TestCreateOptionsHelp: -o help lists, in qemu-img's layout, the options
// imgtool takes for the format; every one is known to parseCreateOption
// and to qemu-img's own -o help, and create, convert and measure answer it.
func TestCreateOptionsHelp(t *testing.T) {
	qemuImg := testutil.NeedTool(t, "qemu-img")
	for _, format := range []string{"qcow2", "raw"} {
		code, out, stderr := runCmd("create", "-f", format, "-o", "help")
		if code != 0 || !strings.HasPrefix(out, "Supported "+format+" options:\n") {
			t.Fatalf("create -f %s -o help: exit %d, %q %q", format, code, out, stderr)
		}
		qemu, _ := testutil.Exec(qemuImg, "create", "-f", format, "-o", "help")
		if format == "raw" {
			// qemu-img lists raw's preallocation with a file name only.
			qemu, _ = testutil.Exec(qemuImg, "create", "-f", format, "-o", "help", filepath.Join(t.TempDir(), "x"))
		}
		names := 0
		for _, l := range strings.Split(out, "\n")[1:] {
			name, _, ok := strings.Cut(strings.TrimSpace(l), "=")
			if !ok {
				continue
			}
			names++
			var o qcow2.CreateOptions
			if err := parseCreateOption(&o, name, "x"); err != nil && strings.Contains(err.Error(), "unknown") {
				t.Errorf("-o help lists %s, which -o refuses", name)
			}
			if !strings.Contains(string(qemu), "  "+name+"=") {
				t.Errorf("-o help lists %s, which qemu-img -f %s does not have:\n%s", name, format, qemu)
			}
		}
		if names < 2 {
			t.Errorf("-o help of %s lists %d options", format, names)
		}
	}
	for _, args := range [][]string{{"convert", "-O", "qcow2", "-o", "?"}, {"measure", "-O", "raw", "-o", "cluster_size=4k,help"}} {
		if code, out, _ := runCmd(args...); code != 0 || !strings.HasPrefix(out, "Supported ") {
			t.Errorf("%v: exit %d, %q", args, code, out)
		}
	}
}

// TestRebaseUnsafeProbesCLI: rebase -u -b without -F records the probed
// format of an existing file, so info --backing-chain (and qemu-img)
// open the chain, and refuses a file it can't probe with qemu-img's words,
// leaving the image as it was.
func TestRebaseUnsafeProbesCLI(t *testing.T) {
	qemuImg := testutil.NeedTool(t, "qemu-img")
	dir := t.TempDir()
	base, top := filepath.Join(dir, "base.raw"), filepath.Join(dir, "top.qcow2")
	for _, args := range [][]string{{"create", "-q", "-f", "raw", base, "1M"}, {"create", "-q", top, "1M"}, {"rebase", "-u", "-b", "base.raw", top}} {
		if code, _, stderr := runCmd(args...); code != 0 {
			t.Fatalf("%v: exit %d %s", args, code, stderr)
		}
	}
	if code, out, stderr := runCmd("info", "--backing-chain", top); code != 0 || !strings.Contains(out, "backing file format: raw") {
		t.Errorf("info --backing-chain after rebase -u: exit %d, %q %q", code, out, stderr)
	}
	if out, err := testutil.Exec(qemuImg, "info", "--backing-chain", top); err != nil || !strings.Contains(string(out), "backing file format: raw") {
		t.Errorf("qemu-img info --backing-chain: %v %s", err, out)
	}
	before, _ := os.ReadFile(top)
	code, _, stderr := runCmd("rebase", "-u", "-b", "missing.qcow2", top)
	if code != 1 || !strings.Contains(stderr, "backing format must be specified") {
		t.Errorf("rebase -u onto a missing file without -F: exit %d, %q", code, stderr)
	}
	if after, _ := os.ReadFile(top); !bytes.Equal(before, after) {
		t.Error("the refused rebase changed the image")
	}
}
