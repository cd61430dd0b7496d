package main

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/imgtool/imgtool/qcow2"
)

// runSnapshot implements `imgtool snapshot`, as qemu-img snapshot.
func runSnapshot(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("snapshot", "-l|-c NAME|-a NAME|-d NAME [--output human|json] [-U] FILE", stderr)
	list := fs.BoolP("list", "l", false, "list the internal snapshots")
	create := fs.StringP("create", "c", "", "create snapshot NAME of the current state")
	apply := fs.StringP("apply", "a", "", "revert the image to snapshot NAME")
	del := fs.StringP("delete", "d", "", "delete snapshot NAME (or ID)")
	output := fs.String("output", "human", "output format for -l: human or json")
	forceShare := fs.BoolP("force-share", "U", false, "open without taking image locks (-l only)")
	asJSON, err := parseFlagsOutput(fs, args, output)
	if err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("expected one FILE, got %d arguments", fs.NArg())
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
		return qcow2.WriteSnapshotList(stdout, img.Snapshots())
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
