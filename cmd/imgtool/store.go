package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/imgtool/imgtool/overlay"
	"github.com/spf13/pflag"
)

const storeUsage = `Usage: imgtool store SUBCOMMAND [OPTIONS] ARGS...

Subcommands:
  ls      list the store's layers and containers with their sizes
  gc      remove the layers that no container and no image pin needs
  unpack  DIR:TAG
          unpack an image's missing layers into the store (and pin it)
  dedup   share identical files across layers (hard links or reflinks)

Every subcommand takes --store DIR (default $XDG_DATA_HOME/imgtool/store,
else ~/.local/share/imgtool/store).

Roots of gc: every container (mounted or not; 'rootfs umount --rm' drops
one) and every image pin. Mounting or unpacking an image pins it; a pin
keeps its layers while its DIR:TAG still names the same manifest, and is
dropped once the layout or tag is gone or the tag moved. 'gc --all'
ignores the pins.
`

// runStore dispatches imgtool store ls|gc|unpack.
func runStore(args []string, stdout, stderr io.Writer) error {
	return dispatch(storeUsage, args, stdout, stderr,
		subcommand{[]string{"ls", "list"}, runStoreLs},
		subcommand{[]string{"gc"}, runStoreGC},
		subcommand{[]string{"unpack"}, runStoreUnpack},
		subcommand{[]string{"dedup"}, runStoreDedup},
	)
}

// openStoreNoArgs parses the flags of a store command that takes no
// arguments (store ls, store gc) and opens its --store, *store.
func openStoreNoArgs(fs *pflag.FlagSet, args []string, output, store *string) (*overlay.Store, bool, error) {
	asJSON, err := parseOutputNoArgs(fs, args, output)
	if err != nil {
		return nil, false, err
	}
	s, err := rootfsOpenStore(*store)
	return s, asJSON, err
}

func runStoreLs(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("store ls", "[--store DIR] [--output human|json]", stdout, stderr)
	store := rootfsStoreFlag(fs)
	output := fs.String("output", "human", "output format: human or json")
	s, asJSON, err := openStoreNoArgs(fs, args, output, store)
	if err != nil {
		return err
	}
	u, err := s.Usage(context.Background())
	if err != nil {
		return err
	}
	if asJSON {
		return writeJSON(stdout, u)
	}
	fmt.Fprintf(stdout, "store %s: %s (%s), %s\n\n", u.Dir, plural(len(u.Layers), "layer"), storeBytes(u.LayerBytes), plural(len(u.Containers), "container"))
	tw := tabwriter.NewWriter(stdout, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "LAYER (CHAIN ID)\tSIZE\tCONTAINERS\tIMAGES")
	for _, l := range u.Layers {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\n", l.ChainID.Encoded()[:12], storeBytes(l.Size), storeDash(strings.Join(l.Containers, ",")), len(l.Images))
	}
	tw.Flush()
	fmt.Fprintln(stdout)
	tw = tabwriter.NewWriter(stdout, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "CONTAINER\tSTATE\tMODE\tLAYERS\tSIZE\tIMAGE\tTARGET\tUPPER DIR")
	for _, c := range u.Containers {
		state := "unmounted"
		if c.Mounted {
			state = "mounted"
		}
		mode := c.Mode
		if c.ReadOnly {
			mode += ",ro"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", c.Name, state, mode, c.Layers, storeBytes(c.Size), c.Image, c.Target, storeDash(c.UpperDir))
	}
	return tw.Flush()
}

func storeDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// storeBytes formats n with a binary unit.
func storeBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func runStoreGC(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("store gc", "[--store DIR] [--all] [--dry-run]", stdout, stderr)
	store := rootfsStoreFlag(fs)
	all := fs.Bool("all", false, "ignore image pins: keep only the layers of containers")
	dry := fs.BoolP("dry-run", "n", false, "report what would be removed, remove nothing")
	output := fs.String("output", "human", "output format: human or json")
	s, asJSON, err := openStoreNoArgs(fs, args, output, store)
	if err != nil {
		return err
	}
	res, err := s.GC(context.Background(), overlay.GCOptions{IgnorePins: *all, DryRun: *dry})
	if err != nil {
		return err
	}
	if asJSON {
		return writeJSON(stdout, res)
	}
	verb := "removed"
	if *dry {
		verb = "would remove"
	}
	for _, id := range res.RemovedLayers {
		fmt.Fprintf(stdout, "%s layer %s\n", verb, id.Encoded()[:12])
	}
	for _, p := range res.DroppedPins {
		fmt.Fprintf(stdout, "%s pin of %s\n", verb, p)
	}
	fmt.Fprintf(stdout, "%s %s (%s), kept %d\n", verb, plural(len(res.RemovedLayers), "layer"), storeBytes(res.FreedBytes), res.KeptLayers)
	return nil
}

func runStoreUnpack(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("store unpack", "[--store DIR] DIR:TAG|docker://REF", stdout, stderr)
	store := rootfsStoreFlag(fs)
	sf := addStoreImageFlags(fs)
	im, asJSON, err := sf.parse(fs, args, 1, "want one DIR:TAG (or docker://REF) argument, got %d", store, stderr)
	if err != nil {
		return err
	}
	ctx, stop := interruptible()
	defer stop()
	st, err := im.unpack(ctx)
	if err != nil {
		return err
	}
	if asJSON {
		return writeJSON(stdout, st)
	}
	fmt.Fprintf(stdout, "%s: %s: %d unpacked (%s), %d already in the store\n", im.ref, plural(st.Layers, "layer"), st.Unpacked, storeBytes(st.Bytes), st.Present)
	return nil
}
