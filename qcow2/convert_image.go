package qcow2

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/imgtool/imgtool/internal/atomicfile"
)

// ConvertImageOptions configures ConvertImage. The zero value writes a
// qcow2 image with qemu-img's defaults (version 3, 64 KiB clusters,
// 16-bit refcounts), uncompressed, sparse, using GOMAXPROCS workers and
// reporting no progress.
type ConvertImageOptions struct {
	// Create describes the output: Format (FormatQcow2 by default, or
	// FormatRaw) and every create option. Size must be 0 (the source's
	// size) or equal to the source size. BackingFile (qemu-img -B) makes
	// the output an overlay of that file: only clusters whose content
	// differs from what the backing file shows are written, so the delta
	// is minimal. BackingFormat "" probes the backing file.
	Create CreateOptions
	// Compress stores data clusters compressed with
	// Create.CompressionType (qemu-img -c; qcow2 only). A cluster whose
	// compressed form is not smaller than the cluster is stored
	// uncompressed, as QEMU does.
	Compress bool
	// NoSparse writes clusters of zeros too (qemu-img -S 0). By default
	// a cluster of zeros stays unallocated, or becomes a zero cluster
	// when a backing file would show through with other content.
	NoSparse bool
	// SparseSize is the zero-detection granularity of raw output
	// (qemu-img -S; see ConvertOptions). qcow2 output detects zeros per
	// cluster.
	SparseSize int64
	// Workers is the number of goroutines reading, comparing and
	// compressing clusters (and writing them). 0 means twice
	// runtime.GOMAXPROCS(0).
	Workers int
	// Progress, if set, is called with the guest bytes processed so far
	// and the total. Calls are serialised and done never decreases.
	Progress func(done, total int64)
	// Cache is the -t mode of the output (see CacheMode); "" is
	// CacheWriteback.
	Cache CacheMode
	// NoCreate writes into an existing dst of format Create.Format
	// instead of creating it (qemu-img convert -n): dst must be at least
	// as large as src; its first src.Size() bytes get src's content and
	// the rest is left alone. No create option other than Format
	// applies; -c and -B are refused.
	NoCreate bool
	// TargetIsZero (qemu-img --target-is-zero, with NoCreate) skips
	// writing zeros where src reads as zeros.
	TargetIsZero bool
}

