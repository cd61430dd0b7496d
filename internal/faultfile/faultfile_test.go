package faultfile

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
)

func TestCrashDropsUnsynced(t *testing.T) {
	f := New([]byte("hello"))
	f.WriteAt([]byte("J"), 0)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.CrashAfter(2)
	if _, err := f.WriteAt([]byte("!!"), 5); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(3); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("x"), 0); !errors.Is(err, ErrCrashed) {
		t.Fatalf("write after budget: %v", err)
	}
	if err := f.Sync(); !errors.Is(err, ErrCrashed) {
		t.Fatalf("sync after crash: %v", err)
	}
	if got := f.Image(KeepNone, nil); string(got) != "Jello" {
		t.Errorf("KeepNone = %q", got)
	}
	if got := f.Image(KeepAll, nil); string(got) != "Jel" {
		t.Errorf("KeepAll = %q", got)
	}
	seen := map[string]bool{}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 64 {
		seen[string(f.Image(KeepRandom, rng))] = true
	}
	for _, want := range []string{"Jello", "Jello!!", "Jel"} {
		if !seen[want] {
			t.Errorf("KeepRandom never produced %q (got %v)", want, seen)
		}
	}
}

func TestReadSeesPending(t *testing.T) {
	f := New(nil)
	f.WriteAt([]byte("abc"), 4)
	buf := make([]byte, 8)
	n, err := f.ReadAt(buf, 0)
	if n != 7 || err != io.EOF || !bytes.Equal(buf[:n], []byte("\x00\x00\x00\x00abc")) {
		t.Fatalf("ReadAt = %d %v %q", n, err, buf[:n])
	}
	if sz, _ := f.Size(); sz != 7 {
		t.Fatalf("Size = %d", sz)
	}
	if f.Writes() != 1 {
		t.Fatalf("Writes = %d", f.Writes())
	}
}
