package vmimage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"github.com/imgtool/imgtool/internal/ioprogress"
	"github.com/imgtool/imgtool/internal/jobs"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/imgtool/imgtool/internal/registry"
	"github.com/imgtool/imgtool/qcow2"
	digest "github.com/opencontainers/go-digest"
)

// PushOptions configure Push. The zero value pushes the whole chain, one
// layer per level, with the registry package's defaults.
type PushOptions struct {
	// Registry configures credentials, TLS, timeouts and parallelism
	// (ignored when Client is set).
	Registry registry.Options
	// Client, when set, is used instead of a new one from Registry.
	Client *registry.Client
	// Flatten pushes one level, "disk" (disk/disk.qcow2), without a
	// backing file: the chain converted to a standalone qcow2 in a
	// temporary directory (TempDir) first. That is a KubeVirt
	// containerDisk.
	Flatten bool
	// TempDir is where Flatten writes its standalone image ("" means
	// os.TempDir()).
	TempDir string
	// Arch is the image config's architecture ("" means runtime.GOARCH).
	Arch string
	// Progress receives a report per blob step: each level blob is hashed
	// first (no report), then uploaded; blobs the registry had are
	// reported as registry.BlobSkipped.
	Progress registry.ProgressFunc
	// ConvertProgress, with Flatten, receives the convert's progress
	// (guest bytes done and total).
	ConvertProgress func(done, total int64)
}

// PushResult says what Push did.
type PushResult struct {
	Reference string        `json:"reference"`
	Digest    string        `json:"digest"` // of the manifest
	Levels    []PushedLevel `json:"levels"` // base first
	Uploaded  int           `json:"uploaded"`
	Skipped   int           `json:"skipped"`
	Bytes     int64         `json:"bytes"` // level blob bytes uploaded
}

// PushedLevel is one level of a push.
type PushedLevel struct {
	Name     string `json:"name"`
	Parent   string `json:"parent,omitempty"`
	Path     string `json:"path"` // the local file ("" with Flatten: a temporary)
	Digest   string `json:"digest"`
	Size     int64  `json:"size"`      // qcow2 file bytes
	BlobSize int64  `json:"blob-size"` // layer bytes
	Uploaded bool   `json:"uploaded"`  // false: the registry had it
}

// source is one level to push: a local qcow2 file streamed as its layer.
type source struct {
	Level
	path string
	// head replaces the file's first len(head) bytes in the layer: the
	// header rewritten to name PARENT.qcow2 (nil when the file already
	// does).
	head []byte
}

