package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func imageTestRun(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestImageCLI(t *testing.T) {
	tmp := t.TempDir()
	src := filepath.Join(tmp, "src")
	os.MkdirAll(filepath.Join(src, "etc"), 0o755)
	os.WriteFile(filepath.Join(src, "etc/hello"), []byte("hello\n"), 0o644)
	src2 := filepath.Join(tmp, "src2")
	os.MkdirAll(filepath.Join(src2, "etc"), 0o755)
	os.WriteFile(filepath.Join(src2, "etc/hello"), []byte("hello again\n"), 0o644)
	layout := filepath.Join(tmp, "layout")

	code, out, errs := imageTestRun(t, "image", "build", "--layer", src, "--compression", "zstd", "--source-date-epoch", "1700000000", layout+":v1")
	if code != 0 {
		t.Fatalf("build: exit %d: %s", code, errs)
	}
	if !strings.HasPrefix(out, layout+":v1 sha256:") {
		t.Errorf("build output %q", out)
	}
	code, out, errs = imageTestRun(t, "image", "build", "--base", layout+":v1", "--layer", src2, "-p", "--output", "json", layout+":v2")
	if code != 0 {
		t.Fatalf("build on base: exit %d: %s", code, errs)
	}
	var res struct {
		Manifest struct{ Digest string }
		Layers   []struct{ Digest, DiffID, MediaType string }
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.Layers) != 1 || res.Layers[0].MediaType != "application/vnd.oci.image.layer.v1.tar+gzip" {
		t.Fatalf("build json %q: %v", out, err)
	}

	code, out, errs = imageTestRun(t, "image", "ls", layout)
	if code != 0 || !strings.Contains(out, "TAG") || !strings.Contains(out, "v1") || !strings.Contains(out, "v2") || !strings.Contains(out, "linux/") {
		t.Fatalf("ls: exit %d: %q %s", code, out, errs)
	}
	code, out, _ = imageTestRun(t, "image", "ls", "--output", "json", layout)
	var list []struct {
		Tag    string
		Images []struct {
			Digest string
			Layers int
			Size   int64
		}
	}
	if err := json.Unmarshal([]byte(out), &list); code != 0 || err != nil || len(list) != 2 || list[1].Tag != "v2" || list[1].Images[0].Layers != 2 || list[1].Images[0].Digest != res.Manifest.Digest {
		t.Fatalf("ls json: %q %v", out, err)
	}

	target := filepath.Join(tmp, "rootfs")
	code, out, errs = imageTestRun(t, "image", "unpack", "-p", layout+":v2", target)
	if code != 0 {
		t.Fatalf("unpack: exit %d: %s", code, errs)
	}
	if b, _ := os.ReadFile(filepath.Join(target, "etc/hello")); string(b) != "hello again\n" {
		t.Errorf("unpacked etc/hello = %q", b)
	}
	code, out, errs = imageTestRun(t, "image", "unpack", "--uid-map", "0:0:4294967295", "--gid-map", "0:0:4294967295", layout+":v1", filepath.Join(tmp, "rootfs-mapped"))
	if code != 0 {
		t.Errorf("unpack with identity id maps: exit %d: %s", code, errs)
	}
	code, out, _ = imageTestRun(t, "image", "unpack", "--output", "json", layout+":v1", filepath.Join(tmp, "rootfs1"))
	if code != 0 || !strings.Contains(out, `"layers":1`) {
		t.Errorf("unpack json: %d %q", code, out)
	}

	code, out, errs = imageTestRun(t, "image", "verify", layout)
	if code != 0 || !strings.Contains(out, "2 tags, 2 images, 6 blobs") || !strings.Contains(out, "0 problems") {
		t.Errorf("verify: exit %d: %q %s", code, out, errs)
	}
	// Break a blob: verify reports it and exits 1.
	var broken string
	filepath.WalkDir(filepath.Join(layout, "blobs"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && broken == "" {
			if fi, _ := d.Info(); fi.Size() > 300 { // a layer
				broken = p
			}
		}
		return nil
	})
	b, _ := os.ReadFile(broken)
	b[len(b)/2] ^= 0xff
	os.WriteFile(broken, b, 0o644)
	code, out, errs = imageTestRun(t, "image", "verify", "--output", "json", layout)
	if code != 1 || !strings.Contains(out, `"issues": [`) || !strings.Contains(out, filepath.Base(broken)) || !strings.Contains(errs, "problems") {
		t.Errorf("verify of a broken layout: exit %d: %q %s", code, out, errs)
	}
	b[len(b)/2] ^= 0xff // restore it
	os.WriteFile(broken, b, 0o644)

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"image"}, "missing subcommand"},
		{[]string{"image", "frob"}, "unknown subcommand"},
		{[]string{"image", "build", layout + ":v3"}, "at least one --layer"},
		{[]string{"image", "build", "--layer", src, "--compression", "lz4", layout + ":v3"}, "compression"},
		{[]string{"image", "build", "--layer", src, "--base", layout + ":nope", layout + ":v3"}, "tag not found"},
		{[]string{"image", "build", "--layer", src, layout + ":bad tag"}, "invalid tag"},
		{[]string{"image", "unpack", layout + ":nope", filepath.Join(tmp, "x")}, "tag not found"},
		{[]string{"image", "unpack", layout + ":v1", target}, "not empty"},
		{[]string{"image", "unpack", "--platform", "linux", layout + ":v1", filepath.Join(tmp, "y")}, "OS/ARCH"},
		{[]string{"image", "ls", tmp}, "not an OCI image layout"},
		{[]string{"image", "unpack", "--uid-map", "0:1", layout + ":v1", filepath.Join(tmp, "z")}, "CONTAINER:HOST:SIZE"},
		{[]string{"image", "ls", "--output", "yaml", layout}, "--output"},
	} {
		code, _, errs := imageTestRun(t, c.args...)
		if code != 1 || !strings.Contains(errs, c.want) {
			t.Errorf("%v: exit %d, stderr %q, want 1 and %q", c.args, code, errs, c.want)
		}
	}
	if code, out, _ := imageTestRun(t, "help", "image"); code != 0 || !strings.Contains(out, "unpack") {
		t.Errorf("help image: %d %q", code, out)
	}
	if _, err := os.Stat(filepath.Join(tmp, "x")); err == nil {
		t.Error("failed unpack created its target")
	}
}
