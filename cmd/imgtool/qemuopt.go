package main

// The option syntax qemu-img users type: the -o key=value lists of
// create, convert and measure, and resize's [+|-]SIZE argument. It is the
// command line's, not the qcow2 library's: a library caller fills
// qcow2.CreateOptions directly.

import (
	"io"

	"fmt"
	"github.com/spf13/pflag"
	"math"
	"strconv"
	"strings"

	"github.com/imgtool/imgtool/internal/qemusize"
	"github.com/imgtool/imgtool/qcow2"
)

// resizeTarget returns the new size for a qemu-img resize argument:
// "SIZE", "+SIZE" or "-SIZE" relative to cur.
func resizeTarget(cur int64, spec string) (int64, error) {
	switch {
	case strings.HasPrefix(spec, "+"):
		d, err := qemusize.Parse(spec[1:])
		if err != nil {
			return 0, err
		}
		if d > math.MaxInt64-cur {
			return 0, fmt.Errorf("size %q overflows", spec)
		}
		return cur + d, nil
	case strings.HasPrefix(spec, "-"):
		d, err := qemusize.Parse(spec[1:])
		if err != nil {
			return 0, err
		}
		if d > cur {
			return 0, fmt.Errorf("cannot shrink %d bytes by %d", cur, d)
		}
		return cur - d, nil
	}
	return qemusize.Parse(spec)
}

// parseCreateOption applies one qemu-img -o key=value to opts. Keys:
// size, compat, cluster_size, extended_l2, compression_type,
// lazy_refcounts, refcount_bits, preallocation, backing_file, backing_fmt.
func parseCreateOption(opts *qcow2.CreateOptions, key, value string) error {
	onOff := func() (bool, error) {
		switch strings.ToLower(value) {
		case "on", "true", "yes", "1":
			return true, nil
		case "off", "false", "no", "0":
			return false, nil
		}
		return false, fmt.Errorf("option %s: %q is not on or off", key, value)
	}
	var err error
	switch key {
	case "size":
		opts.Size, err = qemusize.Parse(value)
	case "compat":
		opts.Compat = value
	case "cluster_size":
		opts.ClusterSize, err = qemusize.Parse(value)
	case "extended_l2":
		opts.ExtendedL2, err = onOff()
	case "compression_type":
		opts.CompressionType = value
	case "lazy_refcounts":
		opts.LazyRefcounts, err = onOff()
	case "refcount_bits":
		opts.RefcountBits, err = strconv.Atoi(value)
	case "preallocation":
		opts.Preallocation = value
	case "backing_file":
		opts.BackingFile = value
	case "backing_fmt":
		opts.BackingFormat = qcow2.Format(value)
	default:
		return fmt.Errorf("unknown create option %q", key)
	}
	if err != nil {
		return fmt.Errorf("option %s: %w", key, err)
	}
	return nil
}

// parseCreateOptions applies a comma-separated qemu-img -o list
// ("compat=1.1,cluster_size=4k") to opts.
func parseCreateOptions(opts *qcow2.CreateOptions, list string) error {
	for _, kv := range strings.Split(list, ",") {
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			if k == "extended_l2" || k == "lazy_refcounts" {
				v = "on"
			} else {
				return fmt.Errorf("create option %q has no value", kv)
			}
		}
		if err := parseCreateOption(opts, k, v); err != nil {
			return err
		}
	}
	return nil
}

// createOptionsHelp prints the -o options imgtool takes for format, as
// `qemu-img create -f FMT -o help` lists them, when one of the -o lists
// asks for them ("help" or "?"), and then returns pflag.ErrHelp (exit 0).
func createOptionsHelp(lists []string, format string, stdout io.Writer) error {
	asked := false
	for _, l := range lists {
		for _, kv := range strings.Split(l, ",") {
			asked = asked || kv == "help" || kv == "?"
		}
	}
	if !asked {
		return nil
	}
	type opt struct{ name, help string }
	var opts []opt
	switch format {
	case "qcow2":
		opts = []opt{
			{"backing_file=<str>", "File name of a base image"},
			{"backing_fmt=<str>", "Image format of the base image"},
			{"cluster_size=<size>", "qcow2 cluster size"},
			{"compat=<str>", "Compatibility level (v2 [0.10] or v3 [1.1])"},
			{"compression_type=<str>", "Compression method used for image cluster compression (zlib, zstd)"},
			{"extended_l2=<bool (on/off)>", "Extended L2 tables"},
			{"lazy_refcounts=<bool (on/off)>", "Postpone refcount updates"},
			{"preallocation=<str>", "Preallocation mode (allowed values: off, metadata, falloc, full)"},
			{"refcount_bits=<num>", "Width of a reference count entry in bits"},
			{"size=<size>", "Virtual disk size"},
		}
	case "raw":
		opts = []opt{
			{"preallocation=<str>", "Preallocation mode (allowed values: off, falloc, full)"},
			{"size=<size>", "Virtual disk size"},
		}
	default:
		return usagef("unknown format %q (raw and qcow2 are supported)", format)
	}
	fmt.Fprintf(stdout, "Supported %s options:\n", format)
	for _, o := range opts {
		fmt.Fprintf(stdout, "  %-22s - %s\n", o.name, o.help)
	}
	return pflag.ErrHelp
}