// Push pushes the qcow2 image at image and its whole backing chain to the
// registry reference ref (with or without docker://) as a VM chain image
// (see the package comment): one layer per level, base first, each named
// after its file (NAME.qcow2 in a chain directory; any other file by its
// base name without .qcow2, with characters outside [A-Za-z0-9._-]
// replaced by '_' and a -2, -3 ... suffix where two levels would share a
// name). A level whose backing name is not PARENT.qcow2 (format qcow2) is
// sent with only those header fields rewritten; the user's files are only
// read, under QEMU-compatible read locks.
//
// Every level is hashed first (the layer digest is needed before upload;
// nothing is copied to disk), then go-containerregistry's remote.Write
// uploads the levels the registry lacks, Jobs at a time, and the
// manifest last. The same chain always gives the same layer and manifest
// digests.
func Push(ctx context.Context, image, ref string, opts PushOptions) (*PushResult, error) {
	c, dst, err := registry.ClientRef(opts.Client, opts.Registry, ref)
	if err != nil {
		return nil, err
	}
	img, err := qcow2.Open(image, qcow2.Options{})
	if err != nil {
		return nil, err // names the file already
	}
	defer img.Close()
	var srcs []*source
	if opts.Flatten {
		dir, err := os.MkdirTemp(opts.TempDir, "imgtool-flatten-")
		if err != nil {
			return nil, fmt.Errorf("%s --flatten: %w", image, err)
		}
		defer os.RemoveAll(dir)
		flat := filepath.Join(dir, FileName(FlattenName))
		if err := qcow2.Convert(ctx, img, flat, qcow2.ConvertOptions{Progress: opts.ConvertProgress}); err != nil {
			return nil, fmt.Errorf("%s --flatten: %w", image, err)
		}
		fimg, err := qcow2.Open(flat, qcow2.Options{Format: qcow2.FormatQcow2, NoBacking: true})
		if err != nil {
			return nil, fmt.Errorf("%s --flatten: %w", image, err)
		}
		defer fimg.Close()
		s, err := newSource(fimg, FlattenName, "")
		if err != nil {
			return nil, fmt.Errorf("%s --flatten: %w", image, err)
		}
		srcs = []*source{s}
	} else if srcs, err = chainSources(img); err != nil {
		return nil, fmt.Errorf("%s: %w", image, err)
	}
	if err := hashSources(ctx, srcs, c.Options().Jobs); err != nil {
		return nil, fmt.Errorf("%s: %w", image, err)
	}
	arch := opts.Arch
	if arch == "" {
		arch = runtime.GOARCH
	}
	pi, err := newPushImage(srcs, arch, opts.Progress)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", image, err)
	}
	res := &PushResult{Reference: dst.Name(), Digest: pi.digest.String()}
	if err := remote.Write(dst, pi.img, c.RemoteOptions(ctx)...); err != nil {
		return nil, fmt.Errorf("%s to %s: %w", image, dst, c.WrapError(dst.Context().Registry, err))
	}
	pi.mu.Lock()
	defer pi.mu.Unlock()
	for _, s := range srcs {
		up := pi.uploaded[s.Digest]
		pl := PushedLevel{Name: s.Name, Parent: s.Parent, Path: s.path, Digest: s.Digest.String(), Size: s.Size, BlobSize: s.BlobSize, Uploaded: up}
		if opts.Flatten {
			pl.Path = ""
		}
		res.Levels = append(res.Levels, pl)
		if up {
			res.Uploaded++
			res.Bytes += s.BlobSize
		} else {
			res.Skipped++
			opts.Progress.Report(registry.Progress{Digest: digest.Digest(s.Digest.String()), MediaType: string(LayerMediaType), Size: s.BlobSize, Done: s.BlobSize, State: registry.BlobSkipped})
		}
	}
	return res, nil
}

// chainSources names the levels of img's chain, base first.
func chainSources(img *qcow2.Image) ([]*source, error) {
	var chain []*qcow2.Image
	for l := img; l != nil; l = l.Backing() {
		if l.Format() != qcow2.FormatQcow2 {
			return nil, fmt.Errorf("%s is a %s image: every level of a chain image is qcow2 (push --flatten converts the chain to one qcow2)", l.Path(), l.Format())
		}
		chain = append(chain, l)
	}
	if len(chain) > MaxLevels {
		return nil, fmt.Errorf("chain of %d levels, at most %d are allowed", len(chain), MaxLevels)
	}
	used := map[string]bool{}
	srcs := make([]*source, len(chain))
	parent := ""
	for i := len(chain) - 1; i >= 0; i-- {
		name := uniqueName(levelName(chain[i].Path()), used)
		s, err := newSource(chain[i], name, parent)
		if err != nil {
			return nil, err
		}
		srcs[len(chain)-1-i] = s
		parent = name
	}
	return srcs, nil
}

// levelName derives a level NAME from a file path: the base name without
// .qcow2, characters outside [A-Za-z0-9._-] replaced by '_', a leading
// '.' or '-' replaced by '_', at most MaxNameLen bytes.
func levelName(path string) string {
	base := strings.TrimSuffix(filepath.Base(path), FileExt)
	b := []byte(base)
	for i, c := range b {
		if !nameByte(c) {
			b[i] = '_'
		}
	}
	if len(b) > 0 && (b[0] == '.' || b[0] == '-') {
		b[0] = '_'
	}
	if len(b) > MaxNameLen {
		b = b[:MaxNameLen]
	}
	if len(b) == 0 {
		return "level"
	}
	return string(b)
}

// uniqueName returns name, or name-N for the smallest N >= 2 not in used,
// and marks it used.
func uniqueName(name string, used map[string]bool) string {
	out := name
	for n := 2; used[out]; n++ {
		suf := "-" + strconv.Itoa(n)
		out = name[:min(len(name), MaxNameLen-len(suf))] + suf
	}
	used[out] = true
	return out
}