// ConvertImage writes the guest content of src (a whole chain) to dst as
// a new image described by opts.Create, replacing dst if it exists.
//
// qcow2 output is written by one sequential writer behind parallel
// workers: data clusters are laid out in guest order after the L1 table,
// compressed clusters are packed back to back as QEMU packs them (a host
// cluster holding parts of several compressed clusters is counted once
// per entry), and the L2 tables, refcount blocks and header follow. dst
// is written through internal/atomicfile (see ConvertRaw): an existing
// dst in use, including one in src's chain, is refused with an
// *atomicfile.LockError, and a failed, cancelled or killed convert leaves
// no partial dst.
func ConvertImage(ctx context.Context, src *Image, dst string, opts ConvertImageOptions) error {
	if err := src.Readable(); err != nil {
		return err
	}
	co := opts.Create
	if co.Format == "" {
		co.Format = FormatQcow2
	}
	if co.Size != 0 && co.Size != src.Size() {
		return fmt.Errorf("qcow2: convert to %s: size %d differs from the source size %d", dst, co.Size, src.Size())
	}
	co.Size = src.Size()
	if opts.Workers < 0 {
		return fmt.Errorf("qcow2: convert to %s: negative Workers", dst)
	}
	if opts.Workers == 0 {
		// Reads and writes of cached data are CPU work inside syscalls;
		// more goroutines than cores keep every core busy while some
		// wait in the kernel (qemu-img keeps a pool of I/O threads too).
		opts.Workers = 2 * runtime.GOMAXPROCS(0)
	}
	if err := opts.Cache.valid(); err != nil {
		return err
	}
	if opts.NoCreate {
		opts.Create = co
		return convertExisting(ctx, src, dst, opts)
	}
	switch co.Format {
	case FormatRaw:
		switch {
		case opts.Compress:
			return fmt.Errorf("%w: compressed raw images (-c needs -O qcow2)", ErrUnsupportedFeature)
		case co.BackingFile != "":
			return fmt.Errorf("%w: a raw image cannot have a backing file", ErrUnsupportedFeature)
		case co.Preallocation != "" && co.Preallocation != PreallocOff && co.Preallocation != PreallocFull:
			return fmt.Errorf("%w: preallocation %q for raw output (off or full)", ErrUnsupportedFeature, co.Preallocation)
		}
		return ConvertRaw(ctx, src, dst, ConvertOptions{Workers: opts.Workers, Progress: opts.Progress,
			NoSparse: opts.NoSparse || co.Preallocation == PreallocFull, SparseSize: opts.SparseSize,
			Cache: opts.Cache})
	case FormatQcow2:
	default:
		return fmt.Errorf("%w: output format %q (qcow2 and raw are supported)", ErrUnsupportedFeature, co.Format)
	}
	switch co.Preallocation {
	case "", PreallocOff, PreallocMetadata, PreallocFull:
	default:
		return fmt.Errorf("qcow2: convert to %s: preallocation %q (want off, metadata or full)", dst, co.Preallocation)
	}
	prealloc := co.Preallocation == PreallocMetadata || co.Preallocation == PreallocFull
	if prealloc && opts.Compress {
		return fmt.Errorf("qcow2: convert to %s: compression and preallocation cannot be used together", dst)
	}
	var bk *Image
	if co.BackingFile != "" {
		if err := checkRefName(co.BackingFile); err != nil {
			return fmt.Errorf("%w: convert to %s: backing file %q: %v", ErrRefused, dst, co.BackingFile, err)
		}
		var err error
		bk, err = Open(combinePath(dst, co.BackingFile), Options{Format: co.BackingFormat})
		if err != nil {
			return convertError(dst+": opening backing file", err)
		}
		defer bk.Close()
		if err := bk.Readable(); err != nil {
			return err
		}
		if co.BackingFormat == "" {
			co.BackingFormat = bk.Format()
		}
	}
	h, err := createHeader(&co)
	if err != nil {
		return fmt.Errorf("qcow2: convert to %s: %w", dst, err)
	}

	// src (and bk) are open with their read locks before dst is locked
	// for writing, so a dst in src's own chain is refused, as qemu-img
	// refuses it.
	if err := opts.Cache.valid(); err != nil {
		return err
	}
	tmp, err := atomicfile.Create(dst, atomicfile.Options{Sync: opts.Cache.sync()})
	if err != nil {
		return err
	}
	defer tmp.Abort()
	out := directWriter{f: tmp.File}
	if opts.Cache.direct() {
		if out.d, err = openDirect(tmp.File, dst); err != nil {
			return err
		}
		defer out.d.Close()
	}
	cw := newClusterWriter(out, h, prealloc, co.Preallocation == PreallocFull)
	cv := &converter{
		src: src, bk: bk, cw: cw, h: h,
		cs:       h.ClusterSize(),
		compress: opts.Compress,
		noSparse: opts.NoSparse,
		prealloc: prealloc,
		workers:  opts.Workers,
		progress: opts.Progress,
	}
	if err := cv.run(ctx); err != nil {
		return convertError(dst, err)
	}
	if err := checkUnshrunk(src); err != nil {
		return err
	}
	if err := cw.finish(); err != nil {
		return convertError(dst, err)
	}
	return tmp.Commit()
}

// convertError says "qcow2: convert to DST: " before err, once: the
// "qcow2: " an inner error (a read of the source, an open) starts with is
// not repeated. Cancellation is returned as it is.
func convertError(dst string, err error) error {
	if errors.Is(err, context.Canceled) {
		return err
	}
	return &prefixedError{"qcow2: convert to " + dst + ": ", err}
}

type prefixedError struct {
	prefix string
	err    error
}

func (e *prefixedError) Error() string {
	return e.prefix + strings.TrimPrefix(e.err.Error(), "qcow2: ")
}

func (e *prefixedError) Unwrap() error { return e.err }

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

