// Command imgtool reads, writes and converts copy-on-write disk images
// (qcow2, raw) and OCI container layers.
//
// Each subcommand lives in its own file as
//
//	func runX(args []string, stdout, stderr io.Writer) error
//
// with its own pflag.FlagSet. This file dispatches and is the only place
// that calls os.Exit.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"

	"github.com/imgtool/imgtool/internal/atomicfile"
	"github.com/imgtool/imgtool/internal/imagelock"
	"github.com/imgtool/imgtool/qcow2"
	"github.com/spf13/pflag"
)

// command is one subcommand of imgtool.
type command struct {
	name    string
	summary string
	run     func(args []string, stdout, stderr io.Writer) error
}

// commands lists the subcommands in the order `imgtool help` shows them.
func commands() []command {
	return []command{
		{"help", "show this help, or the help of one command", nil},
		{"info", "show what an image (and its backing chain) is: format, sizes, backing file, snapshots", runInfo},
		{"map", "show how each guest range of an image chain is stored", runMap},
		{"convert", "copy the content of an image chain into a new qcow2 or raw image (sparse, -c compressed, -B delta)", runConvert},
		{"commit", "merge an image into its backing file (or a deeper base) and empty it", runCommit},
		{"compare", "compare the content of two images (exit 0 identical, 1 different, 2 error)", runCompare},
		{"create", "create a new qcow2 or raw image, optionally over a backing file", runCreate},
		{"check", "check a qcow2 image for leaks and corruptions, and repair them (-r)", runCheck},
		{"resize", "grow or shrink an image's guest size", runResize},
		{"measure", "compute the file size a new or converted image needs, as qemu-img measure", runMeasure},
		{"rebase", "change the backing file of an image, copying what would change (-u: reference only)", runRebase},
		{"snapshot", "list, create, apply and delete internal snapshots", runSnapshot},
		{"write", "write bytes, zeroes or a discard into an image at a guest offset", runWrite},
		{"layer", "create, apply and list OCI layer tarballs (tar, tar+gzip, tar+zstd)", runLayer},
		{"image", "build, unpack, list and verify images of an OCI image layout; pull and push them; make a VM disk of one (ext4 qcow2 chain)", runImage},
		{"rootfs", "mount, unmount and commit container root filesystems of image layers (overlayfs)", runRootfs},
		{"store", "list, unpack into, garbage-collect and dedup the layer store used by rootfs", runStore},
		{"chain", "manage a directory of VM base images that build on each other (qcow2 backing chains)", runChain},
		{"push", "push a qcow2 image and its backing chain to a registry, one layer per level (--flatten: one standalone disk)", runPush},
		{"pull", "rebuild a VM chain image from a registry in a directory, fetching only the levels it lacks; prints the top image", runPull},
		{"dedup", "find and remove duplicate data across images and layouts (scan, rebase, sparsify)", runDedup},
	}
}

// exitError carries a specific process exit code (qemu-img's codes for
// check and compare, for instance) together with the error to print, if
// any.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

// withCode wraps err so that imgtool exits with code.
func withCode(code int, err error) error { return &exitError{code: code, err: err} }

// usageError marks a command-line mistake; imgtool prints it with a hint
// to run help.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes one imgtool invocation and returns the process exit code.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		printHelp(stdout)
		return 1
	}
	name := args[0]
	if name == "help" || name == "-h" || name == "--help" {
		if len(args) > 1 {
			if c, ok := lookup(args[1]); ok && c.run != nil {
				// imgtool help chain vm: the subcommand's own help.
				help := append(slices.Clone(args[2:min(len(args), 3)]), "--help")
				return exitCode(c.name, c.run(help, stdout, stderr), stderr)
			}
		}
		printHelp(stdout)
		return 0
	}
	if name == "version" || name == "--version" {
		fmt.Fprintln(stdout, "imgtool", version())
		return 0
	}
	c, ok := lookup(name)
	if !ok || c.run == nil {
		fmt.Fprintf(stderr, "imgtool: unknown command %q\nRun 'imgtool help' for the list of commands.\n", name)
		return 1
	}
	return exitCode(commandName(args), c.run(args[1:], stdout, stderr), stderr)
}

// commandName returns the command args run, with its subcommand when it
// is a group ("chain vm"), for the hints printed after an error.
func commandName(args []string) string {
	if len(args) > 1 {
		if _, ok := examples[args[0]+" "+args[1]]; ok {
			return args[0] + " " + args[1]
		}
	}
	return args[0]
}

