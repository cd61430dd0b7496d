// Package vmdisk turns an OCI image into a VM root disk: an ext4
// filesystem (written by internal/ext4, no mkfs, no mount, no root) as a
// chain of qcow2 images with one level per layer. Level k is named by the
// ChainID of layers 0..k, backs onto level k-1 by relative name, and holds
// only the blocks applying layer k changed. The geometry depends on
// Options.Size alone and the allocator on the layers so far, so images
// that share their first k layers share their first k level files byte
// for byte.
package vmdisk

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/imgtool/imgtool/internal/atomicfile"
	"github.com/imgtool/imgtool/internal/ext4"
	"github.com/imgtool/imgtool/internal/ioprogress"
	"github.com/imgtool/imgtool/layers"
	"github.com/imgtool/imgtool/qcow2"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// DefaultSize is the virtual size of the disk when Options.Size is 0:
// fixed, never computed from the image, so levels are shared between
// images. Unwritten inode tables and bitmaps cost nothing in a qcow2.
const DefaultSize = 16 << 30

// DefaultClusterSize is the qcow2 cluster size of the levels when
// Options.ClusterSize is 0: small, so a level holds little besides what
// its layer changed.
const DefaultClusterSize = 4096

// ErrTooLarge means the image does not fit in the disk size.
var ErrTooLarge = errors.New("vmdisk: image does not fit in the disk")

// Options configure Build. The zero value makes a 16 GiB disk of 4 KiB
// clusters from the host platform's image.
type Options struct {
	// Size is the disk size in bytes (default DefaultSize).
	Size int64
	// ClusterSize is the qcow2 cluster size of each level, a power of two
	// from 512 B to 2 MiB (default DefaultClusterSize).
	ClusterSize int64
	// Platform picks the image from an index (default: the only one, else
	// the host's).
	Platform *ocispec.Platform
	// Limits bound the reading of each layer (zero: layers' defaults).
	Limits layers.Limits
	// Progress, when set, is called from the building goroutine as each
	// layer's uncompressed bytes are read.
	Progress func(Progress)
}

// Progress reports how far Build is.
type Progress struct {
	Layer, Layers int   // the layer being applied (0-based) and how many
	Done          int64 // uncompressed bytes of that layer read so far
	Bytes         int64 // uncompressed bytes of all layers read so far
}

// Level describes one qcow2 level of the chain.
type Level struct {
	ChainID    digest.Digest `json:"chain-id"`
	Path       string        `json:"filename"`
	FileSize   int64         `json:"file-size"`
	DataBytes  int64         `json:"data-bytes"`  // file data the layer adds
	DataBlocks int64         `json:"data-blocks"` // 4 KiB blocks of it written (holes skipped)
	MetaBlocks int64         `json:"meta-blocks"` // metadata blocks written
	Entries    int           `json:"entries"`     // tar entries
	read       int64
}

// Result describes the chain Build wrote.
type Result struct {
	Top         string  `json:"filename"`     // path of the top level
	VirtualSize int64   `json:"virtual-size"` // filesystem size
	Levels      []Level `json:"levels"`
}

func (o *Options) validate() error {
	if o.Size == 0 {
		o.Size = DefaultSize
	}
	if o.ClusterSize == 0 {
		o.ClusterSize = DefaultClusterSize
	}
	if o.Size < ext4.MinSize || o.Size > ext4.MaxSize {
		return fmt.Errorf("vmdisk: size %d out of range (%d to %d bytes)", o.Size, int64(ext4.MinSize), int64(ext4.MaxSize))
	}
	if cs := o.ClusterSize; cs < 512 || cs > 2<<20 || cs&(cs-1) != 0 {
		return fmt.Errorf("vmdisk: cluster size %d is not a power of two from 512 to 2097152", cs)
	}
	return nil
}

// Build writes the disk chain of the image ref names into outdir, which
// must not exist or be empty; its missing parents are created. The chain
// is built in a temporary directory beside outdir and renamed into place,
// so a failure leaves no outdir (and removes the parents it created).
// outdir and the level files get the modes the umask allows.
func Build(ctx context.Context, ref layers.ImageRef, outdir string, opts Options) (*Result, error) {
	l, err := layers.OpenLayout(ref.Dir)
	if err != nil {
		return nil, err
	}
	img, err := l.Resolve(ctx, ref.Tag, layers.ResolveOptions{Platform: opts.Platform})
	if err != nil {
		return nil, err
	}
	var ls []v1.Layer
	for i, desc := range img.Manifest.Layers {
		desc := desc
		d := layers.Descriptor{MediaType: desc.MediaType, Digest: desc.Digest, DiffID: img.Config.RootFS.DiffIDs[i], Size: desc.Size}
		ls = append(ls, layers.NewLayer(func() (io.ReadCloser, error) { return l.OpenBlob(desc) }, d, opts.Limits))
	}
	return BuildLayers(ctx, ls, outdir, opts)
}

