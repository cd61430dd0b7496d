package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgtool/imgtool/internal/testutil"
	"github.com/imgtool/imgtool/overlay/vmimage"
)

// TestInteropPushPullCLI drives push and pull against the real registry
// with TLS (self-signed) and htpasswd: refused without --tls-verify=false
// and credentials, then the chain round-trips; -p draws per-level lines,
// pull prints the top image, a second pull keeps every level.
func TestInteropPushPullCLI(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{Auth: true})
	testutil.NeedTool(t, "qemu-img", "qemu-io")
	src := t.TempDir()
	base, top := filepath.Join(src, "os image.qcow2"), filepath.Join(src, "app.qcow2")
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "256M")
	testutil.Run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 1M", base)
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
	testutil.Run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x6b 3M 1M", top)
	ref := reg.Host + "/vms/app:1"
	creds := "--creds=" + testutil.RegistryUser + ":" + testutil.RegistryPassword

	if code, _, errb := imageTestRun(t, "push", top, ref); code != 1 || !strings.Contains(errb, "imgtool push:") {
		t.Errorf("push to a self-signed registry without --tls-verify=false: exit %d\n%s", code, errb)
	}
	if code, _, errb := imageTestRun(t, "push", "--tls-verify=false", top, ref); code != 1 || !strings.Contains(strings.ToLower(errb), "auth") {
		t.Errorf("push without credentials: exit %d\n%s", code, errb)
	}
	if code, _, errb := imageTestRun(t, "push", top); code != 1 || !strings.Contains(errb, "want IMAGE and REF") {
		t.Errorf("push with one argument: exit %d\n%s", code, errb)
	}

	code, out, errb := imageTestRun(t, "push", "--tls-verify=false", creds, "-p", top, ref)
	if code != 0 {
		t.Fatalf("push: exit %d\n%s%s", code, out, errb)
	}
	if !strings.Contains(out, "2 levels: 2 uploaded") || strings.Count(errb, "\n") < 2 {
		t.Errorf("push output:\n%s\nprogress:\n%s", out, errb)
	}
	dir := filepath.Join(t.TempDir(), "vms")
	code, out, errb = imageTestRun(t, "pull", "--tls-verify=false", creds, "-p", ref, dir)
	if code != 0 {
		t.Fatalf("pull: exit %d\n%s%s", code, out, errb)
	}
	// The base's name had a space: it is sanitized to os_image.
	if want := filepath.Join(dir, "app.qcow2") + "\n"; out != want {
		t.Errorf("pull printed %q, want %q", out, want)
	}
	testutil.Run(t, "qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", filepath.Join(dir, "app.qcow2"), top)
	testutil.Run(t, "qemu-img", "check", "-f", "qcow2", filepath.Join(dir, "os_image.qcow2"))

	code, out, errb = imageTestRun(t, "pull", "--tls-verify=false", creds, "--output", "json", ref, dir)
	if code != 0 {
		t.Fatalf("second pull: exit %d\n%s%s", code, out, errb)
	}
	var res vmimage.PullResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("pull --output json: %v\n%s", err, out)
	}
	if res.Fetched != 0 || res.Kept != 2 || res.Levels[0].Name != "os_image" || res.Levels[1].Parent != "os_image" {
		t.Errorf("second pull: %+v", res)
	}
}
