package main

import (
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"golang.org/x/sys/unix"

	"github.com/imgtool/imgtool/internal/testutil"
)

// TestRegistryCLI: image push to a registry, image pull back, store
// unpack of docker://REF and (as root) rootfs mount of docker://REF, with
// go-containerregistry's in-process registry.
func TestRegistryCLI(t *testing.T) {
	srv := httptest.NewServer(ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	work := t.TempDir()
	layout := hostnameLayout(t, work, "v1", "from-registry\n")
	ref := host + "/test/app:v1"

	out := runCLI(t, 0, "image", "push", "--tls-verify=false", layout+":v1", "docker://"+ref)
	if !strings.Contains(out, "1 uploaded") {
		t.Errorf("push: %q", out)
	}
	pulled := filepath.Join(work, "pulled")
	out = runCLI(t, 0, "image", "pull", "--tls-verify=false", ref, pulled+":v1")
	if !strings.Contains(out, "pulled") {
		t.Errorf("pull: %q", out)
	}
	// Pulled again: every blob is there already.
	out = runCLI(t, 0, "image", "pull", "--tls-verify=false", "docker://"+ref, pulled+":v1")
	if !strings.Contains(out, "0 fetched") {
		t.Errorf("second pull fetched again: %q", out)
	}
	runCLI(t, 0, "image", "verify", pulled)

	store := filepath.Join(work, "store")
	out = runCLI(t, 0, "store", "unpack", "--store", store, "--tls-verify=false", "docker://"+ref)
	if !strings.Contains(out, "1 unpacked") {
		t.Errorf("store unpack: %q", out)
	}
	out = runCLI(t, 1, "image", "pull", "--tls-verify=false", host+"/test/missing:v1", filepath.Join(work, "x")+":v1")
	if !strings.Contains(out, "missing") {
		t.Errorf("pull of a missing image: %q", out)
	}

	testutil.NeedRoot(t)
	target := filepath.Join(work, "mnt")
	out = runCLI(t, 0, "rootfs", "mount", "--store", store, "--tls-verify=false", "docker://"+ref, target)
	t.Cleanup(func() { unix.Unmount(target, unix.MNT_DETACH) })
	if !strings.Contains(out, "1 already in the store") {
		t.Errorf("mount of a docker:// image whose layer is in the store: %q", out)
	}
	if b, err := os.ReadFile(filepath.Join(target, "etc/hostname")); err != nil || string(b) != "from-registry\n" {
		t.Errorf("mounted file: %q %v", b, err)
	}
	runCLI(t, 0, "rootfs", "umount", "--rm", target)
}