func lookup(name string) (command, bool) {
	for _, c := range commands() {
		if c.name == name {
			return c, true
		}
	}
	return command{}, false
}

// exitCode prints err (if any) and maps it to an exit code: 0 on success,
// the code of an exitError, 1 otherwise (qemu-img's convention). cmd is
// the command with its subcommand, if any ("chain vm"); messages start
// with the command's first word ("imgtool chain: ...").
func exitCode(cmd string, err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	if errors.Is(err, pflag.ErrHelp) {
		return 0
	}
	name, _, _ := strings.Cut(cmd, " ")
	if errors.Is(err, context.Canceled) {
		// Ctrl-C: the command has removed its partial output; say what
		// happened in the user's words and exit as a shell would report
		// SIGINT.
		fmt.Fprintf(stderr, "imgtool %s: interrupted\n", name)
		return 130
	}
	code := 1
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
		if ee.err == nil {
			return code
		}
	}
	fmt.Fprintf(stderr, "imgtool %s: %v\n", name, err)
	if forceShareHint(cmd, err) {
		fmt.Fprintf(stderr, "Use -U (--force-share) to read it anyway.\n")
	}
	if errors.Is(err, qcow2.ErrNoDirectIO) {
		fmt.Fprintf(stderr, "Use -t writeback to write through the page cache.\n")
	}
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "Run 'imgtool help %s' for usage.\n", cmd)
	}
	return code
}

func printHelp(w io.Writer) {
	fmt.Fprint(w, `imgtool: copy-on-write disk images (qcow2, raw) and OCI container layers.

Usage: imgtool COMMAND [OPTIONS] ARGS...

Commands:
`)
	cs := commands()
	width := 0
	for _, c := range cs {
		width = max(width, len(c.name))
	}
	for _, c := range cs {
		fmt.Fprintf(w, "  %-*s  %s\n", width, c.name, c.summary)
	}
	fmt.Fprint(w, `
Run 'imgtool help COMMAND [SUBCOMMAND]' for the options and examples of one command.
Exit status: 0 on success, 1 on error; check and compare use qemu-img's codes.
`)
}

// newFlagSet returns a flag set for a subcommand whose usage text prints
// the synopsis line followed by the flag defaults and examples. pflag
// shows it only for -h/--help (imgtool help COMMAND), so it goes to
// stdout, where `imgtool help convert | less` finds it.
func newFlagSet(name, synopsis string, stdout, stderr io.Writer) *pflag.FlagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.SortFlags = false
	fs.Usage = func() {
		fmt.Fprintf(stdout, "Usage: imgtool %s %s\n\nOptions:\n%s", name, fullSynopsis(fs, synopsis), fs.FlagUsages())
		if ex := examples[name]; len(ex) > 0 {
			fmt.Fprintf(stdout, "\nExamples:\n  %s\n", strings.Join(ex, "\n  "))
		}
	}
	return fs
}

// fullSynopsis returns synopsis with every flag of fs that it does not
// mention put in front, so a usage line always lists every flag.
func fullSynopsis(fs *pflag.FlagSet, synopsis string) string {
	words := strings.FieldsFunc(synopsis, func(r rune) bool { return strings.ContainsRune(" []|()=,", r) })
	mentioned := make(map[string]bool, len(words))
	for _, w := range words {
		mentioned[w] = true
	}
	var missing []string
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Hidden || f.Name == "help" || mentioned["--"+f.Name] || (f.Shorthand != "" && mentioned["-"+f.Shorthand]) {
			return
		}
		flag := "--" + f.Name
		if f.Shorthand != "" {
			flag = "-" + f.Shorthand
		}
		switch {
		case f.Value.Type() == "bool" && f.DefValue == "true":
			flag = "--" + f.Name + "=false" // --tls-verify=false
		case f.Value.Type() == "bool":
		case f.Name == "output":
			flag += " human|json"
		case strings.Contains(f.Usage, "`"):
			v, _ := pflag.UnquoteUsage(f) // the `NAME` of the usage text
			flag += " " + v
		default:
			flag += " " + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		}
		missing = append(missing, "["+flag+"]")
	})
	if len(missing) == 0 {
		return synopsis
	}
	return strings.Join(missing, " ") + " " + synopsis
}

// parseFlags parses args; a parse error becomes a usageError.
func parseFlags(fs *pflag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return err
		}
		return usagef("%v", err)
	}
	return nil
}

// outputFormat validates an --output value (human or json).
func outputFormat(v string) (json bool, err error) {
	switch strings.ToLower(v) {
	case "", "human":
		return false, nil
	case "json":
		return true, nil
	}
	return false, usagef("--output must be human or json, not %q", v)
}

