package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/imgtool/imgtool/qcow2"
)

// runInfo implements `imgtool info`: what qemu-img info prints.
func runInfo(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("info", "[--output human|json] [--backing-chain] [-f FMT] [-U] [--tls-verify=false] [--creds USER:PASS] [--authfile FILE] FILE|docker://REF", stdout, stderr)
	output := fs.String("output", "human", "output format: human or json")
	chain := fs.Bool("backing-chain", false, "show every image of the backing chain, top first")
	format := fs.StringP("format", "f", "", "image format (qcow2 or raw); probed when omitted")
	forceShare := fs.BoolP("force-share", "U", false, "open without taking image locks (allows reading an image another process writes)")
	backingRoot := backingRootFlag(fs)
	imgFlags := addImageFlags(fs)
	asJSON, err := parseOutputArgs(fs, args, output, 1, "expected one FILE, got %d arguments")
	if err != nil {
		return err
	}
	ropts, err := backingRootOptions(*backingRoot)
	if err != nil {
		return err
	}
	opts := ropts(qcow2.Options{Format: qcow2.Format(*format), ForceShare: *forceShare})
	var infos []*qcow2.ImageInfo
	if *chain {
		infos, err = imgFlags.chainInfo(context.Background(), fs.Arg(0), opts)
	} else {
		opts.NoBacking = true
		var img *qcow2.Image
		if img, err = imgFlags.open(context.Background(), fs.Arg(0), opts); err == nil {
			var info *qcow2.ImageInfo
			info, err = img.Info()
			img.Close()
			if err == nil {
				infos = append(infos, info)
			}
		}
	}
	if err != nil {
		return err
	}
	if asJSON {
		var v any = infos[0]
		if *chain {
			v = infos
		}
		b, err := json.MarshalIndent(v, "", "    ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(stdout, "%s\n", b)
		return err
	}
	for i, info := range infos {
		if i > 0 {
			fmt.Fprintln(stdout)
		}
		if err := info.WriteHuman(stdout); err != nil {
			return err
		}
	}
	return nil
}
