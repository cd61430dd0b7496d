package vmimage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/imgtool/imgtool/internal/jobs"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/imgtool/imgtool/internal/atomicfile"
	"github.com/imgtool/imgtool/internal/registry"
	"github.com/imgtool/imgtool/overlay/vmchain"
	"github.com/imgtool/imgtool/qcow2"
	digest "github.com/opencontainers/go-digest"
)

// maxConfigSize caps the image config Pull reads (a chain image's config
// is about 100 bytes per level).
const maxConfigSize = 1 << 20

// PullOptions configure Pull. The zero value uses the registry package's
// defaults.
type PullOptions struct {
	// Registry configures credentials, TLS, timeouts and parallelism
	// (ignored when Client is set).
	Registry registry.Options
	// Client, when set, is used instead of a new one from Registry.
	Client *registry.Client
	// Progress receives a report per blob step; levels DIR already holds
	// are reported as registry.BlobSkipped.
	Progress registry.ProgressFunc
}

// PullResult says what Pull did.
type PullResult struct {
	Reference string        `json:"reference"`
	Digest    string        `json:"digest"` // of the manifest
	Top       string        `json:"top"`    // path of the top level's file
	Levels    []PulledLevel `json:"levels"` // base first
	Fetched   int           `json:"fetched"`
	Kept      int           `json:"kept"`
	Bytes     int64         `json:"bytes"` // blob bytes downloaded
}

// PulledLevel is one level of a pull.
type PulledLevel struct {
	Name    string `json:"name"`
	Parent  string `json:"parent,omitempty"`
	Path    string `json:"path"`
	Digest  string `json:"digest"`
	Size    int64  `json:"size"`
	Fetched bool   `json:"fetched"` // false: DIR held it already
}

// Pull rebuilds the chain image ref (with or without docker://) in dir as
// NAME.qcow2 files, base first, each naming its parent PARENT.qcow2, and
// returns the top level's path in the result.
//
// The manifest and the image config are validated (Plan, CheckConfig)
// before anything is written. A level dir already holds with the same
// layer digest (its bytes are hashed in the layer framing) is neither
// fetched nor rewritten; a level file holding something else is an error
// (Pull never replaces a file). The other levels are fetched in parallel
// (Jobs), each into an unnamed temp file in dir while its digest is
// computed; the tar framing is checked strictly (exactly one file,
// disk/NAME.qcow2, then the end-of-archive), then the digest, then the
// qcow2 header: its backing file must be exactly PARENT.qcow2 (format
// qcow2) and its virtual size the annotated one. Only when every level
// has passed are the files linked into dir; the chain is then opened
// confined to dir (qcow2.ConfineTo) as a last check. On any error the new
// files are removed: dir keeps what it had. dir is created if missing
// (and removed again on failure).
//
// When dir is a chain directory (overlay/vmchain), the files are placed
// under its lock and the pulled levels join its tree.
func Pull(ctx context.Context, ref, dir string, opts PullOptions) (res *PullResult, err error) {
	c, src, err := registry.ClientRef(opts.Client, opts.Registry, ref)
	if err != nil {
		return nil, err
	}
	fail := func(err error) error { return fmt.Errorf("%s: %w", src, err) }
	desc, err := remote.Get(src, c.RemoteOptions(ctx)...)
	if err != nil {
		return nil, fail(c.WrapError(src.Context().Registry, err))
	}
	if desc.MediaType.IsIndex() {
		return nil, fail(fmt.Errorf("%w: %s is an image index (%s); a VM chain image is one manifest", ErrNotChain, desc.Digest, desc.MediaType))
	}
	m, err := v1.ParseManifest(bytes.NewReader(desc.Manifest))
	if err != nil {
		return nil, fail(fmt.Errorf("%w: manifest: %v", ErrNotChain, err))
	}
	levels, err := Plan(m)
	if err != nil {
		return nil, fail(err)
	}
	repo, err := c.Repo(ctx, src.Context(), false)
	if err != nil {
		return nil, fail(err)
	}
	cfg, err := fetchConfig(ctx, repo, m.Config)
	if err != nil {
		return nil, fail(err)
	}
	if err := CheckConfig(cfg, levels); err != nil {
		return nil, fail(err)
	}
	res = &PullResult{Reference: src.Name(), Digest: desc.Digest.String(), Top: filepath.Join(dir, levels[len(levels)-1].File())}

	// What does dir hold already?
	created := false
	if fi, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		created = true
	} else if err != nil {
		return nil, fail(err)
	} else if !fi.IsDir() {
		return nil, fail(fmt.Errorf("%s is not a directory", dir))
	}
	have := make([]bool, len(levels))
	if !created {
		for i, l := range levels {
			if have[i], err = localLevel(dir, l); err != nil {
				return nil, fail(err)
			}
		}
	}
	if created {
		var undo func()
		if undo, err = atomicfile.MkdirParents(dir); err != nil {
			return nil, fail(err)
		}
		if err := os.Mkdir(dir, 0o777); err != nil {
			undo()
			return nil, fail(err)
		}
		defer func() {
			if err != nil {
				os.Remove(dir) // empty again: temp files are unnamed or removed
				undo()         // and the parents made for it
			}
		}()
	}

	// Fetch what is missing into unnamed temp files.
	temps := make([]*atomicfile.File, len(levels))
	defer func() {
		for _, f := range temps {
			if f != nil {
				f.Abort()
			}
		}
	}()
	var todo []int
	for i := range levels {
		if !have[i] {
			todo = append(todo, i)
		}
	}
	err = jobs.ForEach(ctx, c.Options().Jobs, len(todo), func(ctx context.Context, k int) error {
		i := todo[k]
		f, err := fetchLevel(ctx, repo, dir, levels[i], opts.Progress)
		if err != nil {
			return err
		}
		temps[i] = f
		return nil
	})
	if err != nil {
		return nil, fail(err)
	}

	// Every level passed: link the new files in.
	var placed []string
	place := func() error {
		for _, i := range todo {
			path := filepath.Join(dir, levels[i].File())
			if _, err := os.Lstat(path); err == nil {
				return fmt.Errorf("%s appeared while it was pulled; not replacing it", path)
			}
			if err := temps[i].CommitAs(path); err != nil {
				return err
			}
			temps[i] = nil
			placed = append(placed, path)
		}
		return nil
	}
	var names []string
	for _, l := range levels {
		names = append(names, l.Name)
	}
	cd, cdErr := vmchain.OpenChainDir(dir)
	if cdErr == nil {
		err = cd.Adopt(ctx, names, place)
	} else {
		err = place()
		if err == nil {
			err = fixModes(dir, levels, todo)
		}
	}
	if err == nil {
		err = checkPulled(res.Top, dir)
	}
	if err != nil {
		for _, p := range placed {
			os.Remove(p)
		}
		return nil, fail(err)
	}
	for i, l := range levels {
		pl := PulledLevel{Name: l.Name, Parent: l.Parent, Path: filepath.Join(dir, l.File()), Digest: l.Digest.String(), Size: l.Size, Fetched: !have[i]}
		res.Levels = append(res.Levels, pl)
		if have[i] {
			res.Kept++
			opts.Progress.Report(registry.Progress{Digest: digest.Digest(l.Digest.String()), MediaType: string(LayerMediaType), Size: l.BlobSize, Done: l.BlobSize, State: registry.BlobSkipped})
		} else {
			res.Fetched++
			res.Bytes += l.BlobSize
		}
	}
	return res, nil
}

