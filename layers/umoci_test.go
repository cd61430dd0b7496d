package layers

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgtool/imgtool/internal/testutil"
	"github.com/imgtool/imgtool/internal/treecmp"
)

// TestUmociDifferential: for random trees (and a random change of each),
// `umoci raw unpack` of an image holding our layers gives the same tree
// as Apply of those layers, and the same as the source trees.
func TestUmociDifferential(t *testing.T) {
	testutil.NeedTool(t, "umoci")
	for seed := range uint64(max(2, seeds()/3)) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			a, b := t.TempDir(), t.TempDir()
			newRandTree(t, seed+100, a, 80)
			cpTree(t, a, b)
			mutateTree(t, seed+100, b)
			blobDir := t.TempDir()
			var descs []Descriptor
			var paths []string
			for i, o := range []CreateOptions{{}, {Lower: a, Compression: None}} {
				src := a
				if i == 1 {
					src = b
				}
				blob, d := createBytes(t, src, o)
				p := filepath.Join(blobDir, fmt.Sprint(i))
				must(t, os.WriteFile(p, blob, 0o644))
				descs, paths = append(descs, d), append(paths, p)
			}
			layout := testLayout(t, paths, descs)
			umoci := filepath.Join(t.TempDir(), "rootfs")
			testutil.Run(t, "umoci", "raw", "unpack", "--image", layout+":test", umoci)
			ours := t.TempDir()
			for _, p := range paths {
				blob, err := os.ReadFile(p)
				must(t, err)
				must(t, applyBytes(ours, blob, ApplyOptions{}))
			}
			opts := treecmp.Options{NoOwner: os.Geteuid() != 0}
			want, err := treecmp.Snapshot(umoci, opts)
			must(t, err)
			got, err := treecmp.Snapshot(ours, opts)
			must(t, err)
			if d := treecmp.Diff(want, got); d != nil {
				t.Errorf("umoci raw unpack (want) and Apply (got) differ:\n%s", strings.Join(d, "\n"))
			}
			assertSameTree(t, b, ours)
		})
	}
}

// testLayout writes a minimal OCI layout holding one image, tagged
// "test", of the given layer blobs.
func testLayout(t testing.TB, paths []string, descs []Descriptor) string {
	t.Helper()
	return writeTestLayout(t, t.TempDir(), "test", paths, descs)
}
