package qcow2

import (
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/imgtool/imgtool/internal/qemusize"
)

// ResizeTarget returns the new size for a qemu-img resize argument:
// "SIZE", "+SIZE" or "-SIZE" relative to cur.
func ResizeTarget(cur int64, spec string) (int64, error) {
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

// ParseCreateOption applies one qemu-img -o key=value to opts. Keys:
// size, compat, cluster_size, extended_l2, compression_type,
// lazy_refcounts, refcount_bits, preallocation, backing_file, backing_fmt.
func ParseCreateOption(opts *CreateOptions, key, value string) error {
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
		opts.BackingFormat = Format(value)
	default:
		return fmt.Errorf("unknown create option %q", key)
	}
	if err != nil {
		return fmt.Errorf("option %s: %w", key, err)
	}
	return nil
}

// ParseCreateOptions applies a comma-separated qemu-img -o list
// ("compat=1.1,cluster_size=4k") to opts.
func ParseCreateOptions(opts *CreateOptions, list string) error {
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
		if err := ParseCreateOption(opts, k, v); err != nil {
			return err
		}
	}
	return nil
}

// WriteSnapshotList prints snapshots the way qemu-img snapshot -l does.
func WriteSnapshotList(w io.Writer, snaps []Snapshot) error {
	var b strings.Builder
	b.WriteString("Snapshot list:\n")
	fmt.Fprintf(&b, "%-10s%-17s%8s%20s%13s%11s\n", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT")
	for _, s := range snaps {
		date := time.Unix(int64(s.DateSec), 0).Format("2006-01-02 15:04:05")
		secs := int64(s.VMClockNsec / 1e9)
		clock := fmt.Sprintf("%02d:%02d:%02d.%03d", secs/3600, secs/60%60, secs%60, s.VMClockNsec%1e9/1e6)
		icount := ""
		if s.Icount >= 0 {
			icount = strconv.FormatInt(s.Icount, 10)
		}
		fmt.Fprintf(&b, "%-9s %-16s %8s%20s%13s%11s\n", s.ID, s.Name, qemusize.String(int64(s.VMStateSize)), date, clock, icount)
	}
	_, err := io.WriteString(w, b.String())
	return err
}
