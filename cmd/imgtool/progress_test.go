package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestProgressEndsAt100 : a job that finishes between two redraws still
// leaves a final (100.00/100%) line in binary units.
func TestProgressEndsAt100(t *testing.T) {
	var b bytes.Buffer
	update, finish := newProgress(true, &b, "converting")
	update(0, 3<<30)
	update(1<<30, 3<<30) // within 100 ms: not drawn
	update(3<<30, 3<<30) // not drawn either
	finish()
	out := b.String()
	if !strings.HasSuffix(out, "\n") {
		t.Fatalf("no final line: %q", out)
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\r")
	last := strings.TrimSpace(lines[len(lines)-1])
	if last != "(100.00/100%) converting: 3 GiB of 3 GiB" {
		t.Errorf("final line %q, want \"(100.00/100%%) converting: 3 GiB of 3 GiB\"", last)
	}
	if !strings.Contains(out, "(0.00/100%) converting: 0 B of 3 GiB") {
		t.Errorf("first draw missing: %q", out)
	}
}

func TestProgressDisabledAndUnused(t *testing.T) {
	var b bytes.Buffer
	update, finish := newProgress(false, &b, "x")
	update(1, 2)
	finish()
	_, finish = newProgress(true, &b, "x")
	finish() // never updated: nothing to say
	if b.Len() != 0 {
		t.Errorf("wrote %q", b.String())
	}
}
