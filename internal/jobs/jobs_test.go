package jobs

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
)

func TestForEach(t *testing.T) {
	var sum, running, peak atomic.Int64
	err := ForEach(context.Background(), 3, 100, func(ctx context.Context, i int) error {
		r := running.Add(1)
		for {
			p := peak.Load()
			if r <= p || peak.CompareAndSwap(p, r) {
				break
			}
		}
		sum.Add(int64(i))
		running.Add(-1)
		return nil
	})
	if err != nil || sum.Load() != 4950 || peak.Load() > 3 {
		t.Errorf("err %v, sum %d (want 4950), peak %d (want <= 3)", err, sum.Load(), peak.Load())
	}
}

func TestForEachFirstErrorStops(t *testing.T) {
	boom := errors.New("boom")
	var ran atomic.Int64
	err := ForEach(context.Background(), 1, 100, func(ctx context.Context, i int) error {
		ran.Add(1)
		if i == 2 {
			return boom
		}
		return nil
	})
	if !errors.Is(err, boom) || ran.Load() > 4 {
		t.Errorf("err %v, ran %d; want boom after at most 4 jobs", err, ran.Load())
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := ForEach(ctx, 2, 10, func(context.Context, int) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
	if err := ForEach(context.Background(), 4, 0, func(context.Context, int) error { return boom }); err != nil {
		t.Errorf("n=0: %v", err)
	}
}
