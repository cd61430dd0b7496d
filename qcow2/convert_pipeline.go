package qcow2

import (
	"bytes"
	"context"
	"errors"
	"io"
	"slices"
)

// The convert pipeline to qcow2: a producer cuts the guest into jobs of
// whole clusters (about ChunkSize bytes each) and runPool's workers each
// take one job through three steps:
//
//  1. work: read the source (and the -B backing file), classify every
//     cluster and compress it, in parallel with the other workers;
//  2. place: in guest order, one job at a time (each job waits for the
//     previous one's turn), hand the clusters to the clusterWriter,
//     which assigns host offsets and queues the writes;
//  3. write the job's queued segments with vectored pwrites, again in
//     parallel, since they cover disjoint host ranges.
//
// Each worker owns its buffers, so memory is Workers jobs whatever the
// image size.

// Kinds of output cluster a convert worker decides on.
const (
	cvSkip  uint8 = iota // leave unallocated (reads as zeros or the backing file)
	cvZero               // zero cluster (version 3) over a backing file
	cvData               // store uncompressed
	cvComp               // store compressed
	cvAlloc              // preallocate a host cluster for zeros
)

type cvCluster struct {
	kind uint8
	data []byte // cvData: the cluster; cvComp: the compressed bytes
}

// cvJob is a run of whole guest clusters. Jobs are placed in guest
// order: a job places once prev (the previous job's turn) is closed, and
// closes turn when it has placed, or given up.
type cvJob struct {
	vc0, n     int64 // first guest cluster and count
	prev, turn chan struct{}
}

// cvWorker is one worker's state: its buffers and compressor.
type cvWorker struct {
	comp     clusterCompressor
	buf      []byte // guest data of the job
	bkBuf    []byte // backing file data of the job
	cbuf     []byte // compressed clusters of the job, back to back
	clusters []cvCluster
}

type converter struct {
	src, bk  *Image
	cw       *clusterWriter
	h        *Header
	cs       int64
	compress bool
	noSparse bool
	prealloc bool
	workers  int
	chunk    int64 // job size in bytes (rounded to whole clusters)
	progress func(done, total int64)

	zero []byte
}

// jobClusters is how many clusters one job covers.
func (cv *converter) jobClusters() int64 { return max(1, cv.chunk/cv.cs) }

func (cv *converter) run(ctx context.Context) error {
	// Cancelled by the first failing job, before it passes its turn on,
	// so that later jobs see the failure and don't place.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	size := cv.src.Size()
	cv.zero = make([]byte, cv.cs)
	per := cv.jobClusters()
	meter := newProgressMeter(cv.progress, size)

	var comp compressorFactory
	if cv.compress {
		var err error
		if comp, err = newCompressorFactory(cv.h.CompressionType, cv.cs, cv.workers); err != nil {
			return err
		}
		defer comp.close()
	}

	newWorker := func() func(cvJob) error {
		w := &cvWorker{buf: make([]byte, per*cv.cs)}
		if comp != nil {
			w.comp = comp.get()
		}
		if cv.bk != nil {
			w.bkBuf = make([]byte, per*cv.cs)
		}
		return func(j cvJob) error {
			segs, err := cv.workAndPlace(ctx, w, j)
			if err != nil {
				cancel()
			}
			close(j.turn)
			if err == nil {
				// Writes to disjoint host ranges: in parallel, after
				// the turn is passed on.
				if err = writeSegments(cv.cw.out, segs); err != nil {
					cancel()
				}
			}
			if err == nil {
				meter.add(j.n * cv.cs)
			}
			return err
		}
	}

	// The producer cuts the guest into jobs; without a backing file or
	// preallocation only ranges holding data need work.
	produce := func(pctx context.Context, emit func(cvJob) error) error {
		clusters := (size + cv.cs - 1) / cv.cs
		var prev chan struct{}
		emitRange := func(vc0, vc1 int64) error {
			for vc := vc0; vc < vc1; {
				n := min(per-vc%per, vc1-vc)
				j := cvJob{vc0: vc, n: n, prev: prev, turn: make(chan struct{})}
				if err := emit(j); err != nil {
					return err
				}
				prev = j.turn
				vc += n
			}
			return nil
		}
		if cv.bk != nil || cv.prealloc || cv.noSparse {
			return emitRange(0, clusters)
		}
		// Whole chunks of per clusters that hold some data, so that
		// jobs stay large when data and holes alternate.
		next := int64(0) // first cluster not yet emitted
		err := cv.src.WalkExtents(0, size, func(e Extent) error {
			if e.Kind != KindData && e.Kind != KindCompressed {
				return nil
			}
			vc0 := max(next, e.Start/cv.cs/per*per)
			vc1 := min(clusters, ((e.Start+e.Length+cv.cs-1)/cv.cs+per-1)/per*per)
			if vc0 < vc1 {
				if err := emitRange(vc0, vc1); err != nil {
					return err
				}
				next = vc1
			}
			return pctx.Err()
		})
		if err != nil {
			cancel() // jobs waiting for a turn that never comes stop
		}
		return err
	}
	if err := runPool(ctx, cv.workers, newWorker, produce); err != nil {
		return err
	}
	meter.add(size) // the last cluster may be partial: report the end
	return nil
}

