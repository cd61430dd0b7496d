package qcow2

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"

	"github.com/imgtool/imgtool/internal/zero"
)

// RebaseOptions configures Rebase. The zero value (with Backing set) is
// a safe rebase, as `qemu-img rebase -b NEW FILE`, with twice GOMAXPROCS
// workers and no progress reporting.
type RebaseOptions struct {
	// Backing is the new backing file name as it will be stored; a
	// relative name is relative to the image's directory. "" removes the
	// backing file: a safe rebase then flattens the chain into the image.
	Backing string
	// BackingFormat is the new backing file's format; "" probes it (in
	// safe mode) and records what was found.
	BackingFormat Format
	// Unsafe only rewrites the backing reference (qemu-img rebase -u):
	// no data is compared or copied and the old backing file need not
	// exist.
	Unsafe bool
	// Compress writes the copied clusters compressed with the image's
	// compression type (qemu-img rebase -c).
	Compress bool
	// Workers is the number of goroutines comparing clusters. 0 means
	// twice runtime.GOMAXPROCS(0).
	Workers int
	// Progress, if set, is called with the guest bytes processed so far
	// and the total. Calls are serialised and done never decreases.
	Progress func(done, total int64)
	// Cache is the -t mode of the writes to the image (qemu-img rebase
	// -t); "" is CacheWriteback.
	Cache CacheMode
	// CheckReference, if set, vets every backing reference before it is
	// opened: those of the image's chain, the new Backing name (as a
	// reference the image will hold) and those of its chain (see
	// Options.CheckReference and ConfineTo).
	CheckReference func(Reference) error
}

// Rebase changes the backing file of the qcow2 image at path.
//
// In safe mode the image keeps reading the same: every cluster it does
// not allocate itself and whose content differs between the old and the
// new backing chain is copied into it first (clusters that read the same
// are not copied, so the delta is minimal), the data is flushed, and only
// then is the header rewritten. The header update writes the new backing
// name into free space of cluster 0 first and then switches to it with
// one write of the header's first sector, so a crash leaves either the
// old or the new reference.
func Rebase(ctx context.Context, path string, opts RebaseOptions) error {
	var err error
	if opts.Workers, err = workerCount("rebase", path, opts.Workers); err != nil {
		return err
	}
	if opts.Backing != "" {
		if err := checkRefName(opts.Backing); err != nil {
			return fmt.Errorf("%w: rebase %s: backing file %q: %v", ErrRefused, path, opts.Backing, err)
		}
		if len(opts.Backing) > maxBackingNameSize {
			return fmt.Errorf("qcow2: rebase %s: backing file name longer than %d bytes", path, maxBackingNameSize)
		}
	}
	if err := opts.Cache.valid(); err != nil {
		return err
	}
	switch opts.BackingFormat {
	case "", FormatQcow2, FormatRaw:
	default:
		return fmt.Errorf("%w: rebase %s: backing format %q", ErrUnsupportedFeature, path, opts.BackingFormat)
	}
	if opts.CheckReference != nil && opts.Backing != "" {
		ref := Reference{Kind: "backing", Image: path, Name: opts.Backing, Path: combinePath(path, opts.Backing)}
		if err := opts.CheckReference(ref); err != nil {
			return fmt.Errorf("%w: rebase %s: new backing file %q: %v", ErrRefused, path, opts.Backing, err)
		}
	}
	img, err := Open(path, Options{Format: FormatQcow2, Writable: true, NoBacking: opts.Unsafe, cache: opts.Cache, CheckReference: opts.CheckReference})
	if err != nil {
		return err // names the file already
	}
	defer img.Close()
	if opts.Compress && opts.Unsafe {
		return fmt.Errorf("qcow2: rebase %s: -c has no effect with -u", path)
	}
	if !opts.Unsafe {
		if err := img.Readable(); err != nil {
			return err
		}
		var nb *Image
		if opts.Backing != "" {
			if nb, err = Open(combinePath(path, opts.Backing), Options{Format: opts.BackingFormat, CheckReference: opts.CheckReference}); err != nil {
				return fmt.Errorf("qcow2: rebase %s: opening the new backing file: %w", path, err)
			}
			defer nb.Close()
			if err := nb.Readable(); err != nil {
				return err
			}
			if opts.BackingFormat == "" {
				opts.BackingFormat = nb.Format()
			}
		}
		if err := rebaseCopy(ctx, img, nb, opts); err != nil {
			return fmt.Errorf("qcow2: rebase %s: %w", path, err)
		}
		if err := img.Flush(); err != nil {
			return fmt.Errorf("qcow2: rebase %s: %w", path, err)
		}
	}
	if opts.Unsafe && opts.Backing != "" && opts.BackingFormat == "" {
		// Record a format, or the chain will not open again: probe the
		// new backing file when it is there, else refuse, as qemu-img
		// does ("backing format must be specified").
		nb, err := Open(combinePath(path, opts.Backing), Options{NoBacking: true, ForceShare: true})
		if err != nil {
			return fmt.Errorf("%w (-F): rebase %s: %s can't be probed: %v", ErrBackingFormatNeeded, path, opts.Backing, err)
		}
		opts.BackingFormat = nb.Format()
		nb.Close()
	}
	if err := img.w.setBacking(opts.Backing, opts.BackingFormat); err != nil {
		return fmt.Errorf("qcow2: rebase %s: %w", path, err)
	}
	return img.Close()
}