// newSource describes level l (opened without or with its backing) as
// NAME name on parent, preparing the header rewrite when l does not name
// its backing file PARENT.qcow2 with format qcow2.
func newSource(l *qcow2.Image, name, parent string) (*source, error) {
	fi, err := os.Stat(l.Path())
	if err != nil {
		return nil, err
	}
	h := l.Header()
	if h.DataFile != "" {
		return nil, fmt.Errorf("%s keeps its data in the external file %q, which a chain image cannot carry", l.Path(), h.DataFile)
	}
	s := &source{Level: Level{Name: name, Parent: parent, VirtualSize: l.Size(), Size: fi.Size(), BlobSize: BlobSize(fi.Size())}, path: l.Path()}
	want := s.Backing()
	if h.BackingFile == want && (want == "" || h.BackingFormat == string(qcow2.FormatQcow2)) {
		return s, nil
	}
	old, err := h.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", l.Path(), err)
	}
	oldEnd := int64(len(old))
	if h.BackingFile != "" {
		oldEnd = max(oldEnd, int64(h.BackingFileOffset)+int64(h.BackingFileSize))
	}
	nh := *h
	nh.Extensions = append([]qcow2.Extension(nil), h.Extensions...)
	nh.BackingFile = want
	if want == "" {
		nh.RemoveExtension(qcow2.ExtBackingFormat)
	} else {
		nh.SetExtension(qcow2.ExtBackingFormat, []byte(qcow2.FormatQcow2))
	}
	head, err := nh.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("%s: naming backing file %s: %w", l.Path(), want, err)
	}
	if n := max(int64(len(head)), oldEnd); n > h.ClusterSize() || n > fi.Size() {
		return nil, fmt.Errorf("%s: the header naming backing file %s does not fit in its first cluster", l.Path(), want)
	}
	// Zero what the old header used past the new one's end.
	if pad := oldEnd - int64(len(head)); pad > 0 {
		head = append(head, make([]byte, pad)...)
	}
	s.head = head
	return s, nil
}

// open returns the level's layer: tar header, the file (header
// rewritten), padding, end-of-archive.
func (s *source) open() (io.ReadCloser, error) {
	hdr, err := Header(s.Name, s.Size)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(s.path)
	if err != nil {
		return nil, err
	}
	if fi, err := f.Stat(); err != nil || fi.Size() != s.Size {
		f.Close()
		if err == nil {
			err = fmt.Errorf("%s changed size while it was pushed (%d bytes, was %d)", s.path, fi.Size(), s.Size)
		}
		return nil, err
	}
	h := int64(len(s.head))
	r := io.MultiReader(bytes.NewReader(hdr[:]), bytes.NewReader(s.head), &exactReader{r: io.NewSectionReader(f, h, s.Size-h), n: s.Size - h, path: s.path}, bytes.NewReader(Trailer(s.Size)))
	return &readCloser{Reader: r, Closer: f}, nil
}

type readCloser struct {
	io.Reader
	io.Closer
}

// exactReader fails instead of ending early when the file shrank.
type exactReader struct {
	r    io.Reader
	n    int64
	path string
}

func (e *exactReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	e.n -= int64(n)
	if err == io.EOF && e.n > 0 {
		return n, fmt.Errorf("%s: %w (it shrank while it was pushed)", e.path, io.ErrUnexpectedEOF)
	}
	return n, err
}

// hashSources computes every level's layer digest, jobs at a time.
func hashSources(ctx context.Context, srcs []*source, workers int) error {
	return jobs.ForEach(ctx, workers, len(srcs), func(ctx context.Context, i int) error {
		s := srcs[i]
		rc, err := s.open()
		if err != nil {
			return err
		}
		defer rc.Close()
		h := sha256.New()
		buf := make([]byte, 1<<20)
		if _, err := io.CopyBuffer(h, ioprogress.WithContext(ctx, rc), buf); err != nil {
			return fmt.Errorf("hashing %s: %w", s.path, err)
		}
		s.Digest = v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
		return nil
	})
}

// pushImage is the chain as a v1.Image for remote.Write.
type pushImage struct {
	img      v1.Image
	digest   v1.Hash
	raw      []byte
	cfg      []byte
	layers   map[v1.Hash]*pushLayer
	progress registry.ProgressFunc

	mu       sync.Mutex
	uploaded map[v1.Hash]bool
}

