package ioprogress

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/google/go-cmp/cmp"
)

func TestReader(t *testing.T) {
	var got []int64
	r := &Reader{R: iotest.OneByteReader(strings.NewReader("abc")), Fn: func(n int64) { got = append(got, n) }}
	b, err := io.ReadAll(r)
	if err != nil || string(b) != "abc" {
		t.Fatalf("ReadAll = %q, %v", b, err)
	}
	if diff := cmp.Diff([]int64{1, 2, 3}, got); diff != "" {
		t.Errorf("reports (-want +got):\n%s", diff)
	}
	if r.N != 3 || r.Err != nil {
		t.Errorf("N, Err = %d, %v; want 3, nil", r.N, r.Err)
	}
}

func TestReaderKeepsFirstError(t *testing.T) {
	first := errors.New("connection reset")
	r := &Reader{R: io.MultiReader(strings.NewReader("ab"), iotest.ErrReader(first))}
	if _, err := io.ReadAll(r); !errors.Is(err, first) {
		t.Fatalf("ReadAll error = %v, want %v", err, first)
	}
	r.R = iotest.ErrReader(io.ErrUnexpectedEOF)
	r.Read(make([]byte, 1))
	if r.N != 2 || r.Err != first {
		t.Errorf("N, Err = %d, %v; want 2, %v", r.N, r.Err, first)
	}
	// io.EOF is not an error worth keeping.
	r = &Reader{R: strings.NewReader("")}
	r.Read(make([]byte, 1))
	if r.Err != nil {
		t.Errorf("Err after EOF = %v, want nil", r.Err)
	}
}

type shortWriter struct{ bytes.Buffer }

func (w *shortWriter) Write(p []byte) (int, error) {
	if len(p) > 2 {
		w.Buffer.Write(p[:2])
		return 2, io.ErrShortWrite
	}
	return w.Buffer.Write(p)
}

func TestWriter(t *testing.T) {
	var got []int64
	var dst shortWriter
	w := &Writer{W: &dst, Fn: func(n int64) { got = append(got, n) }}
	w.Write([]byte("ab"))
	w.Write(nil)
	if _, err := w.Write([]byte("cdef")); err != io.ErrShortWrite {
		t.Fatalf("Write error = %v, want io.ErrShortWrite", err)
	}
	if diff := cmp.Diff([]int64{2, 4}, got); diff != "" {
		t.Errorf("reports (-want +got):\n%s", diff)
	}
	if w.N != 4 || dst.String() != "abcd" {
		t.Errorf("N = %d, written %q; want 4, \"abcd\"", w.N, dst.String())
	}
}

func TestWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	r := WithContext(ctx, strings.NewReader("abcdef"))
	b := make([]byte, 3)
	if n, err := r.Read(b); n != 3 || err != nil {
		t.Fatalf("Read before cancel = %d, %v", n, err)
	}
	cancel()
	if n, err := r.Read(b); n != 0 || err != context.Canceled {
		t.Fatalf("Read after cancel = %d, %v; want 0, context.Canceled", n, err)
	}
}
