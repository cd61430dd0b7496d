package testutil

import (
	"os"
	"path/filepath"
	"testing"
)

// UmociLayout makes, with umoci, an OCI layout in a fresh temporary
// directory holding an empty image tagged base. It returns the layout's
// directory and step: step(from, to, edit) unpacks tag from into a
// bundle, lets edit change the bundle's rootfs, and repacks it as tag to
// (one new layer). Without umoci the test skips (fails with
// IMGTOOL_INTEROP=require), as NeedTool.
func UmociLayout(tb testing.TB) (dir string, step func(from, to string, edit func(rootfs string))) {
	tb.Helper()
	NeedTool(tb, "umoci")
	work := tb.TempDir()
	dir = filepath.Join(work, "layout")
	Run(tb, "umoci", "init", "--layout", dir)
	Run(tb, "umoci", "new", "--image", dir+":base")
	bundle := filepath.Join(work, "bundle")
	return dir, func(from, to string, edit func(rootfs string)) {
		tb.Helper()
		if err := os.RemoveAll(bundle); err != nil {
			tb.Fatal(err)
		}
		Run(tb, "umoci", "unpack", "--image", dir+":"+from, bundle)
		edit(filepath.Join(bundle, "rootfs"))
		Run(tb, "umoci", "repack", "--image", dir+":"+to, bundle)
	}
}
