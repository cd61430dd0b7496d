package qcow2

import (
	"context"
	"sync"
)

// runPool runs the jobs that produce emits on n worker goroutines.
// newWorker is called once in each worker and returns the function that
// handles one job, so that every worker owns its buffers. The first error,
// of a job or of produce, cancels the context that produce and the
// remaining jobs see, and is what runPool returns; otherwise it returns
// the parent context's error, if any.
func runPool[J any](ctx context.Context, n int, newWorker func() func(J) error, produce func(ctx context.Context, emit func(J) error) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	jobs := make(chan J, 2*n)
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			do := newWorker()
			for j := range jobs {
				if ctx.Err() != nil {
					continue // drain after a failure or cancellation
				}
				if err := do(j); err != nil {
					once.Do(func() { first = err; cancel() })
				}
			}
		}()
	}
	emit := func(j J) error {
		select {
		case jobs <- j:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	perr := produce(ctx, emit)
	close(jobs)
	wg.Wait()
	if first != nil {
		return first
	}
	if perr != nil {
		return perr
	}
	return ctx.Err()
}
