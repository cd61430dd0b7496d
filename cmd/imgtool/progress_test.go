package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
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

// TestPhaseProgressEndsEachPhase : rootfs commit's phases of unknown
// size each leave a line with their final count, even when the updates
// came too fast to be redrawn.
func TestPhaseProgressEndsEachPhase(t *testing.T) {
	var b bytes.Buffer
	update, finish := newPhaseProgress(true, &b)
	update("diff", 0)
	update("diff", 5<<20) // within 100 ms: not drawn
	update("store", 1<<20)
	update("store", 2<<20)
	finish(nil)
	want := []string{"(100.00/100%) diff: 5 MiB", "(100.00/100%) store: 2 MiB"}
	if d := cmp.Diff(want, finalLines(b.String())); d != "" {
		t.Errorf("final lines (-want +got):\n%s\noutput %q", d, b.String())
	}
}

// TestPhaseProgressStopped: a job that fails or is interrupted in its
// last phase leaves that phase's count without claiming 100 %; the
// phases it finished before keep theirs.
func TestPhaseProgressStopped(t *testing.T) {
	var b bytes.Buffer
	update, finish := newPhaseProgress(true, &b)
	update("layer 1/3", 4<<20)
	update("layer 2/3", 1<<20)
	finish(errors.New("interrupted"))
	finish(nil) // a second call (a deferred one) changes nothing
	want := []string{"(100.00/100%) layer 1/3: 4 MiB", "layer 2/3: 1 MiB, stopped"}
	if d := cmp.Diff(want, finalLines(b.String())); d != "" {
		t.Errorf("final lines (-want +got):\n%s\noutput %q", d, b.String())
	}
}

// finalLines is what a terminal shows of progress output: the last
// redraw of each line.
func finalLines(out string) []string {
	var finals []string
	for _, l := range strings.Split(out, "\n") {
		if l == "" {
			continue
		}
		parts := strings.Split(l, "\r")
		finals = append(finals, strings.TrimSpace(parts[len(parts)-1]))
	}
	return finals
}
