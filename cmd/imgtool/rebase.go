package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"

	"github.com/imgtool/imgtool/qcow2"
)

// runRebase implements `imgtool rebase`, as qemu-img rebase.
func runRebase(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("rebase", "[-f FMT] [-u] -b NEW [-F FMT] [-c] [-t CACHE] [--backing-root DIR] [-p] FILE", stdout, stderr)
	backing := fs.StringP("backing", "b", "", `new backing file (relative names are relative to FILE's directory); "" flattens FILE into a standalone image`)
	backingFmt := fs.StringP("backing-format", "F", "", "format of the new backing file (qcow2 or raw); probed when omitted")
	unsafe := fs.BoolP("unsafe", "u", false, "only rewrite the backing reference; copy nothing")
	compress := fs.BoolP("compress", "c", false, "compress the clusters copied into FILE")
	progress := fs.BoolP("progress", "p", false, "show progress on stderr")
	format := fs.StringP("format", "f", "", "format of FILE: qcow2 (the only format with a backing file); probed when omitted")
	cache := fs.StringP("cache", "t", "writeback", "cache mode of the writes to FILE: writeback, unsafe (no fsync), none (O_DIRECT for aligned writes), writethrough, directsync")
	quiet := fs.BoolP("quiet", "q", false, "quiet: no progress, even with -p (as qemu-img)")
	backingRoot := backingRootFlag(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("expected one FILE, got %d arguments", fs.NArg())
	}
	if !fs.Changed("backing") {
		return usagef(`-b NEW is required (use -b "" to flatten)`)
	}
	switch *format {
	case "", "qcow2":
	case "raw":
		return fmt.Errorf("rebase %s: -f raw: a raw image has no backing file to change", fs.Arg(0))
	default:
		return usagef("-f: unknown format %q (qcow2 and raw are supported)", *format)
	}
	cm, check, err := chainWriteOptions(*cache, *backingRoot)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	update, finish := newProgress(*progress && !*quiet, stderr, "rebasing")
	err = qcow2.Rebase(ctx, fs.Arg(0), qcow2.RebaseOptions{
		Backing:        *backing,
		BackingFormat:  qcow2.Format(*backingFmt),
		Unsafe:         *unsafe,
		Compress:       *compress,
		Progress:       update,
		Cache:          cm,
		CheckReference: check,
	})
	finish()
	return err
}
