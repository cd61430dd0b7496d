package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestHelpEveryCommand: every command that has flags (found in the
// sources, so a new command can't be missed) shows examples, and its usage
// line lists each of its flags.
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
	for _, name := range names {
		var stdout, stderr bytes.Buffer
		args := append(strings.Fields(name), "--help")
		if code := run(args, &stdout, &stderr); code != 0 {
			t.Errorf("%s --help: exit %d\n%s%s", name, code, stdout.String(), stderr.String())
			continue
		}
		out := stdout.String() + stderr.String()
		_, ex, _ := strings.Cut(out, "\nExamples:\n")
		if !strings.Contains(ex, "imgtool "+name+" ") {
			t.Errorf("imgtool %s --help shows no example of %q:\n%s", name, name, out)
		}
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
}
