package main

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/imgtool/imgtool/internal/qemusize"
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

func (p *progressLine) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.finished || !p.seen {
		p.finished = true
		return
	}
	p.finished = true
	p.draw("\n")
}

// draw writes the current state, ended by end ("\r" to redraw in place,
// "\n" to leave the line).
func (p *progressLine) draw(end string) {
	pct := 100.0
	if p.total > 0 {
		pct = 100 * float64(min(p.done, p.total)) / float64(p.total)
	}
	line := fmt.Sprintf("    (%.2f/100%%)", pct)
	if p.description != "" {
		line += " " + p.description
	}
	if p.total > 0 {
		line += fmt.Sprintf(": %s of %s", qemusize.String(min(p.done, p.total)), qemusize.String(p.total))
	}
	// Pad over the rest of a longer earlier line.
	fmt.Fprintf(p.w, "\r%-70s%s", line, end)
}
