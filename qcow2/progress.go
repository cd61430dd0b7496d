package qcow2

import (
	"sync"
	"sync/atomic"
)

// progressMeter turns byte counts added by many goroutines into calls of
// a caller's progress callback, func(done, total int64), that never go
// backwards and are never made concurrently. A nil callback makes it a
// counter only.
type progressMeter struct {
	fn       func(done, total int64)
	total    int64
	done     atomic.Int64
	mu       sync.Mutex
	reported int64
}

// newProgressMeter reports (0, total) at once, so a progress bar appears
// before the first chunk completes.
func newProgressMeter(fn func(done, total int64), total int64) *progressMeter {
	p := &progressMeter{fn: fn, total: total}
	if fn != nil {
		fn(0, total)
	}
	return p
}

// add records n more bytes done; done is capped at total.
func (p *progressMeter) add(n int64) {
	d := min(p.done.Add(n), p.total)
	if p.fn == nil {
		return
	}
	p.mu.Lock()
	if d > p.reported {
		p.reported = d
		p.fn(d, p.total)
	}
	p.mu.Unlock()
}