// cvJob is a run of whole guest clusters handed to a worker; the writer
// takes results in guest order through done.
type cvJob struct {
	vc0, n   int64 // first guest cluster and count
	done     chan struct{}
	clusters []cvCluster
	buf      *[]byte // pooled buffer holding the guest data, if any
	data     []byte  // guest data of the run (in buf)
	cbuf     *[]byte // compressed bytes
	err      error
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
	progress func(done, total int64)

	bufs sync.Pool
	zero []byte
}

// jobClusters is how many clusters one job covers (about 1 MiB).
func (cv *converter) jobClusters() int64 { return max(1, (1<<20)/cv.cs) }

func (cv *converter) run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	size := cv.src.Size()
	cv.zero = make([]byte, cv.cs)
	per := cv.jobClusters()
	cv.bufs.New = func() any { b := make([]byte, per*cv.cs); return &b }
	meter := newProgressMeter(cv.progress, size)

	var comp compressorFactory
	if cv.compress {
		var err error
		if comp, err = newCompressorFactory(cv.h.CompressionType, cv.cs, cv.workers); err != nil {
			return err
		}
		defer comp.close()
	}

	jobs := make(chan *cvJob, cv.workers)
	order := make(chan *cvJob, 2*cv.workers)
	var wg sync.WaitGroup
	for range cv.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var c clusterCompressor
			if comp != nil {
				c = comp.get()
			}
			var bkBuf []byte
			for j := range jobs {
				if ctx.Err() != nil {
					j.err = ctx.Err()
				} else {
					if cv.bk != nil && bkBuf == nil {
						bkBuf = make([]byte, per*cv.cs)
					}
					j.err = cv.work(j, c, bkBuf)
				}
				close(j.done)
			}
		}()
	}

	// The dispatcher cuts the guest into jobs; without a backing file or
	// preallocation only ranges holding data need work.
	var dispErr error
	go func() {
		defer close(order)
		defer close(jobs)
		clusters := (size + cv.cs - 1) / cv.cs
		emit := func(vc0, vc1 int64) bool {
			for vc := vc0; vc < vc1; {
				n := min(per-vc%per, vc1-vc)
				j := &cvJob{vc0: vc, n: n, done: make(chan struct{})}
				select {
				case order <- j:
				case <-ctx.Done():
					return false
				}
				select {
				case jobs <- j:
				case <-ctx.Done():
					close(j.done)
					j.err = ctx.Err()
					return false
				}
				vc += n
			}
			return true
		}
		if cv.bk != nil || cv.prealloc || cv.noSparse {
			emit(0, clusters)
			return
		}
		// Whole chunks of per clusters that hold some data, so that
		// jobs stay large when data and holes alternate.
		next := int64(0) // first cluster not yet emitted
		dispErr = cv.src.WalkExtents(0, size, func(e Extent) error {
			if e.Kind != KindData && e.Kind != KindCompressed {
				return nil
			}
			vc0 := max(next, e.Start/cv.cs/per*per)
			vc1 := min(clusters, ((e.Start+e.Length+cv.cs-1)/cv.cs+per-1)/per*per)
			if vc0 < vc1 {
				if !emit(vc0, vc1) {
					return ctx.Err()
				}
				next = vc1
			}
			return nil
		})
	}()

	// Data writes run on their own goroutines: the placement above is
	// sequential, the writes to disjoint host ranges are not.
	type ioJob struct {
		j    *cvJob
		segs []segment
	}
	ioCh := make(chan ioJob, cv.workers)
	var (
		ioWg   sync.WaitGroup
		ioOnce sync.Once
		ioErr  error
	)
	for range cv.workers {
		ioWg.Add(1)
		go func() {
			defer ioWg.Done()
			for x := range ioCh {
				if ctx.Err() == nil {
					if err := writeSegments(cv.cw.out, x.segs); err != nil {
						ioOnce.Do(func() { ioErr = err; cancel() })
					}
				}
				cv.release(x.j)
				// Jobs finish out of order: the meter reports the bytes done.
				meter.add(x.j.n * cv.cs)
			}
		}()
	}
	var werr error
	for j := range order {
		<-j.done
		if werr != nil || j.err != nil {
			if werr == nil {
				werr = j.err
				cancel()
			}
			cv.release(j)
			continue
		}
		if err := cv.place(j); err != nil {
			werr = err
			cancel()
			cv.cw.takeSegments()
			cv.release(j)
			continue
		}
		ioCh <- ioJob{j, cv.cw.takeSegments()}
	}
	close(ioCh)
	ioWg.Wait()
	wg.Wait()
	if werr != nil {
		return werr
	}
	if ioErr != nil {
		return ioErr
	}
	if dispErr != nil {
		return dispErr
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	meter.add(size) // the last cluster may be partial: report the end
	return nil
}

