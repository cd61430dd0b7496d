package vmchain

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzChainManifest feeds arbitrary chain.json contents to OpenChainDir
// and the directory scan: they must return an error or a valid manifest,
// never panic, and never accept a name that could leave the directory.
func FuzzChainManifest(f *testing.F) {
	for _, seed := range []string{
		`{"format":1,"images":{"base":"level"}}`,
		`{"format":1,"images":{"base":"level","db":"level","vm0":"vm"},"squash":{"name":"db","into":"base"}}`,
		`{"format":1,"images":{"../x":"level"}}`,
		`{"format":2}`,
		`{"format":1,"images":{"a":"blob"}}`,
		`{"format":1,"squash":{"name":"/etc","into":"a"}}`,
		`null`, ``, `[]`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, chainManifest), data, 0o644); err != nil {
			t.Fatal(err)
		}
		c, err := OpenChainDir(dir)
		if err != nil {
			return
		}
		m, err := c.readManifest()
		if err != nil {
			t.Fatalf("OpenChainDir accepted a manifest readManifest refuses: %v", err)
		}
		for name := range m.Images {
			if validChainName(name) != nil {
				t.Fatalf("accepted image name %q", name)
			}
		}
		if m.Squash != nil && (validChainName(m.Squash.Name) != nil || validChainName(m.Squash.Into) != nil) {
			t.Fatalf("accepted squash journal %+v", m.Squash)
		}
		if _, err := c.scan(); err != nil {
			t.Fatalf("scan of an empty chain directory: %v", err)
		}
	})
}

// FuzzChainName: validChainName never accepts a name that is not a plain
// file name in the directory or that QEMU would parse as a protocol.
func FuzzChainName(f *testing.F) {
	for _, s := range []string{"base", "web-1.2", "../x", ".hidden", "a/b", "nbd:x", "-f", "a..b", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if validChainName(name) != nil {
			return
		}
		if filepath.Base(name) != name || name[0] == '.' || name[0] == '-' || filepath.Clean(name) != name {
			t.Fatalf("accepted %q", name)
		}
		for _, ch := range []byte(name) {
			if ch == '/' || ch == ':' || ch == 0 || ch == '\\' || ch > 0x7e || ch < 0x21 {
				t.Fatalf("accepted %q with byte %q", name, ch)
			}
		}
	})
}
