package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/imgtool/imgtool/layers"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

const imageUsage = `Usage: imgtool image SUBCOMMAND [OPTIONS] ARGS...

Subcommands:
  build   [--base DIR:TAG] --layer PATH [--layer PATH ...] DIR:TAG
          write a new image into the OCI layout DIR (created if missing)
  unpack  DIR:TAG TARGET
          flatten an image into TARGET (like umoci raw unpack)
  ls      DIR
          list the tags of a layout with digests, platforms and sizes
  verify  DIR
          re-hash every blob reachable from the tags and recompute diffIDs
  disk    [--size SIZE] [--cluster-size SIZE] [-p] DIR:TAG|docker://REF OUTDIR
          build an ext4 VM disk as a qcow2 chain, one level per layer
          (named by ChainID), in OUTDIR (created; must be empty), and
          print the top image's path; no root, mkfs or mount needed
  pull    [--platform P] [--all-platforms] REF DIR:TAG
          copy an image from a registry into the layout DIR
  push    DIR:TAG REF
          copy an image (or index) of the layout DIR to a registry

A layout reference is DIR[:TAG]; TAG defaults to latest. A registry
reference REF is HOST[:PORT]/REPO[:TAG|@DIGEST], with or without docker://.
Credentials: --creds, --authfile, else $REGISTRY_AUTH_FILE,
${XDG_RUNTIME_DIR}/containers/auth.json, ~/.config/containers/auth.json,
~/.docker/config.json (and its credential helpers).
Run 'imgtool image SUBCOMMAND --help' for the options of one.
`

// runImage dispatches imgtool image build|unpack|ls.
func runImage(args []string, stdout, stderr io.Writer) error {
	return dispatch(imageUsage, args, stdout, stderr,
		subcommand{[]string{"build"}, runImageBuild},
		subcommand{[]string{"unpack"}, runImageUnpack},
		subcommand{[]string{"ls", "list"}, runImageLs},
		subcommand{[]string{"verify"}, runImageVerify},
		subcommand{[]string{"disk"}, runImageDisk},
		subcommand{[]string{"pull"}, runImagePull},
		subcommand{[]string{"push"}, runImagePush},
	)
}

// parsePlatform parses OS/ARCH[/VARIANT].
func parsePlatform(s string) (*ocispec.Platform, error) {
	if s == "" {
		return nil, nil
	}
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return nil, usagef("--platform %q: want OS/ARCH[/VARIANT]", s)
	}
	p := &ocispec.Platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) == 3 {
		p.Variant = parts[2]
	}
	return p, nil
}

// sourceDateEpoch returns the --source-date-epoch flag's time, else the
// SOURCE_DATE_EPOCH environment variable's, else nil.
func sourceDateEpoch(flag string) (*time.Time, error) {
	v, what := flag, "--source-date-epoch"
	if v == "" {
		v, what = os.Getenv("SOURCE_DATE_EPOCH"), "SOURCE_DATE_EPOCH"
	}
	if v == "" {
		return nil, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return nil, usagef("%s %q: want seconds since 1970 (a non-negative integer)", what, v)
	}
	t := time.Unix(n, 0).UTC()
	return &t, nil
}

func runImageBuild(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("image build", "[--base DIR:TAG] --layer PATH [--layer PATH ...] DIR:TAG", stdout, stderr)
	base := fs.String("base", "", "base image `DIR:TAG` (default: none, start from scratch)")
	layerPaths := fs.StringArray("layer", nil, "`PATH` of a layer, bottom first: a directory (diffed against the image below it) or a layer blob file; repeatable")
	comp := fs.String("compression", "gzip", "compression of layers made from directories: gzip, zstd or none")
	platform := fs.String("platform", "", "`OS/ARCH[/VARIANT]` to pick the base from an index, or to record for an image from scratch (default: the host's)")
	sde := fs.String("source-date-epoch", "", "`SECONDS` since 1970 for the config's created time and to clamp mtimes (default: $SOURCE_DATE_EPOCH, else now and no clamping)")
	tmp := fs.String("tmpdir", "", "`DIR` for the scratch tree that directory layers are diffed against (default: $TMPDIR)")
	progress := progressFlags(fs, "show progress on stderr")
	output := fs.String("output", "human", "output format: human or json")
	asJSON, err := parseOutputArgs(fs, args, output, 1, "want one DIR:TAG argument, got %d")
	if err != nil {
		return err
	}
	if len(*layerPaths) == 0 {
		return usagef("at least one --layer is required")
	}
	ref, err := layers.ParseImageRef(fs.Arg(0))
	if err != nil {
		return usagef("%v", err)
	}
	c, err := layers.ParseCompression(*comp)
	if err != nil {
		return usagef("--compression: %v", err)
	}
	plat, err := parsePlatform(*platform)
	if err != nil {
		return err
	}
	epoch, err := sourceDateEpoch(*sde)
	if err != nil {
		return err
	}
	opts := layers.BuildOptions{
		Platform:        plat,
		Layers:          *layerPaths,
		Tag:             ref.Tag,
		Compression:     c,
		SourceDateEpoch: epoch,
		TempDir:         *tmp,
	}
	if *base != "" {
		b, err := layers.ParseImageRef(*base)
		if err != nil {
			return usagef("--base: %v", err)
		}
		opts.BaseLayout, opts.Base = b.Dir, b.Tag
	}
	update, finish := newProgress(*progress, stderr, "building")
	opts.Progress = update
	ctx, stop := interruptible()
	defer stop()
	res, err := layers.Build(ctx, ref.Dir, opts)
	finish()
	if err != nil {
		return err
	}
	if asJSON {
		return writeJSON(stdout, res)
	}
	fmt.Fprintf(stdout, "%s %s\n", ref, res.Manifest.Digest)
	for i, l := range res.Layers {
		fmt.Fprintf(stdout, "  layer %d: %s %s (%d bytes, diffID %s)\n", i, l.Digest, l.MediaType, l.Size, l.DiffID)
	}
	return nil
}