func (cv *converter) release(j *cvJob) {
	if j.buf != nil {
		cv.bufs.Put(j.buf)
		j.buf = nil
	}
	j.data = nil
	if j.cbuf != nil {
		cv.bufs.Put(j.cbuf)
		j.cbuf = nil
	}
	j.clusters = nil
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
		return readGuestAt(img, p[s-off:t-off], s)
	})
	if err != nil {
		return err
	}
	clear(p[pos-off:])
	return nil
}

// work classifies (and compresses) the clusters of one job.
func (cv *converter) work(j *cvJob, c clusterCompressor, bkBuf []byte) error {
	cs := cv.cs
	off, n := j.vc0*cs, j.n*cs
	j.clusters = make([]cvCluster, j.n)
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
		return nil // all zeros on both sides: nothing to write
	}
	var holes []bool
	if cv.bk == nil && !cv.noSparse && !cv.prealloc {
		holes = make([]bool, j.n)
	}
	var buf []byte
	j.buf = cv.bufs.Get().(*[]byte)
	buf = (*j.buf)[:n]
	if srcData {
		if err := readDataOnly(cv.src, buf, off, cs, holes); err != nil {
			return err
		}
	} else {
		clear(buf)
	}
	j.data = buf
	var bb []byte
	if bkData {
		bb = bkBuf[:n]
		if err := readGuestAt(cv.bk, bb, off); err != nil {
			return err
		}
	}
	if c != nil {
		j.cbuf = cv.bufs.Get().(*[]byte)
		*j.cbuf = (*j.cbuf)[:0]
	}
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
			start := len(*j.cbuf)
			out, err := c.compress((*j.cbuf), b)
			if err != nil {
				return err
			}
			*j.cbuf = out
			if int64(len(out)-start) < cs {
				j.clusters[i] = cvCluster{kind: cvComp, data: out[start:len(out):len(out)]}
				continue
			}
			*j.cbuf = out[:start]
		}
		j.clusters[i] = cvCluster{kind: kind}
		if kind == cvData {
			j.clusters[i].data = b
		}
	}
	// Compressed slices were taken while cbuf could still grow; re-slice
	// them from the final buffer (append may have moved it).
	if c != nil {
		pos := 0
		for i := range j.clusters {
			if cl := &j.clusters[i]; cl.kind == cvComp {
				l := len(cl.data)
				cl.data = (*j.cbuf)[pos : pos+l : pos+l]
				pos += l
			}
		}
	}
	return nil
}

// place hands the clusters of a finished job to the writer, in order.
func (cv *converter) place(j *cvJob) error {
	for i := int64(0); i < j.n; {
		cl := j.clusters[i]
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
			for k < j.n && j.clusters[k].kind == cvData {
				k++
			}
			data := j.data[i*cv.cs : k*cv.cs]
			if err := cv.cw.writeData(vc, k-i, data); err != nil {
				return err
			}
			i = k
		}
	}
	return nil
}

// clusterWriter lays out a new qcow2 image sequentially: cluster 0 holds
// the header, the L1 table follows, then data in the order it arrives,
// and finish appends the L2 tables and the refcount structures and
// writes the header. It is used by one goroutine.
type clusterWriter struct {
	out        directWriter // the output file (O_DIRECT for aligned writes under -t none)
	h          *Header
	cs         int64
	cb         uint32
	extL2      bool
	words      int64 // 64-bit words per L2 entry
	backing    bool
	prealloc   bool
	writeZeros bool // full preallocation: zeros are written, not holes
	maxRef     uint64

	l1Off    int64
	l1       []uint64
	l2       map[int64][]uint64
	refs     []uint32 // refcount per host cluster
	next     int64    // first free cluster-aligned host offset
	freeByte int64    // qemu's free_byte_offset: where packing continues, 0 if none

	segs []segment // writes queued since the last takeSegments
}