// workAndPlace works on job j, then, in its turn, places its clusters
// and returns the writes that place queued (still to be done).
func (cv *converter) workAndPlace(ctx context.Context, w *cvWorker, j cvJob) ([]segment, error) {
	if err := cv.work(j, w); err != nil {
		return nil, err
	}
	if j.prev != nil {
		select {
		case <-j.prev:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	// A job that failed or gave up passed its turn on after cancelling:
	// nothing may be placed after it.
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	err := cv.place(j, w)
	segs := cv.cw.takeSegments()
	if err != nil {
		return nil, err
	}
	return segs, nil
}

// hasData reports whether img stores anything but zeros in [off,
// off+n).
func hasData(img *Image, off, n int64) (bool, error) {
	found := false
	err := img.WalkExtents(off, n, func(e Extent) error {
		if e.Kind == KindData || e.Kind == KindCompressed {
			found = true
			return io.EOF
		}
		return nil
	})
	if errors.Is(err, io.EOF) {
		err = nil
	}
	return found, err
}

// readGuestAt reads [off, off+len(p)) of img; bytes past its size read
// as zeros.
func readGuestAt(img *Image, p []byte, off int64) error {
	if off >= img.Size() {
		clear(p)
		return nil
	}
	n := min(int64(len(p)), img.Size()-off)
	if _, err := img.ReadAt(p[:n], off); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	clear(p[n:])
	return nil
}

// readDataOnly reads [off, off+len(p)) of img like readGuestAt, but
// reads only the ranges that hold data and clears the others.
//
// With holes set (one flag per cluster of size cs from off), clusters
// that lie wholly in zero ranges are flagged there and left uncleared.
func readDataOnly(img *Image, p []byte, off int64, cs int64, holes []bool) error {
	end := off + int64(len(p))
	pos := off
	err := img.WalkExtents(off, int64(len(p)), func(e Extent) error {
		s, t := max(e.Start, off), min(e.Start+e.Length, end)
		if s >= t {
			return nil
		}
		clear(p[pos-off : s-off])
		pos = t
		if e.Kind != KindData && e.Kind != KindCompressed {
			if holes == nil {
				clear(p[s-off : t-off])
				return nil
			}
			c0, c1 := (s-off+cs-1)/cs, (t-off)/cs
			if t == end {
				c1 = int64(len(holes))
			}
			if c0 >= c1 {
				clear(p[s-off : t-off])
				return nil
			}
			clear(p[s-off : c0*cs])
			clear(p[min(c1*cs, t-off) : t-off])
			for c := c0; c < c1; c++ {
				holes[c] = true
			}
			return nil
		}
		return readExtent(img, e, p[s-off:t-off], s)
	})
	if err != nil {
		return err
	}
	clear(p[pos-off:])
	return nil
}

// work classifies (and compresses) the clusters of one job into
// w.clusters, whose data point into w's buffers.
func (cv *converter) work(j cvJob, w *cvWorker) error {
	cs := cv.cs
	off, n := j.vc0*cs, j.n*cs
	w.clusters = slices.Grow(w.clusters[:0], int(j.n))[:j.n]
	clear(w.clusters)
	srcData, err := hasData(cv.src, off, n)
	if err != nil {
		return err
	}
	bkData := false
	if cv.bk != nil {
		if bkData, err = hasData(cv.bk, off, n); err != nil {
			return err
		}
	}
	if !srcData && !bkData && !cv.noSparse && !cv.prealloc {
		return nil // all zeros on both sides: nothing to write (all cvSkip)
	}
	var holes []bool
	if cv.bk == nil && !cv.noSparse && !cv.prealloc {
		holes = make([]bool, j.n)
	}
	buf := w.buf[:n]
	if srcData {
		if err := readDataOnly(cv.src, buf, off, cs, holes); err != nil {
			return err
		}
	} else {
		clear(buf)
	}
	var bb []byte
	if bkData {
		bb = w.bkBuf[:n]
		if err := readGuestAt(cv.bk, bb, off); err != nil {
			return err
		}
	}
	c := w.comp
	w.cbuf = w.cbuf[:0]
	for i := range j.n {
		b := buf[i*cs : (i+1)*cs]
		zero := !srcData || holes != nil && holes[i] || bytes.Equal(b, cv.zero)
		kind := cvData
		switch {
		case bkData && bytes.Equal(b, bb[i*cs:(i+1)*cs]):
			kind = cvSkip
		case zero && bkData && !cv.noSparse:
			kind = cvZero
			if cv.h.Version < 3 {
				kind = cvData // version 2 has no zero flag
			}
		case zero && cv.prealloc:
			kind = cvAlloc
		case zero && !cv.noSparse:
			kind = cvSkip
		}
		if kind == cvData && c != nil {
			start := len(w.cbuf)
			var out []byte
			ok := false
			if looksIncompressible(b) {
				out, ok, err = c.compressDense(w.cbuf, b)
			} else {
				out, err = c.compress(w.cbuf, b)
				ok = int64(len(out)-start) < cs
			}
			if err != nil {
				return err
			}
			if ok {
				w.cbuf = out
				w.clusters[i] = cvCluster{kind: cvComp, data: out[start:len(out):len(out)]}
				continue
			}
			if out != nil {
				w.cbuf = out[:start] // keep what the buffer grew to
			}
		}
		w.clusters[i] = cvCluster{kind: kind}
		if kind == cvData {
			w.clusters[i].data = b
		}
	}
	// Compressed slices were taken while cbuf could still grow; re-slice
	// them from the final buffer (append may have moved it).
	if c != nil {
		pos := 0
		for i := range w.clusters {
			if cl := &w.clusters[i]; cl.kind == cvComp {
				l := len(cl.data)
				cl.data = w.cbuf[pos : pos+l : pos+l]
				pos += l
			}
		}
	}
	return nil
}

// place hands the clusters of a finished job to the writer, in order.
func (cv *converter) place(j cvJob, w *cvWorker) error {
	for i := int64(0); i < j.n; {
		cl := w.clusters[i]
		vc := j.vc0 + i
		switch cl.kind {
		case cvSkip:
			i++
		case cvZero:
			cv.cw.setZero(vc)
			i++
		case cvAlloc:
			if err := cv.cw.writeData(vc, 1, cv.zero); err != nil {
				return err
			}
			i++
		case cvComp:
			if err := cv.cw.writeCompressed(vc, cl.data); err != nil {
				return err
			}
			i++
		case cvData:
			k := i + 1
			for k < j.n && w.clusters[k].kind == cvData {
				k++
			}
			data := w.buf[i*cv.cs : k*cv.cs]
			if err := cv.cw.writeData(vc, k-i, data); err != nil {
				return err
			}
			i = k
		}
	}
	return nil
}