// rebaseCopy copies into img every range it does not allocate whose
// content differs between its current backing chain and nb (nil: zeros).
func rebaseCopy(ctx context.Context, img, nb *Image, opts RebaseOptions) error {
	size := img.Size()
	cs := img.ClusterSize()
	unit := max(cs, 1<<20)
	advance := newProgressMeter(opts.Progress, size).add
	var comp compressorFactory
	if opts.Compress {
		var err error
		if comp, err = newCompressorFactory(img.compression, cs, opts.Workers); err != nil {
			return err
		}
		defer comp.close()
	}
	pk := &packer{}
	type job struct {
		off, n  int64
		oldData bool
	}
	worker := func() func(job) error {
		oldBuf := make([]byte, unit)
		newBuf := make([]byte, unit)
		var c clusterCompressor
		if comp != nil {
			c = comp.get()
		}
		return func(j job) error {
			if err := rebaseRange(img, nb, j.off, j.n, j.oldData, oldBuf[:j.n], newBuf[:j.n], c, pk); err != nil {
				return err
			}
			advance(j.n)
			return nil
		}
	}
	// When the new backing file is part of the old chain, ranges decided
	// by it or below read the same before and after: skip them, as
	// qemu-img does.
	same := -1
	if nb != nil {
		if fi, err := os.Stat(nb.Path()); err == nil {
			for d, l := 1, img.Backing(); l != nil; d, l = d+1, l.Backing() {
				if li, err := os.Stat(l.Path()); err == nil && os.SameFile(fi, li) && l.Format() == nb.Format() {
					same = d
					break
				}
			}
		}
	}
	return runPool(ctx, opts.Workers, worker, func(ctx context.Context, emit func(job) error) error {
		return img.WalkExtents(0, size, func(e Extent) error {
			if e.Depth == 0 && e.Kind != KindUnallocated || same > 0 && e.Depth >= same {
				advance(e.Length) // content that does not change
				return nil
			}
			oldData := e.Kind == KindData || e.Kind == KindCompressed
			for off, end := e.Start, e.Start+e.Length; off < end; {
				next := min(end, (off/unit+1)*unit)
				if err := emit(job{off, next - off, oldData}); err != nil {
					return err
				}
				off = next
			}
			return nil
		})
	})
}