// fetchConfig reads and verifies the image config blob.
func fetchConfig(ctx context.Context, repo *registry.Repo, d v1.Descriptor) ([]byte, error) {
	if d.Size < 0 || d.Size > maxConfigSize {
		return nil, fmt.Errorf("%w: image config of %d bytes (at most %d)", ErrNotChain, d.Size, maxConfigSize)
	}
	rc, err := repo.FetchBlob(ctx, digest.Digest(d.Digest.String()), d.Size, 0)
	if err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	defer rc.Close()
	raw, err := io.ReadAll(io.LimitReader(rc, d.Size+1))
	if err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	sum := sha256.Sum256(raw)
	if int64(len(raw)) != d.Size || d.Digest.Algorithm != "sha256" || hex.EncodeToString(sum[:]) != d.Digest.Hex {
		return nil, fmt.Errorf("%w: image config does not match its digest %s", ErrNotChain, d.Digest)
	}
	return raw, nil
}

// localLevel reports whether dir holds level l already: NAME.qcow2 with
// the level's exact bytes (same size, same layer digest when hashed in
// the layer framing). A missing file is false; a file with other content,
// or anything but a regular file, is an error: Pull never replaces it.
func localLevel(dir string, l Level) (bool, error) {
	path := filepath.Join(dir, l.File())
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	conflict := func(why string) error {
		return fmt.Errorf("%s exists and is not level %s of the image (%s); remove it or pull into another directory", path, l.Name, why)
	}
	if !fi.Mode().IsRegular() {
		return false, conflict("not a regular file")
	}
	if fi.Size() != l.Size {
		return false, conflict(fmt.Sprintf("%d bytes, the level has %d", fi.Size(), l.Size))
	}
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	hdr, err := Header(l.Name, l.Size)
	if err != nil {
		return false, err
	}
	h := sha256.New()
	h.Write(hdr[:])
	if _, err := io.CopyBuffer(h, io.NewSectionReader(f, 0, l.Size), make([]byte, 1<<20)); err != nil {
		return false, fmt.Errorf("%s: %w", path, err)
	}
	h.Write(Trailer(l.Size))
	if hex.EncodeToString(h.Sum(nil)) != l.Digest.Hex {
		return false, conflict("different content")
	}
	// Same bytes as the blob, but check the header as for a fetched one.
	if err := checkLevelFile(path, l); err != nil {
		return false, err
	}
	return true, nil
}

