package vmimage

import (
	"bytes"
	"encoding/json"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// FuzzPlan feeds Plan arbitrary manifests: it must refuse or return a
// chain that satisfies the contract, never panic.
func FuzzPlan(f *testing.F) {
	for _, names := range [][]string{{"base"}, {"base", "db", "web"}} {
		raw, _ := json.Marshal(testManifest(names...))
		f.Add(raw)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		m, err := v1.ParseManifest(bytes.NewReader(raw))
		if err != nil {
			return
		}
		levels, err := Plan(m)
		if err != nil {
			return
		}
		for i, l := range levels {
			if ValidName(l.Name) != nil || l.BlobSize != BlobSize(l.Size) || l.Index != i {
				t.Fatalf("Plan returned a bad level %+v", l)
			}
			if (i == 0) != (l.Parent == "") || i > 0 && l.Parent != levels[i-1].Name {
				t.Fatalf("Plan returned a broken chain %+v", levels)
			}
		}
	})
}

// FuzzParseHeader: any header ParseHeader accepts is the one Header
// writes.
func FuzzParseHeader(f *testing.F) {
	h, _ := Header("web", 12345)
	f.Add(h[:], "web")
	h, _ = Header("base", 1<<40)
	f.Add(h[:], "base")
	f.Fuzz(func(t *testing.T, h []byte, name string) {
		size, err := ParseHeader(h, name)
		if err != nil {
			return
		}
		want, err := Header(name, size)
		if err != nil || !bytes.Equal(want[:], h) {
			t.Fatalf("ParseHeader accepted a header Header(%q, %d) does not write", name, size)
		}
	})
}
