package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestHelpEveryCommand: `imgtool help COMMAND` of every command that has
// flags (found in the sources, so a new command can't be missed) and of
// every command group prints its help on stdout with examples whose flags
// the command has, and a command's usage line lists each of its flags.
func TestHelpEveryCommand(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`newFlagSet\("([a-z ]+)"`)
	var names []string
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range re.FindAllSubmatch(b, -1) {
			names = append(names, string(m[1]))
		}
	}
	if len(names) < 30 {
		t.Fatalf("found only %d commands: %v", len(names), names)
	}
	groups := map[string]bool{}
	for _, name := range names {
		if g, _, ok := strings.Cut(name, " "); ok {
			groups[g] = true
		}
		var stdout, stderr bytes.Buffer
		args := append([]string{"help"}, strings.Fields(name)...)
		if code := run(args, &stdout, &stderr); code != 0 || stderr.Len() != 0 {
			t.Errorf("imgtool help %s: exit %d, stderr %q; want 0 and the help on stdout", name, code, stderr.String())
			continue
		}
		out := stdout.String()
		if !strings.HasPrefix(out, "Usage: imgtool "+name+" ") {
			t.Errorf("imgtool help %s shows another help:\n%s", name, out)
			continue
		}
		_, ex, _ := strings.Cut(out, "\nExamples:\n")
		if !strings.Contains(ex, "imgtool "+name+" ") {
			t.Errorf("imgtool help %s shows no example of %q:\n%s", name, name, out)
		}
		checkExamples(t, name)
		usage, _, _ := strings.Cut(out, "\n")
		opts := out[strings.Index(out, "Options:"):]
		for _, l := range strings.Split(opts, "\n") {
			l = strings.TrimSpace(l)
			if !strings.HasPrefix(l, "-") {
				continue
			}
			// "-r, --repair string" or "--output string": either form will do.
			var forms []string
			for _, w := range strings.Fields(l) {
				if w = strings.TrimSuffix(w, ","); strings.HasPrefix(w, "-") {
					forms = append(forms, w)
				}
			}
			if forms[0] == "-h" || forms[0] == "--help" {
				continue
			}
			found := false
			for _, f := range forms {
				found = found || regexp.MustCompile(`[\s\[|(]`+regexp.QuoteMeta(f)+`[\s\]|=)]`).MatchString(usage+" ")
			}
			if !found {
				t.Errorf("usage of %s lacks %s: %s", name, strings.Join(forms, "/"), usage)
			}
		}
	}
	// imgtool help GROUP: the subcommands, and examples of the group.
	if len(groups) < 6 {
		t.Errorf("found only %d command groups: %v", len(groups), groups)
	}
	for g := range groups {
		var stdout, stderr bytes.Buffer
		if code := run([]string{"help", g}, &stdout, &stderr); code != 0 {
			t.Errorf("imgtool help %s: exit %d\n%s", g, code, stderr.String())
		}
		_, ex, _ := strings.Cut(stdout.String(), "\nExamples:\n")
		if !strings.Contains(ex, "imgtool "+g+" ") {
			t.Errorf("imgtool help %s shows no example:\n%s", g, stdout.String())
		}
		checkExamples(t, g)
	}
}

// checkExamples runs each example of name with --help appended: the
// flags parse before the help stops the command, so an example with a
// flag the command does not have (a stale example) fails.
func checkExamples(t *testing.T, name string) {
	t.Helper()
	for _, ex := range examples[name] {
		_, cmdline, ok := strings.Cut(ex, "imgtool ")
		if !ok || (cmdline != name && !strings.HasPrefix(cmdline, name+" ")) {
			t.Errorf("example %q of %s does not run imgtool %s", ex, name, name)
			continue
		}
		args := append(strings.Fields(cmdline), "--help")
		var stdout, stderr bytes.Buffer
		if code := run(args, &stdout, &stderr); code != 0 {
			t.Errorf("example %q: exit %d\n%s", ex, code, stderr.String())
		}
	}
}
