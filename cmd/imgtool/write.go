package main

import (
	"errors"
	"io"
	"os"
	"strconv"

	"github.com/imgtool/imgtool/internal/qemusize"

	"github.com/imgtool/imgtool/qcow2"
)

// runWrite implements `imgtool write`: write bytes (or zeroes, or a
// discard) into an image at a guest offset, for scripting.
func runWrite(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("write", "[--zero|--discard] FILE OFFSET [INPUT|-|LENGTH]", stdout, stderr)
	zero := fs.Bool("zero", false, "make LENGTH bytes at OFFSET read as zeros")
	discard := fs.Bool("discard", false, "discard LENGTH bytes at OFFSET (qcow2: whole clusters only; raw: a hole is punched)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *zero && *discard {
		return usagef("--zero and --discard exclude each other")
	}
	if fs.NArg() < 2 || fs.NArg() > 3 || ((*zero || *discard) && fs.NArg() != 3) {
		return usagef("expected FILE OFFSET [INPUT|-], or FILE OFFSET LENGTH with --zero/--discard")
	}
	path := fs.Arg(0)
	off, err := qemusize.Parse(fs.Arg(1))
	if err != nil {
		return usagef("OFFSET: %v", err)
	}
	img, err := qcow2.Open(path, qcow2.Options{Writable: true})
	if err != nil {
		return err
	}
	werr := func() error {
		if *zero || *discard {
			n, err := qemusize.Parse(fs.Arg(2))
			if err != nil {
				return usagef("LENGTH: %v", err)
			}
			if *zero {
				return img.WriteZeroes(off, n)
			}
			return img.Discard(off, n)
		}
		var in io.Reader = os.Stdin
		if fs.NArg() == 3 && fs.Arg(2) != "-" {
			f, err := os.Open(fs.Arg(2))
			if err != nil {
				return err
			}
			defer f.Close()
			in = f
		}
		// Bounded by the image: a write past the end fails there.
		n, err := io.CopyBuffer(io.NewOffsetWriter(img, off), in, make([]byte, 1<<20))
		if err != nil {
			return errors.Join(err, errors.New("wrote "+strconv.FormatInt(n, 10)+" bytes before the error"))
		}
		return nil
	}()
	if cerr := img.Close(); werr == nil {
		werr = cerr
	}
	return werr
}
