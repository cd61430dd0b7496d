package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/imgtool/imgtool/layers"
	"github.com/imgtool/imgtool/overlay"
	"github.com/spf13/pflag"
)

const rootfsUsage = `Usage: imgtool rootfs SUBCOMMAND [OPTIONS] ARGS...

Subcommands:
  mount   [--name NAME] [--readonly] [--copy] DIR:TAG|docker://REF TARGET
          unpack the image's missing layers into the store and mount an
          overlayfs container of them on TARGET (created if missing)
  umount  [--rm] TARGET
          unmount the container on TARGET; its upper dir is kept unless --rm;
          a TARGET that mount created is removed
  commit  TARGET DIR:TAG|docker://REF
          turn the changes made in the container on TARGET into a new layer
          on top of its image, written to the layout DIR as TAG or pushed to
          REF (for a container mounted from docker://REF, the base image is
          fetched from the registry by the digest it was mounted from, and
          a push mounts its layers from there instead of uploading them)

Every subcommand takes --store DIR (default $XDG_DATA_HOME/imgtool/store,
else ~/.local/share/imgtool/store); umount and commit find the store of a
mounted container by themselves.
Run 'imgtool rootfs SUBCOMMAND --help' for the options of one.
`

// runRootfs dispatches imgtool rootfs mount|umount|commit.
func runRootfs(args []string, stdout, stderr io.Writer) error {
	return dispatch(rootfsUsage, args, stdout, stderr,
		subcommand{[]string{"mount"}, runRootfsMount},
		subcommand{[]string{"umount", "unmount"}, runRootfsUmount},
		subcommand{[]string{"commit"}, runRootfsCommit},
	)
}

// rootfsStoreFlag adds --store to fs.
func rootfsStoreFlag(fs *pflag.FlagSet) *string {
	return fs.String("store", "", "layer store `DIR` (default: $XDG_DATA_HOME/imgtool/store or ~/.local/share/imgtool/store)")
}

// rootfsStoreOfTarget returns the --store directory, or, without one, the
// store of the container mounted on target when the mount tells it, so
// that commit and umount need no --store after `mount --store DIR`.
func rootfsStoreOfTarget(dir, target string) string {
	if dir != "" {
		return dir
	}
	if d, ok := overlay.StoreOfMount(target); ok {
		return d
	}
	return ""
}

// rootfsOpenStore opens the --store directory, or the default one.
func rootfsOpenStore(dir string) (*overlay.Store, error) {
	if dir == "" {
		d, err := overlay.DefaultStoreDir()
		if err != nil {
			return nil, err
		}
		dir = d
	}
	return overlay.OpenStore(dir, overlay.StoreOptions{})
}

// rootfsProgress returns a Progress callback printing one line per layer
// to w, or nil when off.
func rootfsProgress(on bool, w io.Writer) func(overlay.Progress) {
	if !on {
		return nil
	}
	var mu sync.Mutex
	done := 0
	return func(p overlay.Progress) {
		mu.Lock()
		defer mu.Unlock()
		done++
		what := "unpacked"
		if p.Present {
			what = "in store"
		}
		fmt.Fprintf(w, "[%d/%d] layer %d %s %s\n", done, p.Total, p.Index, p.ChainID.Encoded()[:12], what)
	}
}

func runRootfsMount(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("rootfs mount", "[--store DIR] [--name NAME] [--readonly] [--copy] DIR:TAG|docker://REF TARGET", stdout, stderr)
	store := rootfsStoreFlag(fs)
	name := fs.String("name", "", "container `NAME`; an existing unmounted container of that name is mounted again with its changes (default: generated)")
	readonly := fs.Bool("readonly", false, "mount read-only, without an upper dir; with --copy, hardlink the files from the store (never write such a copy: it would change the store)")
	copyMode := fs.Bool("copy", false, "make a flattened copy in TARGET instead of an overlay mount (for hosts that cannot mount overlayfs)")
	sf := addStoreImageFlags(fs)
	im, asJSON, err := sf.parse(fs, args, 2, "want DIR:TAG (or docker://REF) and TARGET, got %d arguments", store, stderr)
	if err != nil {
		return err
	}
	ctx, stop := interruptible()
	defer stop()
	c, st, err := im.mount(ctx, fs.Arg(1), overlay.MountOptions{Name: *name, ReadOnly: *readonly, Copy: *copyMode})
	if errors.Is(err, overlay.ErrMountUnsupported) {
		return fmt.Errorf("%w\nhint: where overlayfs cannot be mounted, 'imgtool rootfs mount --copy' makes a flattened copy instead", err)
	}
	if err != nil {
		return err
	}
	if asJSON {
		return writeJSON(stdout, struct {
			Container *overlay.Container  `json:"container"`
			Unpack    overlay.UnpackStats `json:"unpack"`
		}{c, st})
	}
	fmt.Fprintf(stdout, "mounted %s on %s: container %s (%s%s), %s: %d unpacked, %d already in the store\n",
		im.ref, c.Target, c.Name, c.Mode, map[bool]string{true: ", read-only"}[c.ReadOnly], plural(st.Layers, "layer"), st.Unpacked, st.Present)
	return nil
}

