// Package testutil holds helpers shared by imgtool's tests: gating of
// interop tests on the external oracles (qemu-img, qemu-io, umoci, skopeo,
// a registry) and on root, and small runners for those tools.
//
// Only tests import this package; it is the one place outside tests that
// may use os/exec.
package testutil

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
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
