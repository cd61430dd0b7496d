// Package ioprogress wraps the readers and writers of long copies: it
// counts the bytes that move through them and reports the running total
// (the progress of layer unpacks, container commits, registry transfers
// and VM disk builds), and stops a copy when its context is done.
package ioprogress

import (
	"context"
	"io"
)

// WithContext returns a reader of r that fails with ctx.Err(), before
// reading, once ctx is done: a long io.Copy from it ends soon after a
// cancel.
func WithContext(ctx context.Context, r io.Reader) io.Reader {
	return ctxReader{ctx: ctx, r: r}
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// Reader counts the bytes read through R. After each read that returned
// bytes it calls Fn (when not nil) with the total so far. It keeps the
// first read error other than io.EOF in Err, so a caller whose consumer
// reported something vaguer (a truncated tar) can say what went wrong.
//
// A Reader is not safe for concurrent use; read N and Err after the reads.
type Reader struct {
	R   io.Reader
	Fn  func(total int64)
	N   int64 // bytes read so far
	Err error // first error of R other than io.EOF
}

var _ io.Reader = (*Reader)(nil)

func (r *Reader) Read(p []byte) (int, error) {
	n, err := r.R.Read(p)
	r.N += int64(n)
	if err != nil && err != io.EOF && r.Err == nil {
		r.Err = err
	}
	if n > 0 && r.Fn != nil {
		r.Fn(r.N)
	}
	return n, err
}

// Writer counts the bytes written through W and, after each write that
// took bytes, calls Fn (when not nil) with the total so far.
//
// A Writer is not safe for concurrent use.
type Writer struct {
	W  io.Writer
	Fn func(total int64)
	N  int64 // bytes written so far
}

var _ io.Writer = (*Writer)(nil)

func (w *Writer) Write(p []byte) (int, error) {
	n, err := w.W.Write(p)
	w.N += int64(n)
	if n > 0 && w.Fn != nil {
		w.Fn(w.N)
	}
	return n, err
}