// BuildLayers is Build for layers from any source (a registry, a
// tarball): each layer's Uncompressed stream is read once, in order.
func BuildLayers(ctx context.Context, ls []v1.Layer, outdir string, opts Options) (_ *Result, err error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	if len(ls) == 0 {
		return nil, fmt.Errorf("vmdisk: the image has no layers")
	}
	outdir = filepath.Clean(outdir)
	undo, err := claimOutdir(outdir)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			undo()
		}
	}()
	var diffIDs []digest.Digest
	for i, layer := range ls {
		h, err := layer.DiffID()
		if err != nil {
			return nil, fmt.Errorf("vmdisk: layer %d: %w", i, err)
		}
		d, err := digest.Parse(h.String())
		if err != nil {
			return nil, fmt.Errorf("vmdisk: layer %d: %w", i, err)
		}
		diffIDs = append(diffIDs, d)
	}
	chain := identity.ChainIDs(append([]digest.Digest(nil), diffIDs...))

	tmp, err := mkdirTemp(filepath.Dir(outdir), "."+filepath.Base(outdir)+".tmp-")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	var seed [32]byte
	copy(seed[:], []byte(chain[0].Encoded()))
	fs, err := ext4.New(ext4.Options{Size: opts.Size, Seed: seed})
	if err != nil {
		return nil, fmt.Errorf("vmdisk: %w", err)
	}
	res := &Result{VirtualSize: fs.Size()}
	prev := ""
	var before int64
	for i, layer := range ls {
		name := levelName(chain[i])
		lv, err := buildLevel(ctx, fs, layer, tmp, name, prev, i, len(ls), before, &opts)
		if err != nil {
			if errors.Is(err, ext4.ErrNoSpace) {
				return nil, fmt.Errorf("%w of %d bytes: layer %d (%s): %v", ErrTooLarge, opts.Size, i, diffIDs[i], err)
			}
			return nil, fmt.Errorf("vmdisk: layer %d (%s): %w", i, diffIDs[i], err)
		}
		lv.ChainID = chain[i]
		lv.Path = filepath.Join(outdir, name)
		res.Levels = append(res.Levels, *lv)
		prev = name
		before += lv.read
	}
	if err := atomicfile.SyncDir(tmp); err != nil {
		return nil, err
	}
	os.Remove(outdir) // an empty outdir gives way
	if err := os.Rename(tmp, outdir); err != nil {
		return nil, fmt.Errorf("vmdisk: %w", err)
	}
	if err := atomicfile.SyncDir(filepath.Dir(outdir)); err != nil {
		return nil, err
	}
	res.Top = res.Levels[len(res.Levels)-1].Path
	return res, nil
}

// levelName is the file name of the level with ChainID c: no colon, which
// QEMU would read as a protocol prefix in a backing file name.
func levelName(c digest.Digest) string {
	return string(c.Algorithm()) + "-" + c.Encoded() + ".qcow2"
}

func buildLevel(ctx context.Context, fs *ext4.FS, layer v1.Layer, dir, name, backing string, i, n int, before int64, opts *Options) (*Level, error) {
	path := filepath.Join(dir, name)
	co := qcow2.CreateOptions{Size: fs.Size(), ClusterSize: opts.ClusterSize}
	if backing != "" {
		co.BackingFile, co.BackingFormat = backing, qcow2.FormatQcow2
	}
	if err := qcow2.Create(path, co); err != nil {
		return nil, err
	}
	img, err := qcow2.Open(path, qcow2.Options{Writable: true})
	if err != nil {
		return nil, err
	}
	rc, err := layer.Uncompressed()
	if err != nil {
		img.Close()
		return nil, err
	}
	r := &ioprogress.Reader{R: rc}
	if opts.Progress != nil {
		r.Fn = func(done int64) { opts.Progress(Progress{Layer: i, Layers: n, Done: done, Bytes: before + done}) }
	}
	st, err := fs.ApplyLayer(ctx, r, img)
	if err == nil {
		// Read to the end so the reader verifies the digests.
		_, err = io.Copy(io.Discard, r)
	}
	if cerr := rc.Close(); err == nil {
		err = cerr
	}
	if cerr := img.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	return &Level{read: r.N, FileSize: fi.Size(), DataBytes: st.DataBytes, DataBlocks: st.DataBlocks, MetaBlocks: st.MetaBlocks, Entries: st.Entries}, nil
}

// claimOutdir refuses an outdir that is not an empty directory or a name
// still free, then makes its missing parents; undo removes those again.
func claimOutdir(outdir string) (undo func(), err error) {
	if ents, err := os.ReadDir(outdir); err == nil && len(ents) > 0 {
		return nil, fmt.Errorf("vmdisk: %s exists and is not empty", outdir)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("vmdisk: %w", err)
	}
	if undo, err = atomicfile.MkdirParents(outdir); err != nil {
		return nil, fmt.Errorf("vmdisk: %w", err)
	}
	return undo, nil
}

// mkdirTemp is os.MkdirTemp with mode 0777 less the umask instead of
// 0700: the directory becomes OUTDIR, an ordinary directory of the user.
func mkdirTemp(parent, prefix string) (string, error) {
	var b [8]byte
	for range 100 {
		rand.Read(b[:])
		p := filepath.Join(parent, prefix+hex.EncodeToString(b[:]))
		err := os.Mkdir(p, 0o777)
		if err == nil {
			return p, nil
		}
		if !errors.Is(err, os.ErrExist) {
			return "", fmt.Errorf("vmdisk: %w", err)
		}
	}
	return "", fmt.Errorf("vmdisk: no free temporary name in %s", parent)
}
