package vmdisk

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/imgtool/imgtool/layers"
)

// BuildFromRegistry builds the disk chain of a registry image (src, with
// or without docker://): it is pulled with layers.Pull into a temporary
// OCI layout beside outdir (pull.Platform defaults to opts.Platform),
// built as Build does, and the layout removed. A non-empty outdir is
// refused before anything is fetched.
func BuildFromRegistry(ctx context.Context, src, outdir string, opts Options, pull layers.PullOptions) (_ *Result, err error) {
	outdir = filepath.Clean(outdir)
	undo, err := claimOutdir(outdir) // before anything is fetched
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			undo()
		}
	}()
	tmp, err := os.MkdirTemp(filepath.Dir(outdir), "."+filepath.Base(outdir)+".pull-")
	if err != nil {
		return nil, fmt.Errorf("vmdisk: %w", err)
	}
	defer os.RemoveAll(tmp)
	if pull.Platform == nil {
		pull.Platform = opts.Platform
	}
	ref := layers.ImageRef{Dir: filepath.Join(tmp, "oci"), Tag: "pulled"}
	if _, err := layers.Pull(ctx, src, ref, pull); err != nil {
		return nil, err
	}
	return Build(ctx, ref, outdir, opts)
}
