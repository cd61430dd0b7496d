// Package jobs runs indexed work a bounded number at a time: the blobs of
// an image pull, the levels of a VM chain push or pull, the layers of a
// dedup layout scan.
package jobs

import (
	"context"
	"sync"
)

// ForEach runs fn(ctx, i) for i in [0, n), at most jobs at a time (at
// least one), and returns the first error. After an error it cancels the
// others' context and starts no more; a cancelled ctx ends it with
// ctx.Err().
func ForEach(ctx context.Context, jobs, n int, fn func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	jobs = max(1, min(jobs, n))
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
		next  = make(chan int)
	)
	for range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := fn(ctx, i); err != nil {
					once.Do(func() { first = err; cancel() })
				}
			}
		}()
	}
loop:
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
			break loop
		}
	}
	close(next)
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}