// subcommand is one SUBCOMMAND of a command group (imgtool layer create,
// imgtool store gc, ...). The first name is the one help shows; the
// others are aliases.
type subcommand struct {
	names []string
	run   func(args []string, stdout, stderr io.Writer) error
}

// dispatch runs the subcommand of a group that args[0] names. Without a
// subcommand it prints usage to stderr and fails; with -h, --help or help
// it prints usage to stdout.
func dispatch(usage string, args []string, stdout, stderr io.Writer, subs ...subcommand) error {
	names := make([]string, len(subs))
	for i, s := range subs {
		names[i] = s.names[0]
	}
	list := strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return usagef("missing subcommand (%s)", list)
	}
	switch args[0] {
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		if f := strings.Fields(usage); len(f) > 2 && len(examples[f[2]]) > 0 {
			// "Usage: imgtool GROUP ...": the group's examples.
			fmt.Fprintf(stdout, "\nExamples:\n  %s\n", strings.Join(examples[f[2]], "\n  "))
		}
		return pflag.ErrHelp
	}
	for _, s := range subs {
		if slices.Contains(s.names, args[0]) {
			return s.run(args[1:], stdout, stderr)
		}
	}
	return usagef("unknown subcommand %q (want %s)", args[0], list)
}

// parseFlagsOutput parses args and then validates the --output flag that
// output points at, the pair of steps every reporting command starts with.
func parseFlagsOutput(fs *pflag.FlagSet, args []string, output *string) (json bool, err error) {
	if err := parseFlags(fs, args); err != nil {
		return false, err
	}
	return outputFormat(*output)
}

// parseOutputArgs is parseFlagsOutput followed by the check that n
// arguments remain; want is the usage error otherwise, with a %d for
// the number given.
func parseOutputArgs(fs *pflag.FlagSet, args []string, output *string, n int, want string) (json bool, err error) {
	if json, err = parseFlagsOutput(fs, args, output); err != nil {
		return false, err
	}
	if fs.NArg() != n {
		return false, usagef(want, fs.NArg())
	}
	return json, nil
}

// parseOutputNoArgs is parseFlagsOutput for a command that takes no
// arguments, only flags.
func parseOutputNoArgs(fs *pflag.FlagSet, args []string, output *string) (json bool, err error) {
	if json, err = parseFlagsOutput(fs, args, output); err != nil {
		return false, err
	}
	if fs.NArg() != 0 {
		return false, usagef("%s takes no arguments", fs.Name())
	}
	return json, nil
}

// forceShareHint reports whether err is a lock conflict that -U would get
// past: a command that has -U (it reads) failed to take the shared lock
// of an image it reads, because a writer holds it. A destination or an
// image being written is never such a case, and commands without -U
// never suggest it. cmd is the command with its subcommand, if any
// ("dedup scan").
func forceShareHint(cmd string, err error) bool {
	var ce *imagelock.ConflictError
	var le *atomicfile.LockError
	if !errors.As(err, &ce) || !ce.Shared || errors.As(err, &le) {
		return false
	}
	switch cmd {
	case "info", "map", "check", "compare", "convert", "measure", "snapshot", "dedup scan", "dedup rebase":
		return true
	}
	return false
}

// interruptible returns a context that Ctrl-C (SIGINT) cancels: the
// command stops, removes its partial output and exits saying
// "interrupted" (see exitCode). The first Ctrl-C restores the default
// action, so a second one ends the process at once.
func interruptible() (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	go func() {
		<-ctx.Done()
		stop()
	}()
	return ctx, stop
}

// plural returns "1 layer", "2 layers", "0 layers".
func plural[N ~int | ~int64](n N, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// backingRootFlag adds --backing-root DIR to a reading command.
func backingRootFlag(fs *pflag.FlagSet) *string {
	return fs.String("backing-root", "", "refuse backing files that resolve outside `DIR` (for images you don't trust)")
}

// backingRootOptions returns a function that confines the open options
// it is given to root (see qcow2.ConfineTo); with an empty root it
// changes nothing.
func backingRootOptions(root string) (func(qcow2.Options) qcow2.Options, error) {
	if root == "" {
		return func(o qcow2.Options) qcow2.Options { return o }, nil
	}
	check, err := qcow2.ConfineTo(root)
	if err != nil {
		return nil, usagef("--backing-root: %v", err)
	}
	return func(o qcow2.Options) qcow2.Options {
		o.CheckReference = check
		return o
	}, nil
}
