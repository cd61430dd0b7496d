// Package testutil holds helpers shared by imgtool's tests: gating of
// interop tests on the external oracles (qemu-img, qemu-io, umoci, skopeo,
// a registry) and on root, and small runners for those tools.
//
// Only tests import this package; it is the one place outside tests that
// may use os/exec.
package testutil

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
)

// InteropRequired reports whether IMGTOOL_INTEROP=require is set, as it is
// in CI: then a missing oracle fails the test instead of skipping it.
func InteropRequired() bool { return os.Getenv("IMGTOOL_INTEROP") == "require" }

// NeedTool skips the test (or fails it under IMGTOOL_INTEROP=require) when
// any of the named programs is not on PATH. It returns the path of the first.
func NeedTool(tb testing.TB, names ...string) string {
	tb.Helper()
	first := ""
	for _, name := range names {
		p, err := exec.LookPath(name)
		if err != nil {
			msg := name + " not found on PATH; install it to run this interop test (Debian: apt-get install " + debianPackage(name) + ")"
			if InteropRequired() {
				tb.Fatal(msg + " [IMGTOOL_INTEROP=require]")
			}
			tb.Skip(msg)
		}
		if first == "" {
			first = p
		}
	}
	return first
}

// NeedRoot skips the test (or fails it under IMGTOOL_INTEROP=require) when
// not running as root.
func NeedRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		msg := "this test needs root (mounts, device nodes or ownership)"
		if InteropRequired() {
			tb.Fatal(msg + " [IMGTOOL_INTEROP=require]")
		}
		tb.Skip(msg)
	}
}

func debianPackage(tool string) string {
	switch tool {
	case "qemu-img", "qemu-io", "qemu-nbd":
		return "qemu-utils"
	case "registry", "docker-registry":
		return "docker-registry"
	}
	return tool
}

// Run runs a command and fails the test with its output if it fails. It
// returns the standard output.
func Run(tb testing.TB, name string, args ...string) []byte {
	tb.Helper()
	out, err := Exec(name, args...)
	if err != nil {
		tb.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// Exec runs a command and returns its standard output, or on failure its
// combined output together with the error.
func Exec(name string, args ...string) ([]byte, error) {
	cmd := exec.Command(name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return append(stdout.Bytes(), stderr.Bytes()...), err
	}
	return stdout.Bytes(), nil
}

// HoldWithQemuIO starts qemu-io on the qcow2 image at path, as a running
// QEMU would hold it: open for writing, with QEMU's image locks. It returns
// once qemu-io has completed a first write (so it has the image open) and
// registers a cleanup that ends qemu-io; the returned function ends it
// earlier. The test needs qemu-io (NeedTool).
func HoldWithQemuIO(tb testing.TB, path string) (release func()) {
	tb.Helper()
	return HoldWithQemuIOFormat(tb, path, "qcow2")
}

// HoldWithQemuIOFormat is HoldWithQemuIO for an image of the given format
// ("qcow2", "raw"). The first write puts 0xcd into bytes 0..511.
func HoldWithQemuIOFormat(tb testing.TB, path, format string) (release func()) {
	tb.Helper()
	cmd := exec.Command("qemu-io", "-f", format, path)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	var once sync.Once
	release = func() {
		once.Do(func() {
			io.WriteString(stdin, "quit\n")
			stdin.Close()
			cmd.Wait()
		})
	}
	tb.Cleanup(release)
	io.WriteString(stdin, "write 0 512\n")
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if strings.Contains(sc.Text(), "wrote") {
			go io.Copy(io.Discard, stdout)
			return release
		}
	}
	release()
	tb.Fatalf("qemu-io did not open %s for writing", path)
	return nil
}
