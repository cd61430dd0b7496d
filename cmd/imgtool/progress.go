package main

import (
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"

	"github.com/imgtool/imgtool/internal/qemusize"
	"github.com/spf13/pflag"
)

// redrawEvery is how often a progress line is redrawn at most.
const redrawEvery = 100 * time.Millisecond

// newProgress returns a progress callback for the library operations
// (func(done, total int64), called from any goroutine) and a finish
// function to call when the operation ends. With enabled false both do
// nothing.
//
// The line is qemu-img's "    (45.00/100%)", followed by the description
// and the byte counts in binary units as info prints them, redrawn in
// place on w (stderr) at most every 100 ms. finish draws the last state
// once more and ends the line, so a job too fast to be redrawn still
// leaves its final "(100.00/100%)" line, as qemu-img -p does.
func newProgress(enabled bool, w io.Writer, description string) (update func(done, total int64), finish func()) {
	if !enabled {
		return func(int64, int64) {}, func() {}
	}
	p := &progressLine{w: w, description: description}
	return p.update, p.finish
}

type progressLine struct {
	w           io.Writer
	description string

	mu          sync.Mutex
	done, total int64
	seen        bool
	drawn       time.Time
	finished    bool
	// stopped: the job ended before this line's work was done (it failed
	// or was interrupted), so a line of unknown total keeps its count but
	// does not claim 100 %.
	stopped bool
}

func (p *progressLine) update(done, total int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.finished {
		return
	}
	p.done, p.total, p.seen = done, total, true
	if now := time.Now(); now.Sub(p.drawn) >= redrawEvery {
		p.drawn = now
		p.draw("\r")
	}
}

func (p *progressLine) finish() { p.end(false) }

// end is finish for a job that stopped (stopped true) or completed.
func (p *progressLine) end(stopped bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.finished || !p.seen {
		p.finished = true
		return
	}
	p.finished, p.stopped = true, stopped
	p.draw("\n")
}

// draw writes the current state, ended by end ("\r" to redraw in place,
// "\n" to leave the line).
func (p *progressLine) draw(end string) {
	var line string
	switch {
	case p.total < 0 && end == "\n" && p.stopped:
		// No total was known and the job stopped: what it got to.
		line = fmt.Sprintf("    %s: %s, stopped", p.description, qemusize.String(p.done))
	case p.total < 0 && end == "\n":
		// No total was known; the job is done.
		line = fmt.Sprintf("    (100.00/100%%) %s: %s", p.description, qemusize.String(p.done))
	case p.total < 0:
		// No total known yet: the description and the bytes so far.
		line = fmt.Sprintf("    %s: %s", p.description, qemusize.String(p.done))
	case p.total == 0:
		line = "    (100.00/100%)"
		if p.description != "" {
			line += " " + p.description
		}
	default:
		pct := 100 * float64(min(p.done, p.total)) / float64(p.total)
		line = fmt.Sprintf("    (%.2f/100%%)", pct)
		if p.description != "" {
			line += " " + p.description
		}
		line += fmt.Sprintf(": %s of %s", qemusize.String(min(p.done, p.total)), qemusize.String(p.total))
	}
	// Pad over the rest of a longer earlier line.
	fmt.Fprintf(p.w, "\r%-70s%s", line, end)
}

// newPhaseProgress is newProgress for work whose total is not known in
// advance and that runs in phases (rootfs commit: "diff", then "store"):
// one line per phase with the bytes done so far, each phase's line left
// with its final count when the next phase starts or at finish. finish
// takes the job's error: a phase that ended in one ("layer 3/10: 2 MiB,
// stopped") is not drawn as complete.
func newPhaseProgress(enabled bool, w io.Writer) (update func(phase string, done int64), finish func(err error)) {
	if !enabled {
		return func(string, int64) {}, func(error) {}
	}
	var mu sync.Mutex
	var cur *progressLine
	update = func(phase string, done int64) {
		mu.Lock()
		if cur == nil || cur.description != phase {
			if cur != nil {
				cur.finish()
			}
			cur = &progressLine{w: w, description: phase}
		}
		line := cur
		mu.Unlock()
		line.update(done, -1)
	}
	finish = func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if cur != nil {
			cur.end(err != nil)
		}
	}
	return update, finish
}

// progressFlags adds -p/--progress and -q/--quiet to fs and returns the
// bool the command reads: true when -p was given and -q was not, in
// whatever order they come (qemu-img's -q wins over -p).
func progressFlags(fs *pflag.FlagSet, usage string) *bool {
	pq := &progressQuiet{}
	p := fs.VarPF(&pqFlag{pq: pq, quiet: false}, "progress", "p", usage)
	p.NoOptDefVal = "true"
	q := fs.VarPF(&pqFlag{pq: pq, quiet: true}, "quiet", "q", "quiet: no progress, even with -p")
	q.NoOptDefVal = "true"
	return &pq.on
}

// progressQuiet is the state -p and -q share.
type progressQuiet struct{ progress, quiet, on bool }

// pqFlag is the pflag.Value of -p (quiet false) or -q (quiet true).
type pqFlag struct {
	pq    *progressQuiet
	quiet bool
}

func (f *pqFlag) Set(s string) error {
	v, err := strconv.ParseBool(s)
	if err != nil {
		return err
	}
	if f.quiet {
		f.pq.quiet = v
	} else {
		f.pq.progress = v
	}
	f.pq.on = f.pq.progress && !f.pq.quiet
	return nil
}

func (f *pqFlag) String() string {
	if f.pq == nil {
		return "false"
	}
	return strconv.FormatBool(map[bool]bool{false: f.pq.progress, true: f.pq.quiet}[f.quiet])
}

func (f *pqFlag) Type() string { return "bool" }

// quietFlags is progressFlags for a command whose only other output is a
// one-line report of what it did (chain init: "base level ... imported"):
// -q silences that line too, as qemu-img -q silences "Formatting ...".
func quietFlags(fs *pflag.FlagSet, usage string) (progress *bool, quiet func() bool) {
	progress = progressFlags(fs, usage)
	q := fs.Lookup("quiet")
	q.Usage = "print nothing on success (no progress, even with -p)"
	return progress, func() bool { return q.Value.String() == "true" }
}
