package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"

	"github.com/imgtool/imgtool/qcow2"
)

// runCommit implements `imgtool commit`, as qemu-img commit.
func runCommit(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("commit", "[-b BASE] [-d] [-t CACHE] [--backing-root DIR] [-p] [-q] FILE", stdout, stderr)
	base := fs.StringP("base", "b", "", "commit into this image of the backing chain (implies -d); default: the backing file")
	drop := fs.BoolP("drop", "d", false, "do not empty FILE after the commit")
	progress := fs.BoolP("progress", "p", false, "show progress on stderr")
	quiet := fs.BoolP("quiet", "q", false, "print nothing on success (no progress, even with -p, as qemu-img)")
	cache := fs.StringP("cache", "t", "writeback", "cache mode of the writes: writeback, unsafe (no fsync), none (O_DIRECT for aligned writes), writethrough, directsync")
	backingRoot := backingRootFlag(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("expected one FILE, got %d arguments", fs.NArg())
	}
	cm, check, err := chainWriteOptions(*cache, *backingRoot)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	update, finish := newProgress(*progress && !*quiet, stderr, "committing")
	err = qcow2.Commit(ctx, fs.Arg(0), qcow2.CommitOptions{Base: *base, Drop: *drop, Progress: update, Cache: cm, CheckReference: check})
	finish()
	if err != nil {
		return err
	}
	if !*quiet {
		fmt.Fprintln(stdout, "Image committed.")
	}
	return nil
}

// chainWriteOptions parses the -t CACHE and --backing-root DIR values of
// commit and rebase, which write into a backing chain: the cache mode of
// the writes and the check confining the chain's references to DIR (nil
// without one).
func chainWriteOptions(cache, backingRoot string) (qcow2.CacheMode, func(qcow2.Reference) error, error) {
	cm, err := qcow2.ParseCacheMode(cache)
	if err != nil {
		return cm, nil, usagef("-t: %v", err)
	}
	confine, err := backingRootOptions(backingRoot)
	if err != nil {
		return cm, nil, err
	}
	return cm, confine(qcow2.Options{}).CheckReference, nil
}