func newClusterWriter(out directWriter, h *Header, prealloc, full bool) *clusterWriter {
	cs := h.ClusterSize()
	w := &clusterWriter{
		out: out, h: h, cs: cs, cb: h.ClusterBits,
		extL2:      h.ExtendedL2(),
		words:      1,
		backing:    h.BackingFile != "",
		prealloc:   prealloc,
		writeZeros: full,
		l1:         make([]uint64, h.L1Size),
		l2:         map[int64][]uint64{},
	}
	if w.extL2 {
		w.words = 2
	}
	if rb := h.RefcountBits(); rb >= 32 {
		w.maxRef = 1<<32 - 1
	} else {
		w.maxRef = 1<<rb - 1
	}
	w.ref(0, 1) // header
	w.next = cs
	if l1Bytes := int64(h.L1Size) * 8; l1Bytes > 0 {
		w.l1Off = cs
		n := (l1Bytes + cs - 1) / cs
		for i := range n {
			w.ref(1+i, 1)
		}
		w.next += n * cs
	}
	return w
}

// ref adds d to the refcount of host cluster c.
func (w *clusterWriter) ref(c int64, d uint32) {
	for int64(len(w.refs)) <= c {
		w.refs = append(w.refs, make([]uint32, max(1024, len(w.refs)))...)
	}
	w.refs[c] += d
}

// entry returns the L2 entry words of guest cluster vc, creating its
// table.
func (w *clusterWriter) entry(vc int64) []uint64 {
	l2Entries := w.cs / 8 / w.words
	l1i := vc / l2Entries
	t := w.l2[l1i]
	if t == nil {
		t = make([]uint64, w.cs/8)
		w.l2[l1i] = t
	}
	i := (vc % l2Entries) * w.words
	return t[i : i+w.words]
}

func (w *clusterWriter) setZero(vc int64) {
	e := w.entry(vc)
	if w.extL2 {
		e[0], e[1] = 0, bitmapAllocMask<<32
		return
	}
	e[0] = entryZero
}

// writeData stores n whole guest clusters from vc at the next free host
// clusters (data holds them, the last one possibly short).
func (w *clusterWriter) writeData(vc, n int64, data []byte) error {
	host := w.next
	zeros := w.prealloc && !w.writeZeros && n == 1 && bytes.Equal(data, make([]byte, len(data)))
	if !zeros {
		if err := w.write(data, host); err != nil {
			return err
		}
	}
	for i := range n {
		e := w.entry(vc + i)
		e[0] = uint64(dataEntry(host + i*w.cs))
		if w.extL2 {
			e[1] = bitmapAllocMask
		}
		w.ref((host+i*w.cs)>>w.cb, 1)
	}
	w.next += n * w.cs
	return nil
}

// writeCompressed packs the compressed bytes of guest cluster vc after
// the previous ones, as QEMU's qcow2_alloc_bytes does: into the rest of
// the current host cluster when they fit, running on into the next host
// cluster when that is the next free one, else at a new cluster.
func (w *clusterWriter) writeCompressed(vc int64, data []byte) error {
	size := int64(len(data))
	off := w.freeByte
	if off != 0 && uint64(w.refs[off>>w.cb]) >= w.maxRef {
		off = 0
	}
	free := w.cs - off&(w.cs-1)
	if off == 0 || free < size {
		if off == 0 || (off+w.cs-1)&^(w.cs-1) != w.next {
			off = w.next
		}
		w.next = (off + size + w.cs - 1) &^ (w.cs - 1)
	}
	for c := off >> w.cb; c <= (off+size-1)>>w.cb; c++ {
		w.ref(c, 1)
	}
	w.freeByte = off + size
	if w.freeByte&(w.cs-1) == 0 {
		w.freeByte = 0
	}
	if err := w.write(data, off); err != nil {
		return err
	}
	e := w.entry(vc)
	e[0] = uint64(compressedEntry(w.cb, off, size))
	if w.extL2 {
		e[1] = 0
	}
	return nil
}