// rebaseRange handles [off, off+n) of img, a range img does not allocate:
// pieces (cut at img's cluster boundaries) whose old content differs
// from the new backing's are written into img.
func rebaseRange(img, nb *Image, off, n int64, oldData bool, oldBuf, newBuf []byte, c clusterCompressor, pk *packer) error {
	newData := false
	if nb != nil && off < nb.Size() {
		var err error
		if newData, err = hasData(nb, off, n); err != nil {
			return err
		}
	}
	if !oldData && !newData {
		return nil // zeros on both sides
	}
	if oldData {
		if err := readGuestAt(img, oldBuf, off); err != nil {
			return err
		}
	} else {
		clear(oldBuf)
	}
	if newData {
		if err := readGuestAt(nb, newBuf, off); err != nil {
			return err
		}
	} else {
		clear(newBuf)
	}
	cs := img.ClusterSize()
	// Runs of differing pieces are written together.
	runStart, runZero := int64(-1), true
	flush := func(end int64) error {
		if runStart < 0 {
			return nil
		}
		s, e := runStart, end
		runStart = -1
		if runZero {
			return img.WriteZeroes(off+s, e-s)
		}
		if c != nil {
			return img.w.writeCompressedRange(oldBuf[s:e], off+s, c, pk)
		}
		_, err := img.WriteAt(oldBuf[s:e], off+s)
		return err
	}
	for p := int64(0); p < n; {
		q := min(n, (off+p)/cs*cs+cs-off)
		if bytes.Equal(oldBuf[p:q], newBuf[p:q]) {
			if err := flush(p); err != nil {
				return err
			}
		} else {
			isZero := !oldData || zero.Is(oldBuf[p:q])
			if runStart >= 0 && isZero != runZero {
				if err := flush(p); err != nil {
					return err
				}
			}
			if runStart < 0 {
				runStart, runZero = p, isZero
			}
		}
		p = q
	}
	return flush(n)
}

// writeCompressedRange writes whole guest clusters of data at off
// compressed (partial clusters, and clusters that do not shrink, are
// written normally), packed through pk.
func (w *writer) writeCompressedRange(data []byte, off int64, c clusterCompressor, pk *packer) error {
	cs := w.cs()
	img := w.img
	for len(data) > 0 {
		n := min(int64(len(data)), cs-off%cs)
		if off%cs != 0 || n < cs && off+n < img.size {
			if _, err := img.WriteAt(data[:n], off); err != nil {
				return err
			}
			data, off = data[n:], off+n
			continue
		}
		cluster := data[:n]
		if n < cs {
			cluster = make([]byte, cs)
			copy(cluster, data[:n])
		}
		out, err := c.compress(nil, cluster)
		if err != nil {
			return err
		}
		if int64(len(out)) >= cs {
			if _, err := img.WriteAt(data[:n], off); err != nil {
				return err
			}
		} else if err := w.putCompressed(off>>w.cb(), out, pk); err != nil {
			return err
		}
		data, off = data[n:], off+n
	}
	return nil
}

// packer remembers where the last compressed cluster ended, so that the
// next one is packed behind it in the same host cluster, as QEMU packs
// them. It is guarded by the writer's metadata mutex.
type packer struct {
	next int64 // free byte offset in a partly used host cluster, 0 if none
}

