package dedup

import (
	"archive/tar"
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/imgtool/imgtool/internal/jobs"
	"github.com/imgtool/imgtool/internal/zero"
	"github.com/imgtool/imgtool/layers"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// LayoutReport sums the OCI image layout inputs. Each distinct layer blob
// (by digest) is read once, however many images use it. Chunk figures are
// over the uncompressed tar streams cut by FastCDC (CDCAvgSize average):
// TotalBytes = ZeroBytes + UniqueBytes + DuplicateBytes.
type LayoutReport struct {
	Layouts int `json:"layouts"`
	Images  int `json:"images"`
	// Layers is the number of distinct layer blobs, LayerRefs the number
	// of references to them from images (LayerRefs - Layers layers are
	// already shared by digest).
	Layers    int `json:"layers"`
	LayerRefs int `json:"layer-refs"`
	// TotalBytes is the size of the distinct uncompressed layer tars.
	TotalBytes     int64 `json:"total-bytes"`
	ZeroBytes      int64 `json:"zero-bytes"`
	UniqueBytes    int64 `json:"unique-bytes"`
	DuplicateBytes int64 `json:"duplicate-bytes"`
	Chunks         int64 `json:"chunks"`
	// Files is the number of regular files in the distinct layers and
	// FileBytes their size; DuplicateFiles and DuplicateFileBytes count
	// files whose content another file (in any layer) has already.
	Files              int64 `json:"files"`
	FileBytes          int64 `json:"file-bytes"`
	DuplicateFiles     int64 `json:"duplicate-files"`
	DuplicateFileBytes int64 `json:"duplicate-file-bytes"`
	// TopDuplicates lists the contents wasting the most bytes.
	TopDuplicates []DuplicateFile `json:"top-duplicates,omitempty"`
	Inputs        []LayerFigures  `json:"inputs"`
}

// DuplicateFile is content held by several files.
type DuplicateFile struct {
	Digest digest.Digest `json:"digest"`
	Size   int64         `json:"size"`
	Copies int64         `json:"copies"`
	// Example is one of its paths, as layer-digest-prefix:path.
	Example string `json:"example"`
}

// LayerFigures are the figures of one distinct layer blob.
type LayerFigures struct {
	Layout   string        `json:"layout"`
	Digest   digest.Digest `json:"digest"`
	Images   int           `json:"images"` // images of the inputs using it
	TarBytes int64         `json:"tar-bytes"`
	Files    int64         `json:"files"`
	// SharedChunkBytes is the part of the tar made of chunks that also
	// occur in another layer blob.
	SharedChunkBytes int64 `json:"shared-chunk-bytes"`
	// DuplicateFileBytes is the size of files whose content occurs in
	// another file (of this or another layer).
	DuplicateFileBytes int64 `json:"duplicate-file-bytes"`
}

// layoutLayer is one distinct layer blob to read.
type layoutLayer struct {
	layout *layers.Layout
	desc   ocispec.Descriptor
	diffID digest.Digest
	images int
}

// layoutPlan resolves every image of the layouts and lists their distinct
// layer blobs.
func layoutPlan(ctx context.Context, dirs []string) (lays []*layoutLayer, images, refs int, err error) {
	byDigest := map[digest.Digest]*layoutLayer{}
	for _, dir := range dirs {
		l, err := layers.OpenLayout(dir)
		if err != nil {
			return nil, 0, 0, fmt.Errorf("dedup: %w", err)
		}
		list, err := l.List(ctx)
		if err != nil {
			return nil, 0, 0, fmt.Errorf("dedup: %w", err)
		}
		seenManifest := map[string]bool{}
		for _, s := range list {
			for _, info := range s.Images {
				if info.Error != "" {
					return nil, 0, 0, fmt.Errorf("dedup: %s:%s: %s", dir, s.Tag, info.Error)
				}
				if seenManifest[info.Digest] {
					continue
				}
				seenManifest[info.Digest] = true
				p := info.Platform
				img, err := l.Resolve(ctx, s.Tag, layers.ResolveOptions{Platform: &p})
				if err != nil {
					return nil, 0, 0, fmt.Errorf("dedup: %w", err)
				}
				images++
				ids := img.Config.RootFS.DiffIDs
				if len(ids) != len(img.Manifest.Layers) {
					return nil, 0, 0, fmt.Errorf("dedup: %s:%s: %d layers but %d diff IDs", dir, s.Tag, len(img.Manifest.Layers), len(ids))
				}
				for i, ld := range img.Manifest.Layers {
					refs++
					if ll := byDigest[ld.Digest]; ll != nil {
						ll.images++
						continue
					}
					ll := &layoutLayer{layout: l, desc: ld, diffID: ids[i], images: 1}
					byDigest[ld.Digest] = ll
					lays = append(lays, ll)
				}
			}
		}
	}
	return lays, images, refs, nil
}

// fileEntry is what the file index keeps per distinct file content.
type fileEntry struct {
	size    int64
	copies  int64
	example string
}

// layoutScan is the shared state of a layout scan.
type layoutScan struct {
	chunks *chunkIndex
	mu     sync.Mutex
	files  map[Digest]*fileEntry
	// held counts the chunk references and file entries kept in memory
	// until the end of the scan; like the chunk index, they are bounded
	// by MaxChunks (limit; 0: none).
	held  atomic.Int64
	limit int64
}

// hold accounts for one more chunk reference or file entry.
func (st *layoutScan) hold() error {
	if n := st.held.Add(1); st.limit > 0 && n > st.limit {
		return fmt.Errorf("%w: more than %d chunks and files held by a layout scan", ErrIndexFull, st.limit)
	}
	return nil
}

func scanLayouts(ctx context.Context, dirs []string, lays []*layoutLayer, images, refs int, opts ScanOptions, prog *progress) (*LayoutReport, error) {
	rep := &LayoutReport{Layouts: len(dirs), Images: images, Layers: len(lays), LayerRefs: refs}
	st := &layoutScan{chunks: newChunkIndex(opts.maxChunks()), files: map[Digest]*fileEntry{}, limit: opts.maxChunks()}
	// Per layer: the digests and sizes of its chunks, kept to compute
	// the shared bytes once all layers are indexed (40 bytes a chunk).
	type chunkRef struct {
		d    Digest
		n    int64
		zero bool
	}
	perLayer := make([][]chunkRef, len(lays))
	fileDigests := make([][]Digest, len(lays))
	rep.Inputs = make([]LayerFigures, len(lays))
	err := jobs.ForEach(ctx, opts.workers(), len(lays), func(ctx context.Context, i int) error {
		ll := lays[i]
		f := &rep.Inputs[i]
		f.Layout, f.Digest, f.Images = ll.layout.Dir(), ll.desc.Digest, ll.images
		var refs []chunkRef
		emit := func(chunk []byte) error {
			if err := st.hold(); err != nil {
				return err
			}
			if zero.Is(chunk) {
				refs = append(refs, chunkRef{n: int64(len(chunk)), zero: true})
				return nil
			}
			refs = append(refs, chunkRef{d: sha256.Sum256(chunk), n: int64(len(chunk))})
			return nil
		}
		fds, err := st.readLayer(ctx, ll, f, emit)
		if err != nil {
			return err
		}
		perLayer[i], fileDigests[i] = refs, fds
		prog.add(ll.desc.Size)
		return nil
	})
	if err != nil {
		return nil, err
	}
	// Index the chunks layer by layer, in input order, so the figures do
	// not depend on which worker finished first.
	blobs := map[Digest]int32{} // chunk -> number of layers holding it
	for i, refs := range perLayer {
		local := map[Digest]bool{}
		for _, r := range refs {
			rep.TotalBytes += r.n
			if r.zero {
				rep.ZeroBytes += r.n
				continue
			}
			s, err := st.chunks.add(&r.d, int32(i))
			if err != nil {
				return nil, err
			}
			if s == seenNew {
				rep.UniqueBytes += r.n
			} else {
				rep.DuplicateBytes += r.n
			}
			if !local[r.d] {
				local[r.d] = true
				blobs[r.d]++
			}
		}
	}
	for i, refs := range perLayer {
		for _, r := range refs {
			if !r.zero && blobs[r.d] > 1 {
				rep.Inputs[i].SharedChunkBytes += r.n
			}
		}
	}
	rep.Chunks = st.chunks.len()
	// Files: count duplicates in input order too.
	first := map[Digest]bool{}
	for i, fds := range fileDigests {
		for _, d := range fds {
			e := st.files[d]
			rep.Files++
			rep.FileBytes += e.size
			if e.copies > 1 {
				rep.Inputs[i].DuplicateFileBytes += e.size
			}
			if first[d] && e.size > 0 {
				rep.DuplicateFiles++
				rep.DuplicateFileBytes += e.size
			}
			first[d] = true
		}
	}
	for d, e := range st.files {
		if e.copies > 1 && e.size > 0 {
			rep.TopDuplicates = append(rep.TopDuplicates, DuplicateFile{Digest: digest.NewDigestFromBytes(digest.SHA256, d[:]), Size: e.size, Copies: e.copies, Example: e.example})
		}
	}
	slices.SortFunc(rep.TopDuplicates, func(a, b DuplicateFile) int {
		wa, wb := a.Size*(a.Copies-1), b.Size*(b.Copies-1)
		if wa != wb {
			if wa > wb {
				return -1
			}
			return 1
		}
		return cmp.Compare(a.Example, b.Example)
	})
	if len(rep.TopDuplicates) > 10 {
		rep.TopDuplicates = rep.TopDuplicates[:10]
	}
	return rep, nil
}

// readLayer reads one layer blob: the uncompressed stream goes through the
// chunker (emit) while a tar reader hashes each regular file. It returns
// the digests of the layer's regular files, in order.
func (st *layoutScan) readLayer(ctx context.Context, ll *layoutLayer, f *LayerFigures, emit func([]byte) error) ([]Digest, error) {
	desc := layers.Descriptor{MediaType: ll.desc.MediaType, Digest: ll.desc.Digest, DiffID: ll.diffID, Size: ll.desc.Size}
	layer := layers.NewLayer(func() (io.ReadCloser, error) { return ll.layout.OpenBlob(ll.desc) }, desc, layers.Limits{})
	rc, err := layer.Uncompressed()
	if err != nil {
		return nil, fmt.Errorf("dedup: layer %s: %w", ll.desc.Digest, err)
	}
	defer rc.Close()
	ch := NewChunker(emit)
	tee := &ctxTee{ctx: ctx, r: rc, w: ch}
	tr := tar.NewReader(tee)
	var fds []Digest
	h := sha256.New()
	prefix := ll.desc.Digest.Encoded()[:12] + ":"
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("dedup: layer %s: %w", ll.desc.Digest, err)
		}
		if hdr.Typeflag != tar.TypeReg || strings.HasPrefix(path.Base(hdr.Name), ".wh.") {
			continue // whiteouts are markers, not files
		}
		h.Reset()
		n, err := io.Copy(h, tr)
		if err != nil {
			return nil, fmt.Errorf("dedup: layer %s: %s: %w", ll.desc.Digest, hdr.Name, err)
		}
		var d Digest
		h.Sum(d[:0])
		fds = append(fds, d)
		f.Files++
		if err := st.hold(); err != nil {
			return nil, err
		}
		st.mu.Lock()
		e := st.files[d]
		if e == nil {
			e = &fileEntry{size: n, example: prefix + hdr.Name}
			st.files[d] = e
		}
		if ex := prefix + hdr.Name; ex < e.example {
			e.example = ex // the same example whatever the worker order
		}
		if n > 0 { // empty files are not duplicates of each other
			e.copies++
		}
		st.mu.Unlock()
	}
	// The rest of the stream (tar padding) is chunked too, and reading to
	// EOF makes the layer check its diffID.
	if _, err := io.Copy(io.Discard, tee); err != nil {
		return nil, fmt.Errorf("dedup: layer %s: %w", ll.desc.Digest, err)
	}
	if err := ch.Close(); err != nil {
		return nil, err
	}
	f.TarBytes = tee.n
	return fds, nil
}

// ctxTee passes what it reads from r on to w, counting it, and stops when
// ctx is done.
type ctxTee struct {
	ctx context.Context
	r   io.Reader
	w   io.Writer
	n   int64
}

func (t *ctxTee) Read(p []byte) (int, error) {
	if err := t.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := t.r.Read(p)
	if n > 0 {
		t.n += int64(n)
		if _, werr := t.w.Write(p[:n]); werr != nil {
			return n, werr
		}
	}
	return n, err
}
