package main

import (
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/imgtool/imgtool/internal/qemusize"

	"github.com/imgtool/imgtool/dedup"
	"github.com/imgtool/imgtool/qcow2"
)

const dedupUsage = `Usage: imgtool dedup SUBCOMMAND [OPTIONS] ARGS...

Subcommands:
  scan      PATH...  report zero, unique and duplicate data of images
                     (qcow2/raw, whole chains) and OCI image layouts
  rebase    --base-out BASE.qcow2 IMG...
                     build a base of the clusters most images share and
                     rewrite each image as a thin overlay on it
  sparsify  IMG      drop the clusters of an image that repeat its backing
                     or read as zeros

See also 'imgtool store dedup' for the layer store.
`

// runDedup dispatches imgtool dedup scan|rebase|sparsify.
func runDedup(args []string, stdout, stderr io.Writer) error {
	return dispatch(dedupUsage, args, stdout, stderr,
		subcommand{[]string{"scan"}, runDedupScan},
		subcommand{[]string{"rebase"}, runDedupRebase},
		subcommand{[]string{"sparsify"}, runDedupSparsify},
	)
}

// dedupPct formats part as a percentage of whole.
func dedupPct(part, whole int64) string {
	if whole == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f%%", 100*float64(part)/float64(whole))
}

func runDedupScan(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("dedup scan", "[--output human|json] [--chunk-size SIZE] [-p] PATH...", stdout, stderr)
	output := fs.String("output", "human", "output format: human or json")
	chunk := fs.String("chunk-size", "", "image chunk size (default: the largest cluster size, 64 KiB for raw)")
	forceShare := fs.BoolP("force-share", "U", false, "open images without taking image locks")
	progress := progressFlags(fs, "show progress on stderr")
	asJSON, err := parseFlagsOutput(fs, args, output)
	if err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return usagef("want at least one PATH")
	}
	opts := dedup.ScanOptions{Image: qcow2.Options{ForceShare: *forceShare}}
	if *chunk != "" {
		if opts.ChunkSize, err = qemusize.Parse(*chunk); err != nil {
			return usagef("--chunk-size: %v", err)
		}
	}
	update, finish := newProgress(*progress, stderr, "scanning")
	opts.Progress = update
	ctx, stop := interruptible()
	defer stop()
	rep, err := dedup.Scan(ctx, fs.Args(), opts)
	finish()
	if err != nil {
		return err
	}
	if asJSON {
		return writeJSON(stdout, rep)
	}
	if r := rep.Images; r != nil {
		fmt.Fprintf(stdout, "images: %d, %s chunks, %d distinct (index ~%s)\n", len(r.Inputs), storeBytes(r.ChunkSize), r.Chunks, storeBytes(r.IndexBytes))
		tw := tabwriter.NewWriter(stdout, 0, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "IMAGE\tFORMAT\tSIZE\tZERO\tDATA\tDUP INSIDE\tSHARED W/ EARLIER\tNEW")
		for _, in := range r.Inputs {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", in.Path, in.Format, storeBytes(in.TotalBytes), storeBytes(in.ZeroBytes), storeBytes(in.DataBytes),
				storeBytes(in.InternalDuplicateBytes), storeBytes(in.SharedBytes), storeBytes(in.NewBytes))
		}
		tw.Flush()
		fmt.Fprintf(stdout, "total %s: zero %s (%s), unique %s (%s), duplicate %s (%s: %s inside images, %s across)\n",
			storeBytes(r.TotalBytes), storeBytes(r.ZeroBytes), dedupPct(r.ZeroBytes, r.TotalBytes),
			storeBytes(r.UniqueBytes), dedupPct(r.UniqueBytes, r.TotalBytes),
			storeBytes(r.DuplicateBytes), dedupPct(r.DuplicateBytes, r.TotalBytes),
			storeBytes(r.InternalDuplicateBytes), storeBytes(r.CrossDuplicateBytes))
		fmt.Fprintf(stdout, "dedup would save %s of data\n", storeBytes(r.SavedBytes))
	}
	if r := rep.Layouts; r != nil {
		dedupPrintLayouts(stdout, r)
	}
	return nil
}

func runDedupRebase(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("dedup rebase", "--base-out BASE.qcow2 [--min-share K] [-p] IMG...", stdout, stderr)
	baseOut := fs.String("base-out", "", "the shared base image to write (reused as it is if it exists)")
	minShare := fs.Int("min-share", 0, "how many images must share a cluster for it to go into the base (default: a majority)")
	clusterSize := fs.String("cluster-size", "", "cluster size of the base and overlays (default: the images' largest, else 64 KiB)")
	forceShare := fs.BoolP("force-share", "U", false, "open images without taking image locks")
	output := fs.String("output", "human", "output format: human or json")
	progress := progressFlags(fs, "show progress on stderr")
	asJSON, err := parseFlagsOutput(fs, args, output)
	if err != nil {
		return err
	}
	if *baseOut == "" {
		return usagef("--base-out is required")
	}
	if fs.NArg() == 0 {
		return usagef("want at least one IMG")
	}
	opts := dedup.RebaseOptions{MinShare: *minShare, Image: qcow2.Options{ForceShare: *forceShare}}
	if *clusterSize != "" {
		if opts.ClusterSize, err = qemusize.Parse(*clusterSize); err != nil {
			return usagef("--cluster-size: %v", err)
		}
	}
	update, finish := newProgress(*progress, stderr, "rebasing")
	opts.Progress = update
	ctx, stop := interruptible()
	defer stop()
	res, err := dedup.Rebase(ctx, *baseOut, fs.Args(), opts)
	finish()
	if err != nil {
		return err
	}
	if asJSON {
		return writeJSON(stdout, res)
	}
	how := "built"
	if res.BaseReused {
		how = "reused"
	}
	fmt.Fprintf(stdout, "base %s (%s): %s\n", res.Base, how, storeBytes(allocatedOrData(res)))
	for _, ri := range res.Images {
		fmt.Fprintf(stdout, "%s: %s, %s -> %s\n", ri.Path, ri.Status, storeBytes(ri.BeforeBytes), storeBytes(ri.AfterBytes))
	}
	saved := "saved " + storeBytes(res.SavedBytes)
	if res.SavedBytes < 0 {
		saved = "grew by " + storeBytes(-res.SavedBytes) + " (the shared base holds more than the images had in common)"
	}
	fmt.Fprintf(stdout, "total %s -> %s (base included), %s\n", storeBytes(res.BeforeBytes), storeBytes(res.AfterBytes), saved)
	return nil
}

