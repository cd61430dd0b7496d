package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/imgtool/imgtool/qcow2"
)

// runCheck implements `imgtool check`, with qemu-img check's exit codes:
// 0 clean, 1 check not completed, 2 corruptions, 3 leaks only, 63 format
// without checks.
func runCheck(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("check", "[-r leaks|all] [--output human|json] [-U] FILE", stdout, stderr)
	repair := fs.StringP("repair", "r", "", "repair: leaks (lower refcounts that are too high) or all (also corruptions)")
	output := fs.String("output", "human", "output format: human or json")
	forceShare := fs.BoolP("force-share", "U", false, "open without taking image locks")
	backingRoot := backingRootFlag(fs)
	format := fs.StringP("format", "f", "", "image format; probed when omitted")
	asJSON, err := parseOutputArgs(fs, args, output, 1, "expected one FILE, got %d arguments")
	if err != nil {
		return err
	}
	mode := qcow2.RepairNone
	switch *repair {
	case "":
	case "leaks":
		mode = qcow2.RepairLeaks
	case "all":
		mode = qcow2.RepairAll
	default:
		return usagef("-r must be leaks or all, not %q", *repair)
	}
	path := fs.Arg(0)
	if *format != "qcow2" {
		probe, err := qcow2.Open(path, qcow2.Options{Format: qcow2.Format(*format), NoBacking: true, ForceShare: true})
		if err != nil {
			return withCode(1, err)
		}
		f := probe.Format()
		probe.Close()
		if f != qcow2.FormatQcow2 {
			return withCode(63, fmt.Errorf("%s: this image format (%s) does not support checks", path, f))
		}
	}
	ropts, err := backingRootOptions(*backingRoot)
	if err != nil {
		return err
	}
	res, err := qcow2.CheckFile(path, mode, ropts(qcow2.Options{ForceShare: *forceShare}))
	if err != nil {
		if errors.Is(err, qcow2.ErrUnsupportedFeature) {
			return withCode(63, err)
		}
		return withCode(1, err)
	}
	for _, m := range res.Messages {
		fmt.Fprintln(stderr, m)
	}
	if asJSON {
		b, err := json.MarshalIndent(res, "", "    ")
		if err != nil {
			return withCode(1, err)
		}
		fmt.Fprintf(stdout, "%s\n", b)
	} else {
		writeCheckHuman(stdout, res)
	}
	if code := res.ExitCode(); code != 0 {
		return withCode(code, nil)
	}
	return nil
}

// writeCheckHuman prints a result the way qemu-img check does.
func writeCheckHuman(w io.Writer, r *qcow2.CheckResult) {
	if r.CorruptionsFixed > 0 || r.LeaksFixed > 0 {
		fmt.Fprintf(w, "The following inconsistencies were found and repaired:\n\n    %d leaked clusters\n    %d corruptions\n\nDouble checking the fixed image now...\n", r.LeaksFixed, r.CorruptionsFixed)
	}
	switch {
	case r.Corruptions == 0 && r.Leaks == 0 && r.CheckErrors == 0:
		fmt.Fprintln(w, "No errors were found on the image.")
	default:
		if r.Corruptions > 0 {
			fmt.Fprintf(w, "\n%d errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n", r.Corruptions)
		}
		if r.Leaks > 0 {
			fmt.Fprintf(w, "\n%d leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n", r.Leaks)
		}
		if r.CheckErrors > 0 {
			fmt.Fprintf(w, "\n%d internal errors have occurred during the check.\n", r.CheckErrors)
		}
	}
	if r.TotalClusters > 0 && r.AllocatedClusters > 0 {
		pct := func(n int64) float64 { return 100 * float64(n) / float64(r.AllocatedClusters) }
		fmt.Fprintf(w, "%d/%d = %.2f%% allocated, %.2f%% fragmented, %.2f%% compressed clusters\n",
			r.AllocatedClusters, r.TotalClusters, 100*float64(r.AllocatedClusters)/float64(r.TotalClusters),
			pct(r.FragmentedClusters), pct(r.CompressedClusters))
	}
	if r.ImageEndOffset > 0 {
		fmt.Fprintf(w, "Image end offset: %d\n", r.ImageEndOffset)
	}
}