func newPushImage(srcs []*source, arch string, progress registry.ProgressFunc) (*pushImage, error) {
	levels := make([]Level, len(srcs))
	for i, s := range srcs {
		s.Index = i
		levels[i] = s.Level
	}
	cfg, err := ConfigJSON(levels, arch)
	if err != nil {
		return nil, err
	}
	m, err := Manifest(levels, cfg)
	if err != nil {
		return nil, err
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	pi := &pushImage{raw: raw, cfg: cfg, layers: map[v1.Hash]*pushLayer{}, progress: progress, uploaded: map[v1.Hash]bool{}}
	for _, s := range srcs {
		pi.layers[s.Digest] = &pushLayer{pi: pi, s: s}
	}
	sum := sha256.Sum256(raw)
	pi.digest = v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
	if pi.img, err = partial.CompressedToImage(pi); err != nil {
		return nil, err
	}
	return pi, nil
}

// Manifest returns the manifest of a chain image with levels (base
// first, digests set) and image config cfg.
func Manifest(levels []Level, cfg []byte) (*v1.Manifest, error) {
	if len(levels) == 0 {
		return nil, fmt.Errorf("%w: no levels", ErrNotChain)
	}
	sum := sha256.Sum256(cfg)
	m := &v1.Manifest{
		SchemaVersion: 2,
		MediaType:     ManifestMediaType,
		Config:        v1.Descriptor{MediaType: ConfigMediaType, Size: int64(len(cfg)), Digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}},
		Annotations:   map[string]string{AnnotationTop: levels[len(levels)-1].Name},
	}
	for _, l := range levels {
		a := map[string]string{
			AnnotationName:        l.Name,
			AnnotationVirtualSize: strconv.FormatInt(l.VirtualSize, 10),
			AnnotationSize:        strconv.FormatInt(l.Size, 10),
			AnnotationTitle:       Title(l.Name),
		}
		if l.Parent != "" {
			a[AnnotationParent] = l.Parent
		}
		m.Layers = append(m.Layers, v1.Descriptor{MediaType: LayerMediaType, Size: BlobSize(l.Size), Digest: l.Digest, Annotations: a})
	}
	// What Push writes, Pull must accept.
	if _, err := Plan(m); err != nil {
		return nil, err
	}
	return m, nil
}

var _ partial.CompressedImageCore = (*pushImage)(nil)

func (p *pushImage) RawConfigFile() ([]byte, error)      { return p.cfg, nil }
func (p *pushImage) RawManifest() ([]byte, error)        { return p.raw, nil }
func (p *pushImage) MediaType() (types.MediaType, error) { return ManifestMediaType, nil }

func (p *pushImage) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	if l, ok := p.layers[h]; ok {
		return l, nil
	}
	return nil, fmt.Errorf("vmimage: push: no level has digest %s", h)
}

// pushLayer is one level's layer; remote.Write reads it when the registry
// lacks the blob.
type pushLayer struct {
	pi *pushImage
	s  *source
}

var _ v1.Layer = (*pushLayer)(nil)

func (l *pushLayer) Digest() (v1.Hash, error)            { return l.s.Digest, nil }
func (l *pushLayer) DiffID() (v1.Hash, error)            { return l.s.Digest, nil }
func (l *pushLayer) Size() (int64, error)                { return l.s.BlobSize, nil }
func (l *pushLayer) MediaType() (types.MediaType, error) { return LayerMediaType, nil }
func (l *pushLayer) Uncompressed() (io.ReadCloser, error) {
	return l.Compressed()
}

func (l *pushLayer) Compressed() (io.ReadCloser, error) {
	rc, err := l.s.open()
	if err != nil {
		return nil, err
	}
	rep := registry.Progress{Digest: digest.Digest(l.s.Digest.String()), MediaType: string(LayerMediaType), Size: l.s.BlobSize, State: registry.BlobStarted}
	l.pi.progress.Report(rep)
	// remote.Write read the level to the end: it is uploaded.
	return l.pi.progress.Upload(rc, rep, func(int64) {
		pi := l.pi
		pi.mu.Lock()
		pi.uploaded[l.s.Digest] = true
		pi.mu.Unlock()
		rep.Done, rep.State = l.s.BlobSize, registry.BlobDone
		pi.progress.Report(rep)
	}), nil
}
