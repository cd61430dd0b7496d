package overlay

import (
	"fmt"
	"strings"
	"testing"
)

// mountinfoEscape escapes a path as the kernel's mountinfo does (space,
// tab, newline and backslash as octal).
func mountinfoEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case ' ', '\t', '\n', '\\':
			fmt.Fprintf(&b, "\\%03o", c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// FuzzMountinfoPath checks that unescaping inverts the kernel's escaping
// of mount points, and never panics on arbitrary input.
func FuzzMountinfoPath(f *testing.F) {
	for _, s := range []string{"/mnt/a b", `/x\y`, "/tab\there", "/\n", `\0`, `\04`, `\777`, `/ok`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		unescapeMountinfo(s) // arbitrary input: must not panic
		if got := unescapeMountinfo(mountinfoEscape(s)); got != s {
			t.Fatalf("unescape(escape(%q)) = %q", s, got)
		}
	})
}

// FuzzContainerName checks validName: accepted names are safe single path
// components.
func FuzzContainerName(f *testing.F) {
	for _, s := range []string{"web", "c0123456789ab", "..", ".", "a/b", "", "x y", strings.Repeat("a", 129)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if validName(s) != nil {
			return
		}
		if s == "" || s == "." || s == ".." || strings.ContainsAny(s, "/\x00") || len(s) > 128 {
			t.Fatalf("validName accepted %q", s)
		}
	})
}