// fetchLevel downloads level l into an unnamed temp file in dir and
// verifies it: tar framing, digest, qcow2 header. The caller commits or
// aborts the file.
func fetchLevel(ctx context.Context, repo *registry.Repo, dir string, l Level, progress registry.ProgressFunc) (_ *atomicfile.File, err error) {
	d := digest.Digest(l.Digest.String())
	fail := func(err error) error { return fmt.Errorf("layer %d (%s, %s): %w", l.Index, l.Name, l.Digest, err) }
	rep := registry.Progress{Digest: d, MediaType: string(LayerMediaType), Size: l.BlobSize, State: registry.BlobStarted}
	progress.Report(rep)
	rc, err := repo.FetchBlob(ctx, d, l.BlobSize, 0)
	if err != nil {
		return nil, fail(err)
	}
	defer rc.Close()
	h := sha256.New()
	r := io.TeeReader(progress.Reader(rc, rep), h)
	var hdr [HeaderSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, fail(fmt.Errorf("%w: reading the tar header: %v", ErrBadLayer, err))
	}
	size, err := ParseHeader(hdr[:], l.Name)
	if err != nil {
		return nil, fail(err)
	}
	if size != l.Size {
		return nil, fail(fmt.Errorf("%w: the tar header says %d bytes, the manifest %d", ErrBadLayer, size, l.Size))
	}
	f, err := atomicfile.CreateTemp(dir, atomicfile.Options{Perm: 0o644})
	if err != nil {
		return nil, fail(err)
	}
	defer func() {
		if err != nil {
			f.Abort()
		}
	}()
	n, err := io.CopyBuffer(f.File, io.LimitReader(r, size), make([]byte, 1<<20))
	if err != nil {
		return nil, fail(err)
	}
	if n != size {
		return nil, fail(fmt.Errorf("%w: the blob ends %d bytes into a %d-byte file", ErrBadLayer, n, size))
	}
	if err := CheckTrailer(r, l.Name, size); err != nil {
		return nil, fail(err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != l.Digest.Hex {
		return nil, fail(fmt.Errorf("blob fails its digest: got sha256:%s", got))
	}
	if err := checkLevelFile(f.TempPath(), l); err != nil {
		return nil, fail(err)
	}
	rep.Done, rep.State = l.BlobSize, registry.BlobDone
	progress.Report(rep)
	return f, nil
}

// checkLevelFile opens a level's qcow2 alone and checks its header names
// exactly PARENT.qcow2 and stores the annotated guest size.
func checkLevelFile(path string, l Level) error {
	img, err := qcow2.Open(path, qcow2.Options{Format: qcow2.FormatQcow2, NoBacking: true, ForceShare: true})
	if err != nil {
		return fmt.Errorf("level %s: %w", l.Name, err)
	}
	defer img.Close()
	h := img.Header()
	if h.DataFile != "" {
		return fmt.Errorf("%w: level %s names the external data file %q", ErrBadBacking, l.Name, h.DataFile)
	}
	if err := l.CheckBacking(h.BackingFile, h.BackingFormat); err != nil {
		return err
	}
	if img.Size() != l.VirtualSize {
		return fmt.Errorf("%w: level %s: the qcow2 has %d guest bytes, the manifest says %d", ErrBadLayer, l.Name, img.Size(), l.VirtualSize)
	}
	return nil
}

// fixModes makes the new levels (todo) that other levels build on
// read-only, as a chain directory keeps them: their write bits are
// cleared and their read bits stay as created (0666 masked by the umask,
// so 0444 under umask 022 and 0400 under 077).
func fixModes(dir string, levels []Level, todo []int) error {
	for _, i := range todo {
		if i == len(levels)-1 {
			continue
		}
		if err := vmchain.SetWritable(filepath.Join(dir, levels[i].File()), false); err != nil {
			return err
		}
	}
	return nil
}

// checkPulled opens the pulled chain confined to dir.
func checkPulled(top, dir string) error {
	confine, err := qcow2.ConfineTo(dir)
	if err != nil {
		return err
	}
	img, err := qcow2.Open(top, qcow2.Options{Format: qcow2.FormatQcow2, CheckReference: confine, ForceShare: true})
	if err != nil {
		return fmt.Errorf("opening the pulled chain: %w", err)
	}
	return img.Close()
}
