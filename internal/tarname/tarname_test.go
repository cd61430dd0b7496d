package tarname

import "testing"

func TestClean(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"a", "a"}, {"./a/b/", "a/b"}, {".", "."}, {"./", "."}, {"a/.wh.b", "a/.wh.b"},
	} {
		got, err := Clean(c.in)
		if err != nil || got != c.want {
			t.Errorf("Clean(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "/etc/passwd", "a/../../b", "..", "a//b", "a/./b", "a\x00b"} {
		if got, err := Clean(bad); err == nil {
			t.Errorf("Clean(%q) = %q, want an error", bad, got)
		}
	}
}

func TestSplit(t *testing.T) {
	for _, c := range []struct{ in, dir, base string }{
		{".", ".", "."}, {"a", ".", "a"}, {"a/b/c", "a/b", "c"},
	} {
		if d, b := Split(c.in); d != c.dir || b != c.base {
			t.Errorf("Split(%q) = %q, %q; want %q, %q", c.in, d, b, c.dir, c.base)
		}
	}
}