// segment is bytes of a job to write at a host offset; contiguous
// segments form one vectored write.
type segment struct {
	off  int64
	bufs [][]byte
	n    int64
}

// write queues p (which must stay valid until the job's segments are
// written) for host offset off.
func (w *clusterWriter) write(p []byte, off int64) error {
	if k := len(w.segs) - 1; k >= 0 && w.segs[k].off+w.segs[k].n == off && len(w.segs[k].bufs) < 1024 {
		w.segs[k].bufs = append(w.segs[k].bufs, p)
		w.segs[k].n += int64(len(p))
		return nil
	}
	w.segs = append(w.segs, segment{off: off, bufs: [][]byte{p}, n: int64(len(p))})
	return nil
}

// takeSegments returns the queued writes and starts a new queue.
func (w *clusterWriter) takeSegments() []segment {
	s := w.segs
	w.segs = nil
	return s
}

// writeSegments performs queued writes; safe to call from several
// goroutines for disjoint segments.
func writeSegments(out directWriter, segs []segment) error {
	for _, s := range segs {
		if err := pwritev(out.pick(s.bufs, s.off), s.bufs, s.off); err != nil {
			return err
		}
	}
	return nil
}

// finish writes the L2 tables, L1 table, refcount blocks and table, and
// the header.
func (w *clusterWriter) finish() error {
	cs := w.cs
	// L2 tables in guest order.
	keys := make([]int64, 0, len(w.l2))
	for k := range w.l2 {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if len(keys) > 0 {
		tables := make([]byte, int64(len(keys))*cs)
		for i, k := range keys {
			t := tables[int64(i)*cs:]
			for j, e := range w.l2[k] {
				binary.BigEndian.PutUint64(t[j*8:], e)
			}
			host := w.next + int64(i)*cs
			w.l1[k] = uint64(host) | entryCopied
			w.ref(host>>w.cb, 1)
		}
		if err := w.write(tables, w.next); err != nil {
			return err
		}
		w.next += int64(len(keys)) * cs
	}
	if len(w.l1) > 0 {
		raw := make([]byte, (int64(len(w.l1))*8+cs-1)/cs*cs)
		for i, e := range w.l1 {
			binary.BigEndian.PutUint64(raw[i*8:], e)
		}
		if err := w.write(raw, w.l1Off); err != nil {
			return err
		}
	}
	// Refcount blocks, then the table, after everything else; they count
	// themselves.
	used := w.next >> w.cb
	perBlock := cs * 8 >> w.h.RefcountOrder
	var blocks, table int64
	for {
		nb := (used + blocks + table + perBlock - 1) / perBlock
		nt := (nb*8 + cs - 1) / cs
		if nb == blocks && nt == table {
			break
		}
		blocks, table = nb, nt
	}
	for c := used; c < used+blocks+table; c++ {
		w.ref(c, 1)
	}
	meta := make([]byte, (blocks+table)*cs)
	order := w.h.RefcountOrder
	for c := int64(0); c < used+blocks+table; c++ {
		if c >= int64(len(w.refs)) || w.refs[c] == 0 {
			continue
		}
		blk := meta[c/perBlock*cs : (c/perBlock+1)*cs]
		setRefcount(blk, order, c%perBlock, uint64(w.refs[c]))
	}
	tbl := meta[blocks*cs:]
	for i := range blocks {
		binary.BigEndian.PutUint64(tbl[i*8:], uint64(w.next+i*cs))
	}
	if err := w.write(meta, w.next); err != nil {
		return err
	}
	w.h.L1TableOffset = uint64(w.l1Off)
	w.h.RefcountTableOffset = uint64(w.next + blocks*cs)
	w.h.RefcountTableClusters = uint32(table)
	w.next += (blocks + table) * cs
	hdr, err := w.h.MarshalBinary()
	if err != nil {
		return err
	}
	if err := w.write(hdr, 0); err != nil {
		return err
	}
	return writeSegments(w.out, w.takeSegments())
}