func runRootfsUmount(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("rootfs umount", "[--store DIR] [--rm] TARGET", stdout, stderr)
	store := rootfsStoreFlag(fs)
	rm := fs.Bool("rm", false, "remove the container: its upper dir (or, in copy mode, the copied tree) and its record")
	output := fs.String("output", "human", "output format: human or json")
	asJSON, err := parseOutputArgs(fs, args, output, 1, "want one TARGET argument, got %d")
	if err != nil {
		return err
	}
	s, err := rootfsOpenStore(rootfsStoreOfTarget(*store, fs.Arg(0)))
	if err != nil {
		return err
	}
	c, err := s.Unmount(context.Background(), fs.Arg(0), overlay.UnmountOptions{Remove: *rm})
	if err != nil {
		return err
	}
	if asJSON {
		return writeJSON(stdout, struct {
			Container *overlay.Container `json:"container"`
			Removed   bool               `json:"removed"`
		}{c, *rm})
	}
	if *rm {
		fmt.Fprintf(stdout, "unmounted %s and removed container %s\n", c.Target, c.Name)
	} else {
		fmt.Fprintf(stdout, "unmounted %s; container %s kept (mount it again with --name %s, or umount --rm)\n", c.Target, c.Name, c.Name)
	}
	return nil
}

func runRootfsCommit(args []string, stdout, stderr io.Writer) (retErr error) {
	fs := newFlagSet("rootfs commit", "[--store DIR] TARGET DIR:TAG|docker://REF", stdout, stderr)
	store := rootfsStoreFlag(fs)
	comp := fs.String("compression", "gzip", "compression of the new layer: gzip, zstd or none")
	sde := fs.String("source-date-epoch", "", "`SECONDS` since 1970 for the config's created time and to clamp mtimes (default: $SOURCE_DATE_EPOCH, else now and no clamping)")
	progress := progressFlags(fs, "show progress on stderr")
	allowEmpty := fs.Bool("allow-empty", false, "commit an empty layer when the container has no changes (by default nothing is written)")
	output := fs.String("output", "human", "output format: human or json")
	rf := addRegistryFlags(fs)
	asJSON, err := parseOutputArgs(fs, args, output, 2, "want TARGET and DIR:TAG (or docker://REF), got %d arguments")
	if err != nil {
		return err
	}
	report, finish := newPhaseProgress(*progress, stderr)
	defer func() { finish(retErr) }()
	// docker://REF: commit into a scratch layout, then push it.
	var dest fmt.Stringer
	var ref layers.ImageRef
	remote := strings.HasPrefix(fs.Arg(1), "docker://")
	if remote {
		tmp, err := os.MkdirTemp("", "imgtool-commit-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		ref, dest = layers.ImageRef{Dir: filepath.Join(tmp, "oci"), Tag: "commit"}, stringer(fs.Arg(1))
	} else {
		if ref, err = layers.ParseImageRef(fs.Arg(1)); err != nil {
			return usagef("%v", err)
		}
		dest = ref
	}
	c, err := layers.ParseCompression(*comp)
	if err != nil {
		return usagef("--compression: %v", err)
	}
	epoch, err := sourceDateEpoch(*sde)
	if err != nil {
		return err
	}
	ro, err := rf.options()
	if err != nil {
		return err
	}
	s, err := rootfsOpenStore(rootfsStoreOfTarget(*store, fs.Arg(0)))
	if err != nil {
		return err
	}
	ctx, stop := interruptible()
	defer stop()
	res, err := s.Commit(ctx, fs.Arg(0), ref, overlay.CommitOptions{Compression: c, SourceDateEpoch: epoch, Progress: report, AllowEmpty: *allowEmpty, Remote: overlay.RemoteOptions{Registry: ro}})
	if errors.Is(err, overlay.ErrNoChanges) {
		return fmt.Errorf("%w; nothing written (--allow-empty commits an empty layer)", err)
	}
	if err != nil {
		return err
	}
	var pushed *layers.PushResult
	if remote {
		// Base layers the registry has in the container's repository
		// are mounted, not uploaded.
		from := ""
		if rest, ok := strings.CutPrefix(res.Container.ImageDir, "docker://"); ok {
			from = rest
		}
		finish(nil) // the commit's phase line, before the push's blob lines
		update, done := newBlobProgress(*progress, stderr)
		pushed, err = layers.Push(ctx, ref, fs.Arg(1), layers.PushOptions{Registry: ro, MountFrom: from, Progress: update})
		done()
		if err != nil {
			return fmt.Errorf("push of the committed image: %w", err)
		}
	}
	if asJSON {
		return writeJSON(stdout, struct {
			Container string              `json:"container"`
			Layer     layers.Descriptor   `json:"layer"`
			Image     *layers.BuildResult `json:"image"`
			Push      *layers.PushResult  `json:"push,omitempty"`
		}{res.Container.Name, res.Layer, res.Image, pushed})
	}
	fmt.Fprintf(stdout, "committed container %s as %s: manifest %s, new layer %s (%d bytes)\n",
		res.Container.Name, dest, res.Image.Manifest.Digest, res.Layer.Digest, res.Layer.Size)
	return nil
}
