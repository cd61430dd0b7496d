package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/imgtool/imgtool/internal/qemusize"
	"github.com/imgtool/imgtool/overlay/vmchain"
	"github.com/imgtool/imgtool/qcow2"
	"github.com/spf13/pflag"
)

const chainUsage = `Usage: imgtool chain SUBCOMMAND [OPTIONS] ARGS...

Manage a directory of qcow2 images that build on each other (base OS ->
+database -> +web server, with a thin image per VM). Every image is
DIR/NAME.qcow2 and names its parent by the relative backing file
PARENT.qcow2, so the directory can be moved or copied; QEMU opens the
images directly (qemu-img info --backing-chain DIR/NAME.qcow2).

Subcommands:
  init DIR --base IMG [--name NAME]     copy IMG (qcow2 or raw) in as the base level (NAME: base)
  add DIR NAME --from PARENT [--import IMG]
                                        add a level on PARENT; --import stores only the
                                        clusters where the standalone disk IMG differs
  vm DIR NAME --from LEVEL              add a thin per-VM overlay on LEVEL
  tree [--output human|json] DIR        show what depends on what, and sizes
  rm DIR NAME [--force]                 remove an image nothing depends on
  squash DIR NAME                       merge NAME into its parent (NAME must be its only
                                        child); NAME's children move onto the parent

Names: letters, digits, _ . + - (no leading dot or dash, no "..").
Levels that have dependents are read-only (mode 0444); rm refuses to
remove an image others depend on, even with --force, which only skips
the check that no process (a running VM) has the image open.
`

// runChain dispatches imgtool chain init|add|vm|tree|rm|squash.
func runChain(args []string, stdout, stderr io.Writer) error {
	return dispatch(chainUsage, args, stdout, stderr,
		subcommand{[]string{"init"}, runChainInit},
		subcommand{[]string{"add"}, runChainAdd},
		subcommand{[]string{"vm"}, runChainVM},
		subcommand{[]string{"tree", "ls"}, runChainTree},
		subcommand{[]string{"rm"}, runChainRm},
		subcommand{[]string{"squash"}, runChainSquash},
	)
}

func runChainInit(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("chain init", "[-p] [-q] DIR --base IMG [--name NAME] [-f qcow2|raw] [--cluster-size SIZE]", stdout, stderr)
	base := fs.String("base", "", "the base image to copy in (qcow2 with its backing chain, or raw)")
	name := fs.String("name", vmchain.DefaultChainBase, "name of the base level")
	format := fs.StringP("format", "f", "", "format of IMG: qcow2 or raw (probed when omitted)")
	clusterSize := fs.String("cluster-size", "", "cluster size of the chain's images (default 64K)")
	progress, quiet := quietFlags(fs, "show progress")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("expected DIR, got %d arguments", fs.NArg())
	}
	if *base == "" {
		return usagef("--base IMG is required")
	}
	opts := vmchain.InitChainOptions{Name: *name, Format: qcow2.Format(*format)}
	if *clusterSize != "" {
		v, err := qemusize.Parse(*clusterSize)
		if err != nil {
			return usagef("--cluster-size: %v", err)
		}
		opts.ClusterSize = v
	}
	update, finish := newProgress(*progress, stderr, "importing "+*name)
	opts.Progress = update
	ctx, stop := interruptible()
	defer stop()
	_, err := vmchain.InitChain(ctx, fs.Arg(0), *base, opts)
	finish()
	if err != nil {
		return err
	}
	if quiet() {
		return nil
	}
	fmt.Fprintf(stdout, "chain %s: base level %s imported from %s\n", fs.Arg(0), *name, *base)
	return nil
}