// allocatedOrData is the base's share of the result: what the images
// after do not account for.
func allocatedOrData(res *dedup.RebaseResult) int64 {
	n := res.AfterBytes
	for _, ri := range res.Images {
		n -= ri.AfterBytes
	}
	return n
}

func runDedupSparsify(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("dedup sparsify", "[-p] IMG", stdout, stderr)
	output := fs.String("output", "human", "output format: human or json")
	progress := progressFlags(fs, "show progress on stderr")
	asJSON, err := parseOutputArgs(fs, args, output, 1, "want one IMG, got %d arguments")
	if err != nil {
		return err
	}
	update, finish := newProgress(*progress, stderr, "sparsifying")
	ctx, stop := interruptible()
	defer stop()
	res, err := dedup.Sparsify(ctx, fs.Arg(0), dedup.SparsifyOptions{Progress: update})
	finish()
	if err != nil {
		return err
	}
	if asJSON {
		return writeJSON(stdout, res)
	}
	fmt.Fprintf(stdout, "%s: %s -> %s, saved %s (%s of data kept)\n", res.Path, storeBytes(res.BeforeBytes), storeBytes(res.AfterBytes), storeBytes(res.SavedBytes), storeBytes(res.DataBytes))
	return nil
}

func dedupPrintLayouts(w io.Writer, r *dedup.LayoutReport) {
	fmt.Fprintf(w, "layouts: %d, images: %d, layers: %d distinct of %d references\n", r.Layouts, r.Images, r.Layers, r.LayerRefs)
	fmt.Fprintf(w, "files: %d (%s), %d duplicates by content (%s)\n", r.Files, storeBytes(r.FileBytes), r.DuplicateFiles, storeBytes(r.DuplicateFileBytes))
	fmt.Fprintf(w, "layer tars: %s in %d distinct FastCDC chunks: zero %s, unique %s, duplicate %s (%s)\n",
		storeBytes(r.TotalBytes), r.Chunks, storeBytes(r.ZeroBytes), storeBytes(r.UniqueBytes), storeBytes(r.DuplicateBytes), dedupPct(r.DuplicateBytes, r.TotalBytes))
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "LAYER\tIMAGES\tTAR\tFILES\tSHARED CHUNKS\tDUP FILES")
	for _, in := range r.Inputs {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%s\t%s\n", in.Digest.Encoded()[:12], in.Images, storeBytes(in.TarBytes), in.Files, storeBytes(in.SharedChunkBytes), storeBytes(in.DuplicateFileBytes))
	}
	tw.Flush()
	if len(r.TopDuplicates) > 0 {
		fmt.Fprintln(w, "most duplicated files:")
		for _, d := range r.TopDuplicates {
			fmt.Fprintf(w, "  %s x %d  %s\n", storeBytes(d.Size), d.Copies, d.Example)
		}
	}
}

// runStoreDedup implements `imgtool store dedup` (dispatched from store.go).
func runStoreDedup(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("store dedup", "[--store DIR] [--method hardlink|reflink|auto] [--dry-run] [-p]", stdout, stderr)
	store := rootfsStoreFlag(fs)
	method := fs.String("method", "hardlink", "hardlink (files must match in metadata too), reflink (FICLONE, keeps each file's metadata) or auto (reflink where supported)")
	minSize := fs.String("min-size", "", "smallest file to consider (default 1 byte)")
	dry := fs.BoolP("dry-run", "n", false, "report what would be shared, change nothing")
	output := fs.String("output", "human", "output format: human or json")
	progress := progressFlags(fs, "show progress on stderr")
	asJSON, err := parseOutputNoArgs(fs, args, output)
	if err != nil {
		return err
	}
	opts := dedup.StoreDedupOptions{Method: dedup.LinkMethod(*method), DryRun: *dry}
	if *minSize != "" {
		if opts.MinSize, err = qemusize.Parse(*minSize); err != nil {
			return usagef("--min-size: %v", err)
		}
	}
	s, err := rootfsOpenStore(*store)
	if err != nil {
		return err
	}
	update, finish := newProgress(*progress, stderr, "hashing")
	opts.Progress = update
	ctx, stop := interruptible()
	defer stop()
	res, err := dedup.StoreDedup(ctx, s, opts)
	finish()
	if err != nil {
		return err
	}
	if asJSON {
		return writeJSON(stdout, res)
	}
	verb := "linked"
	if *dry {
		verb = "would link"
	}
	fmt.Fprintf(stdout, "%s, %s (%d hashed): %s %s (%d reflinked), saved %s; %s kept apart by metadata\n",
		plural(res.Layers, "layer"), plural(res.Files, "file"), res.Hashed, verb, plural(res.Linked, "file"), res.Reflinked, storeBytes(res.SavedBytes), plural(res.KeptApart, "identical content"))
	return nil
}
