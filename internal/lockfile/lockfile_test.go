package lockfile

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"
)

func TestExclusiveExcludes(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.lock")
	ctx := context.Background()
	a, err := Acquire(ctx, p, false)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Acquire(ctx, p, false)
	if err != nil {
		t.Fatalf("second shared lock: %v", err)
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := Acquire(short, p, true); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("exclusive under shared locks: %v, want DeadlineExceeded", err)
	}
	a.Unlock()
	b.Unlock()
	b.Unlock() // twice is fine
	c, err := Acquire(ctx, p, true)
	if err != nil {
		t.Fatalf("exclusive after unlock: %v", err)
	}
	c.Unlock()
	var nilLock *Lock
	if err := nilLock.Unlock(); err != nil {
		t.Errorf("nil Unlock: %v", err)
	}
}