// putCompressed stores compressed bytes as guest cluster vc, which the
// image does not allocate. They go behind the previous compressed
// cluster when they fit in its host cluster (whose refcount is raised
// once more: one reference per entry), else at fresh host clusters.
// Refcounts are raised before the data is written and the L2 entry set,
// so the usual flush ordering keeps the image consistent.
func (w *writer) putCompressed(vc int64, out []byte, pk *packer) error {
	w.ops.RLock()
	defer w.ops.RUnlock()
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.refusal(); err != nil {
		return err
	}
	w.reserve(vc)
	defer w.release(vc)
	old, _, err := w.entry(vc)
	if err != nil {
		return w.fail(err)
	}
	if err := w.beforeAlloc(); err != nil {
		return err
	}
	size := int64(len(out))
	cs := w.cs()
	host := int64(0)
	if off := pk.next; off != 0 && cs-off%cs >= size {
		c := off >> w.cb()
		if ref, err := w.rc.get(c); err == nil && ref >= 1 && ref < w.rc.maxVal {
			if _, err := w.rc.add(c, 1); err != nil {
				return w.fail(err)
			}
			host = off
		}
	}
	if host == 0 {
		if host, err = w.rc.alloc((size + cs - 1) >> w.cb()); err != nil {
			return w.fail(err)
		}
	}
	if err := w.meta.check(host, size, metaNone); err != nil {
		return w.fail(err)
	}
	if err := writeFull(w.st, out, host); err != nil {
		return w.fail(fmt.Errorf("qcow2: writing %s: %w", w.path, err))
	}
	pk.next = host + size
	if pk.next%cs == 0 {
		pk.next = 0
	}
	w.dataWritten = true
	w.growFileSize()
	if err := w.setEntry(vc, compressedEntry(w.cb(), host, size), 0); err != nil {
		return w.fail(err)
	}
	w.freeEntry(old)
	return w.maybeFlush()
}

// setBacking rewrites the backing file reference (name "" removes it)
// crash-safely: the new name goes to free space in cluster 0 and is
// synced, then the header and its extensions, which point at it, are
// written in one write and synced.
func (w *writer) setBacking(name string, format Format) error {
	img := w.img
	w.lockAll()
	defer w.unlockAll()
	if w.closed {
		return ErrClosed
	}
	if err := w.flushLocked(); err != nil {
		return err
	}
	h := img.hdr
	oldBuf, err := h.MarshalBinary()
	if err != nil {
		return err
	}
	oldEnd := int64(len(oldBuf))
	if h.BackingFileOffset != 0 {
		oldEnd = max(oldEnd, int64(h.BackingFileOffset)+int64(h.BackingFileSize))
	}
	nh := *h
	nh.Extensions = nil
	for _, e := range h.Extensions {
		if e.Type != ExtBackingFormat {
			nh.Extensions = append(nh.Extensions, e)
		}
	}
	nh.BackingFormat = ""
	if name != "" && format != "" {
		nh.BackingFormat = string(format)
		// The backing format extension goes first, where QEMU puts it.
		nh.Extensions = append([]Extension{{Type: ExtBackingFormat, Data: []byte(format)}}, nh.Extensions...)
	}
	nh.BackingFile = ""
	buf, err := nh.MarshalBinary()
	if err != nil {
		return err
	}
	cs := w.cs()
	if name != "" {
		nameOff := (max(int64(len(buf)), oldEnd) + 7) &^ 7
		if nameOff+int64(len(name)) > cs {
			// No free space after the old header: place the name right
			// after the extensions (one write, as QEMU does).
			nameOff = int64(len(buf))
			if nameOff+int64(len(name)) > cs {
				return fmt.Errorf("header and backing file name do not fit in a cluster of %d bytes", cs)
			}
			buf = append(buf, name...)
		} else {
			if err := writeFull(w.st, []byte(name), nameOff); err != nil {
				return fmt.Errorf("qcow2: writing header of %s: %w", w.path, err)
			}
			if err := w.sync(); err != nil {
				return err
			}
		}
		binary.BigEndian.PutUint64(buf[8:], uint64(nameOff))
		binary.BigEndian.PutUint32(buf[16:], uint32(len(name)))
		nh.BackingFileOffset = uint64(nameOff)
		nh.BackingFileSize = uint32(len(name))
	} else {
		nh.BackingFileOffset, nh.BackingFileSize = 0, 0
	}
	nh.BackingFile = name
	if err := w.meta.check(0, int64(len(buf)), metaHeader); err != nil {
		return w.fail(err)
	}
	if err := writeFull(w.st, buf, 0); err != nil {
		return w.fail(fmt.Errorf("qcow2: writing header of %s: %w", w.path, err))
	}
	if err := w.sync(); err != nil {
		return w.fail(err)
	}
	*h = nh
	return nil
}
