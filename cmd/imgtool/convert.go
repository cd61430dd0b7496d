package main

import (
	"context"
	"io"
	"os"
	"os/signal"

	"github.com/imgtool/imgtool/internal/qemusize"

	"github.com/imgtool/imgtool/qcow2"
)

// runConvert implements `imgtool convert`: copy the guest content of an
// image (chain) into a new image, as qemu-img convert.
func runConvert(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("convert", "[-f FMT] [-O qcow2|raw] [-c] [-o k=v,...] [-B BACKING [-F FMT]] [-S SIZE] [-C] [-t CACHE] [-n] [-W] [-m N] [-p] [-U] [--target-is-zero] [--tls-verify=false] [--creds USER:PASS] [--authfile FILE] SRC|docker://REF DST", stdout, stderr)
	format := fs.StringP("format", "f", "", "source format (qcow2 or raw); probed when omitted")
	outFormat := fs.StringP("output-format", "O", "raw", "output format: raw or qcow2")
	compress := fs.BoolP("compress", "c", false, "compress data clusters (qcow2; compression_type=zlib or zstd)")
	options := fs.StringArrayP("options", "o", nil, "qemu-img create options for the output: compat, cluster_size, extended_l2, compression_type, lazy_refcounts, refcount_bits, preallocation, backing_file, backing_fmt (-o help lists them)")
	backing := fs.StringP("backing", "B", "", "make DST an overlay of this file, storing only clusters that differ from it (relative names are relative to DST's directory)")
	backingFmt := fs.StringP("backing-format", "F", "", "format of the -B file (qcow2 or raw); probed when omitted")
	sparse := fs.StringP("sparse-size", "S", "4k", "aligned zero runs of this size stay sparse in raw output (qcow2 output: per cluster); 0 allocates everything: qcow2 writes every cluster, raw reserves its zero runs with fallocate (they read as zeros and qemu-img map shows them as zero) where qemu-img writes them")
	copyOffload := fs.BoolP("copy-offload", "C", false, "copy data runs into raw output with copy_file_range (in the kernel; reflinks where the file system can), without looking for zeros in them")
	progress := fs.BoolP("progress", "p", false, "show progress on stderr")
	quiet := fs.BoolP("quiet", "q", false, "quiet: no progress, even with -p (as qemu-img)")
	forceShare := fs.BoolP("force-share", "U", false, "open the source without taking image locks")
	backingRoot := backingRootFlag(fs)
	imgFlags := addImageFlags(fs)
	targetZero := fs.Bool("target-is-zero", false, "assume the target reads as zeros (always true for the new file convert creates; with -n, zeros are not written)")
	cache := fs.StringP("cache", "t", "writeback", "output cache mode: writeback (fsync, then put in place), unsafe (no fsync), none (O_DIRECT for aligned writes; refused where the filesystem has no O_DIRECT), writethrough, directsync")
	noCreate := fs.BoolP("no-create", "n", false, "DST exists (of format -O): write into it instead of creating it; it must be at least as large as SRC")
	fs.BoolP("out-of-order", "W", false, "allow out-of-order writes (accepted; imgtool always may)")
	parallel := fs.IntP("parallel", "m", 0, "number of parallel workers, 1 to 16 (default: twice the CPUs)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := createOptionsHelp(*options, *outFormat, stdout); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		return usagef("expected SRC and DST, got %d arguments", fs.NArg())
	}
	opts := qcow2.ConvertOptions{Compress: *compress}
	switch *outFormat {
	case "raw", "qcow2":
		opts.Create.Format = qcow2.Format(*outFormat)
	default:
		return usagef("unknown output format %q (raw and qcow2 are supported)", *outFormat)
	}
	for _, o := range *options {
		if err := parseCreateOptions(&opts.Create, o); err != nil {
			return usagef("-o: %v", err)
		}
	}
	if *backing != "" {
		opts.Create.BackingFile = *backing
	}
	if *backingFmt != "" {
		opts.Create.BackingFormat = qcow2.Format(*backingFmt)
	}
	if opts.Create.BackingFile != "" && *targetZero {
		return usagef("--target-is-zero cannot be used with a backing file")
	}
	var err error
	if opts.Cache, err = qcow2.ParseCacheMode(*cache); err != nil {
		return usagef("-t: %v", err)
	}
	if fs.Changed("parallel") && (*parallel < 1 || *parallel > 16) {
		return usagef("-m: invalid number of coroutines %d: allowed is between 1 and 16", *parallel)
	}
	opts.Workers = *parallel
	opts.NoCreate = *noCreate
	opts.TargetIsZero = *targetZero && *noCreate
	s, err := qemusize.Parse(*sparse)
	if err != nil {
		return usagef("-S: %v", err)
	}
	if s%512 != 0 || s > 16<<20 {
		// qemu-img's limits and words.
		return usagef("-S %s: Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 up to 16777216. Select 0 to disable sparse detection (fully allocates output).", *sparse)
	}
	if *copyOffload && *compress {
		return usagef("cannot enable copy offloading when -c is used")
	}
	if *copyOffload && fs.Changed("sparse-size") {
		return usagef("cannot enable copy offloading when -S is used")
	}
	opts.CopyOffload = *copyOffload
	opts.NoSparse = s == 0
	opts.SparseSize = s
	ropts, err := backingRootOptions(*backingRoot)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	src, err := imgFlags.open(ctx, fs.Arg(0), ropts(qcow2.Options{Format: qcow2.Format(*format), ForceShare: *forceShare}))
	if err != nil {
		return err
	}
	defer src.Close()
	update, finish := newProgress(*progress && !*quiet, stderr, "converting")
	opts.Progress = update
	err = qcow2.Convert(ctx, src, fs.Arg(1), opts)
	finish()
	return err
}
