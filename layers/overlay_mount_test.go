package layers

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgtool/imgtool/internal/testutil"
	"github.com/imgtool/imgtool/internal/treecmp"
	"golang.org/x/sys/unix"
)

// TestOverlayFormatMount checks the overlay format against the kernel:
// layers (a random tree, then diffs of random changes) applied in overlay
// format into their own dirs and mounted as overlayfs lowerdirs show the
// same tree as the layers applied flat.
func TestOverlayFormatMount(t *testing.T) {
	testutil.NeedRoot(t)
	for seed := range uint64(max(2, seeds()/3)) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			a, b, c := t.TempDir(), t.TempDir(), t.TempDir()
			newRandTree(t, seed+200, a, 80)
			cpTree(t, a, b)
			mutateTree(t, seed+200, b)
			cpTree(t, b, c)
			mutateTree(t, seed+300, c)
			blobs := [][]byte{}
			for _, p := range [][2]string{{a, ""}, {b, a}, {c, b}} {
				blob, _ := createBytes(t, p[0], CreateOptions{Lower: p[1]})
				blobs = append(blobs, blob)
			}
			flat := t.TempDir()
			var lowers []string
			for i, blob := range blobs {
				must(t, applyBytes(flat, blob, ApplyOptions{}))
				l := filepath.Join(t.TempDir(), fmt.Sprint(i))
				must(t, applyBytes(l, blob, ApplyOptions{Overlay: true}))
				lowers = append([]string{l}, lowers...) // top first
			}
			merged := t.TempDir()
			if err := unix.Mount("overlay", merged, "overlay", unix.MS_RDONLY, "lowerdir="+strings.Join(lowers, ":")); err != nil {
				t.Skipf("cannot mount overlayfs here: %v", err)
			}
			defer unix.Unmount(merged, 0)
			want, err := treecmp.Snapshot(flat, treecmp.Options{})
			must(t, err)
			got, err := treecmp.Snapshot(merged, treecmp.Options{})
			must(t, err)
			// The root of the mount is not an entry; everything below is.
			if d := treecmp.Diff(want, got); d != nil {
				t.Fatalf("overlay mount of overlay-format layers (got) differs from flat apply (want):\n%s", strings.Join(d, "\n"))
			}
		})
	}
}