func runImageUnpack(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("image unpack", "DIR[:TAG] TARGET", stdout, stderr)
	platform := fs.String("platform", "", "`OS/ARCH[/VARIANT]` to pick from an index (default: the only image, else the host's)")
	var ao layers.ApplyOptions
	fs.Var(idMapFlag{&ao.UIDMap}, "uid-map", "map layer uids to host uids (repeatable, for rootless use)")
	fs.Var(idMapFlag{&ao.GIDMap}, "gid-map", "map layer gids to host gids (repeatable)")
	fs.BoolVar(&ao.SkipDevices, "skip-devices", false, "skip device nodes when they may not be created (not root) instead of failing")
	progress := progressFlags(fs, "show progress on stderr")
	output := fs.String("output", "human", "output format: human or json")
	asJSON, err := parseOutputArgs(fs, args, output, 2, "want DIR[:TAG] and TARGET, got %d arguments")
	if err != nil {
		return err
	}
	ref, plat, err := parseImageArg(fs.Arg(0), *platform)
	if err != nil {
		return err
	}
	update, finish := newProgress(*progress, stderr, "unpacking")
	ctx, stop := interruptible()
	defer stop()
	img, err := layers.Unpack(ctx, ref.Dir, ref.Tag, fs.Arg(1), layers.UnpackOptions{Platform: plat, Apply: ao, Progress: update})
	finish()
	if err != nil {
		return err
	}
	if asJSON {
		return json.NewEncoder(stdout).Encode(map[string]any{
			"ref":      ref.String(),
			"manifest": img.Descriptor.Digest,
			"platform": img.Config.Platform,
			"layers":   len(img.Manifest.Layers),
			"target":   fs.Arg(1),
		})
	}
	noun := "layers"
	if len(img.Manifest.Layers) == 1 {
		noun = "layer"
	}
	fmt.Fprintf(stdout, "unpacked %s (%s, %d %s) into %s\n", ref, img.Descriptor.Digest, len(img.Manifest.Layers), noun, fs.Arg(1))
	return nil
}

func runImageLs(args []string, stdout, stderr io.Writer) error {
	l, _, asJSON, err := layoutCommand("image ls", args, stdout, stderr)
	if err != nil {
		return err
	}
	list, err := l.List(context.Background())
	if err != nil {
		return err
	}
	if asJSON {
		return writeJSON(stdout, list)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TAG\tDIGEST\tPLATFORM\tLAYERS\tSIZE\tCREATED")
	for _, s := range list {
		for _, im := range s.Images {
			p := "-"
			if im.Platform.OS != "" || im.Platform.Architecture != "" {
				p = im.Platform.OS + "/" + im.Platform.Architecture
			}
			if im.Platform.Variant != "" {
				p += "/" + im.Platform.Variant
			}
			if im.Error != "" {
				fmt.Fprintf(tw, "%s\t%s\t%s\t-\t%d\terror: %s\n", s.Tag, im.Digest, p, im.Size, im.Error)
				continue
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\n", s.Tag, im.Digest, p, im.Layers, im.Size, im.Created)
		}
	}
	return tw.Flush()
}

func runImageVerify(args []string, stdout, stderr io.Writer) error {
	l, dir, asJSON, err := layoutCommand("image verify", args, stdout, stderr)
	if err != nil {
		return err
	}
	rep, verr := l.Verify(context.Background(), layers.Limits{})
	if rep == nil {
		return verr
	}
	if asJSON {
		if rep.Issues == nil {
			rep.Issues = []string{}
		}
		if err := writeJSON(stdout, rep); err != nil {
			return err
		}
	} else {
		for _, issue := range rep.Issues {
			fmt.Fprintln(stdout, "error:", issue)
		}
		fmt.Fprintf(stdout, "%s, %s, %s (%d bytes) checked, %s\n", plural(rep.Tags, "tag"), plural(rep.Images, "image"), plural(rep.Blobs, "blob"), rep.Bytes, plural(len(rep.Issues), "problem"))
	}
	if verr != nil {
		return withCode(1, fmt.Errorf("%s: %d problems", dir, len(rep.Issues)))
	}
	return nil
}
