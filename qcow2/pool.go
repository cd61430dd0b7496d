package qcow2

import (
	"context"
	"fmt"
	"runtime"
	"sync"
)

// defaultWorkers is the goroutine count a zero Workers option means.
// Reads and writes of cached data are CPU work inside syscalls; more
// goroutines than cores keep every core busy while some wait in the
// kernel (qemu-img keeps a pool of I/O threads too).
func defaultWorkers() int { return 2 * runtime.GOMAXPROCS(0) }

// workerCount returns the goroutine count the Workers option n of op
// (commit, rebase) on path asks for: n, or defaultWorkers() for 0.
func workerCount(op, path string, n int) (int, error) {
	if n < 0 {
		return 0, fmt.Errorf("qcow2: %s %s: negative Workers", op, path)
	}
	if n == 0 {
		return defaultWorkers(), nil
	}
	return n, nil
}

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
