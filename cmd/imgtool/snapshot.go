package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/imgtool/imgtool/internal/qemusize"
	"github.com/imgtool/imgtool/qcow2"
)

// runSnapshot implements `imgtool snapshot`, as qemu-img snapshot.
func runSnapshot(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("snapshot", "-l|-c NAME|-a NAME|-d NAME [--output human|json] [-U] FILE", stdout, stderr)
	list := fs.BoolP("list", "l", false, "list the internal snapshots")
	create := fs.StringP("create", "c", "", "create snapshot NAME of the current state")
	apply := fs.StringP("apply", "a", "", "revert the image to snapshot NAME")
	del := fs.StringP("delete", "d", "", "delete snapshot NAME (or ID)")
	output := fs.String("output", "human", "output format for -l: human or json")
	forceShare := fs.BoolP("force-share", "U", false, "open without taking image locks (-l only)")
	asJSON, err := parseOutputArgs(fs, args, output, 1, "expected one FILE, got %d arguments")
	if err != nil {
		return err
	}
	n := 0
	for _, set := range []bool{*list, *create != "", *apply != "", *del != ""} {
		if set {
			n++
		}
	}
	if n != 1 {
		return usagef("give exactly one of -l, -c, -a, -d")
	}
	path := fs.Arg(0)
	if *list {
		img, err := qcow2.Open(path, qcow2.Options{NoBacking: true, ForceShare: *forceShare})
		if err != nil {
			return err
		}
		defer img.Close()
		if asJSON {
			info, err := img.Info()
			if err != nil {
				return err
			}
			snaps := info.Snapshots
			if snaps == nil {
				snaps = []qcow2.SnapshotInfo{}
			}
			b, err := json.MarshalIndent(snaps, "", "    ")
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(stdout, "%s\n", b)
			return err
		}
		return writeSnapshotList(stdout, img.Snapshots())
	}
	img, err := qcow2.Open(path, qcow2.Options{Format: qcow2.FormatQcow2, NoBacking: true, Writable: true})
	if err != nil {
		return err
	}
	switch {
	case *create != "":
		err = img.CreateSnapshot(*create)
	case *apply != "":
		err = img.ApplySnapshot(*apply)
	default:
		err = img.DeleteSnapshot(*del)
	}
	if cerr := img.Close(); err == nil {
		err = cerr
	}
	return err
}

// writeSnapshotList prints snapshots the way qemu-img snapshot -l does;
// an image without snapshots prints nothing, as there.
func writeSnapshotList(w io.Writer, snaps []qcow2.Snapshot) error {
	if len(snaps) == 0 {
		return nil
	}
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