func runChainAdd(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("chain add", "[-p] [-q] DIR NAME --from PARENT [--import IMG [-f qcow2|raw]]", stdout, stderr)
	from := fs.String("from", "", "the level to build on")
	imp := fs.String("import", "", "a standalone disk whose differences from PARENT the level stores")
	format := fs.StringP("format", "f", "", "format of the --import image: qcow2 or raw (probed when omitted)")
	progress, quiet := quietFlags(fs, "show progress (with --import)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	c, err := openChainFromArgs(fs, *from, "PARENT")
	if err != nil {
		return err
	}
	update, finish := newProgress(*progress && *imp != "", stderr, "importing "+fs.Arg(1))
	ctx, stop := interruptible()
	defer stop()
	err = c.AddLevel(ctx, fs.Arg(1), *from, vmchain.AddLevelOptions{Import: *imp, ImportFormat: qcow2.Format(*format), Progress: update})
	finish()
	if err != nil {
		return err
	}
	if quiet() {
		return nil
	}
	fmt.Fprintf(stdout, "chain %s: level %s added on %s\n", fs.Arg(0), fs.Arg(1), *from)
	return nil
}

func runChainVM(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("chain vm", "[-q] DIR NAME --from LEVEL", stdout, stderr)
	from := fs.String("from", "", "the level the VM image builds on")
	quiet := fs.BoolP("quiet", "q", false, "print nothing on success")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	c, err := openChainFromArgs(fs, *from, "LEVEL")
	if err != nil {
		return err
	}
	if err := c.AddVM(context.Background(), fs.Arg(1), *from); err != nil {
		return err
	}
	if *quiet {
		return nil
	}
	p, _ := c.ImagePath(fs.Arg(1))
	fmt.Fprintf(stdout, "chain %s: VM image %s added on %s: %s\n", fs.Arg(0), fs.Arg(1), *from, p)
	return nil
}

// openChainArgs checks for the DIR NAME arguments of chain rm and squash
// and opens the chain directory DIR.
func openChainArgs(fs *pflag.FlagSet) (*vmchain.ChainDir, error) {
	if err := chainDirNameArgs(fs); err != nil {
		return nil, err
	}
	return vmchain.OpenChainDir(fs.Arg(0))
}

// openChainFromArgs is openChainArgs for chain add and vm, which also
// require --from: from is its value and meta names it in the error
// (PARENT, LEVEL). The argument count is checked first.
func openChainFromArgs(fs *pflag.FlagSet, from, meta string) (*vmchain.ChainDir, error) {
	if err := chainDirNameArgs(fs); err != nil {
		return nil, err
	}
	if from == "" {
		return nil, usagef("--from %s is required", meta)
	}
	return vmchain.OpenChainDir(fs.Arg(0))
}

// chainDirNameArgs checks that fs has exactly the two arguments DIR NAME.
func chainDirNameArgs(fs *pflag.FlagSet) error {
	if fs.NArg() != 2 {
		return usagef("expected DIR NAME, got %d arguments", fs.NArg())
	}
	return nil
}

// chainTreeEntry is one image in `chain tree --output json`.
type chainTreeEntry struct {
	Name         string   `json:"name"`
	File         string   `json:"file"`
	Kind         string   `json:"kind"`
	Parent       *string  `json:"parent"`
	Children     []string `json:"children"`
	VirtualSize  int64    `json:"virtual-size"`
	PrivateBytes int64    `json:"private-bytes"`
	SharedBytes  int64    `json:"shared-bytes"`
	FileBytes    int64    `json:"file-bytes"`
	ReadOnly     bool     `json:"read-only"`
	Depth        int      `json:"depth"`
}

func runChainTree(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("chain tree", "[--output human|json] DIR", stdout, stderr)
	output := fs.String("output", "human", "output format: human or json")
	asJSON, err := parseOutputArgs(fs, args, output, 1, "expected DIR, got %d arguments")
	if err != nil {
		return err
	}
	c, err := vmchain.OpenChainDir(fs.Arg(0))
	if err != nil {
		return err
	}
	imgs, err := c.Images(context.Background())
	if err != nil {
		return err
	}
	if asJSON {
		out := make([]chainTreeEntry, len(imgs))
		for i, ci := range imgs {
			out[i] = chainTreeEntry{
				Name: ci.Name, File: ci.File, Kind: string(ci.Kind), Children: ci.Children,
				VirtualSize: ci.VirtualSize, PrivateBytes: ci.PrivateBytes, SharedBytes: ci.SharedBytes,
				FileBytes: ci.FileBytes, ReadOnly: ci.ReadOnly, Depth: ci.Depth,
			}
			if ci.Parent != "" {
				p := ci.Parent
				out[i].Parent = &p
			}
		}
		b, err := json.MarshalIndent(out, "", "    ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(stdout, "%s\n", b)
		return err
	}
	fmt.Fprintf(stdout, "chain %s: %s\n", fs.Arg(0), plural(len(imgs), "image"))
	tw := tabwriter.NewWriter(stdout, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\tKIND\tVIRTUAL\tPRIVATE\tSHARED\tON DISK\tMODE")
	for i, ci := range imgs {
		mode := "rw"
		if ci.ReadOnly {
			mode = "ro"
		}
		fmt.Fprintf(tw, "%s%s\t%s\t%s\t%s\t%s\t%s\t%s\n", chainTreePrefix(imgs, i), ci.Name, ci.Kind,
			qemusize.String(ci.VirtualSize), qemusize.String(ci.PrivateBytes), qemusize.String(ci.SharedBytes),
			qemusize.String(ci.FileBytes), mode)
	}
	return tw.Flush()
}

// chainTreePrefix draws the branches in front of imgs[i], a depth-first
// listing: for each ancestor level whether more siblings follow.
func chainTreePrefix(imgs []vmchain.ChainImage, i int) string {
	d := imgs[i].Depth
	if d == 0 {
		return ""
	}
	// more[k] is true when an image at depth k+1 follows before the
	// listing climbs back above depth k+1.
	var b strings.Builder
	for k := 1; k <= d; k++ {
		more := false
		for j := i + 1; j < len(imgs) && imgs[j].Depth >= k; j++ {
			if imgs[j].Depth == k {
				more = true
				break
			}
		}
		switch {
		case k < d && more:
			b.WriteString("│  ")
		case k < d:
			b.WriteString("   ")
		case more:
			b.WriteString("├─ ")
		default:
			b.WriteString("└─ ")
		}
	}
	return b.String()
}

func runChainRm(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("chain rm", "[-q] [--force] DIR NAME", stdout, stderr)
	force := fs.Bool("force", false, "remove the image even if a process (a running VM) has it open; never removes an image others depend on")
	quiet := fs.BoolP("quiet", "q", false, "print nothing on success")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	c, err := openChainArgs(fs)
	if err != nil {
		return err
	}
	if err := c.Remove(context.Background(), fs.Arg(1), vmchain.RemoveOptions{Force: *force}); err != nil {
		return err
	}
	if *quiet {
		return nil
	}
	fmt.Fprintf(stdout, "chain %s: %s removed\n", fs.Arg(0), fs.Arg(1))
	return nil
}

func runChainSquash(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("chain squash", "[-p] [-q] DIR NAME", stdout, stderr)
	progress, quiet := quietFlags(fs, "show progress")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	c, err := openChainArgs(fs)
	if err != nil {
		return err
	}
	update, finish := newProgress(*progress, stderr, "squashing "+fs.Arg(1))
	ctx, stop := interruptible()
	defer stop()
	err = c.Squash(ctx, fs.Arg(1), vmchain.SquashOptions{Progress: update})
	finish()
	if err != nil {
		return err
	}
	if quiet() {
		return nil
	}
	fmt.Fprintf(stdout, "chain %s: %s merged into its parent\n", fs.Arg(0), fs.Arg(1))
	return nil
}
