package main

import (
	"fmt"
	"io"

	"github.com/imgtool/imgtool/qcow2"
)

// runResize implements `imgtool resize`, as qemu-img resize.
func runResize(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("resize", "[--shrink] [-f FMT] [-q] FILE [+|-]SIZE", stdout, stderr)
	shrink := fs.Bool("shrink", false, "allow shrinking (only while nothing is allocated past the new size)")
	format := fs.StringP("format", "f", "", "image format; probed when omitted")
	quiet := fs.BoolP("quiet", "q", false, "print nothing on success")
	// "-1G" is a size, not a flag: keep pflag from parsing it.
	if n := len(args); n > 0 && len(args[n-1]) > 1 && args[n-1][0] == '-' && (args[n-1][1] >= '0' && args[n-1][1] <= '9' || args[n-1][1] == '.') {
		args = append(append(append([]string(nil), args[:n-1]...), "--"), args[n-1])
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		return usagef("expected FILE and SIZE, got %d arguments", fs.NArg())
	}
	path := fs.Arg(0)
	probe, err := qcow2.Open(path, qcow2.Options{Format: qcow2.Format(*format), NoBacking: true, ForceShare: true})
	if err != nil {
		return err
	}
	cur := probe.Size()
	probe.Close()
	size, err := resizeTarget(cur, fs.Arg(1))
	if err != nil {
		return usagef("SIZE: %v", err)
	}
	if err := qcow2.ResizeFile(path, size, *shrink, qcow2.Options{Format: qcow2.Format(*format)}); err != nil {
		return err
	}
	if !*quiet {
		fmt.Fprintln(stdout, "Image resized.")
	}
	return nil
}
