package qcow2

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// chainState carries what opening a chain needs: the options, the files
// already open (loop detection) and the depth limit.
type chainState struct {
	opts     Options
	maxDepth int
	seen     []os.FileInfo
	paths    []string
}

// open opens path at the given depth of the chain, and below it its
// backing file. With r non-nil the image's bytes come from r (size
// bytes) instead of the file at path.
func (st *chainState) open(path string, format Format, depth int, r io.ReaderAt, size int64) (*Image, error) {
	var img *Image
	var err error
	if r != nil {
		img, err = newImage(path, r, size, format, &st.opts)
	} else {
		img, err = openFile(path, format, &st.opts)
	}
	if err != nil {
		return nil, err
	}
	img.depth = depth
	if err := st.seeOnce(img); err != nil {
		img.closeFile()
		return nil, err
	}
	if img.hdr == nil || img.hdr.BackingFile == "" {
		return img, nil
	}
	bpath, bfmt, err := img.resolveBacking(st.opts.CheckReference)
	if err != nil {
		img.closeFile()
		return nil, err
	}
	img.backingPath, img.backingFmt = bpath, bfmt
	if st.opts.NoBacking {
		return img, nil
	}
	if depth+1 > st.maxDepth {
		img.closeFile()
		return nil, fmt.Errorf("%w: %s: more than %d backing files", ErrChainTooDeep, st.paths[0], st.maxDepth)
	}
	var br io.ReaderAt
	var bsize int64
	switch {
	case st.opts.OpenBacking != nil:
		br, bsize, err = st.opts.OpenBacking(Reference{Kind: "backing", Image: path, Name: img.hdr.BackingFile, Path: bpath})
		if err != nil {
			img.closeFile()
			return nil, &backingError{parent: path, err: fmt.Errorf("qcow2: %w", err)}
		}
	case img.f == nil:
		img.closeFile()
		return nil, fmt.Errorf("%w: backing file %q of %s: no OpenBacking to open it with", ErrRefused, img.hdr.BackingFile, path)
	}
	b, err := st.open(bpath, bfmt, depth+1, br, bsize)
	if err != nil {
		if c, ok := br.(io.Closer); ok {
			c.Close()
		}
		img.closeFile()
		var be *backingError
		if errors.As(err, &be) || errors.Is(err, ErrChainTooDeep) || errors.Is(err, ErrChainLoop) {
			return nil, err // said once, by the level that failed
		}
		return nil, &backingError{parent: path, err: err}
	}
	if c, ok := br.(io.Closer); ok {
		b.closer = c
	}
	img.backing = b
	return img, nil
}

// seeOnce records img in the chain and fails with ErrChainLoop if it was
// opened before: the same file, or the same name for images not read
// from local files.
func (st *chainState) seeOnce(img *Image) error {
	var fi os.FileInfo
	if img.f != nil {
		var err error
		if fi, err = img.f.Stat(); err != nil {
			return fmt.Errorf("qcow2: %w", err)
		}
	}
	for i, s := range st.seen {
		if fi != nil && s != nil && os.SameFile(s, fi) || fi == nil && s == nil && st.paths[i] == img.path {
			return fmt.Errorf("%w: %s is its own backing file (via %s)", ErrChainLoop, img.path, st.paths[i])
		}
	}
	st.seen = append(st.seen, fi)
	st.paths = append(st.paths, img.path)
	return nil
}

// closeFile closes the file of an image whose open failed (not its
// backing chain).
func (img *Image) closeFile() {
	if img.f != nil {
		img.f.Close()
	}
}

// backingError is a failure to open the backing file of parent. The
// levels above pass it on unchanged, so that a deep chain names the
// failure once rather than once per level.
type backingError struct {
	parent string
	err    error
}

func (e *backingError) Error() string {
	return fmt.Sprintf("%v (opening the backing file of %s)", e.err, e.parent)
}

func (e *backingError) Unwrap() error { return e.err }

// resolveBacking checks the backing reference and returns the path to
// open (the name resolved against the image's directory, as QEMU's
// full-backing-filename) and its format ("" = probe).
func (img *Image) resolveBacking(check func(Reference) error) (string, Format, error) {
	name := img.hdr.BackingFile
	if err := checkRefName(name); err != nil {
		return "", "", fmt.Errorf("%w: backing file %q of %s: %v", ErrRefused, name, img.path, err)
	}
	path := combinePath(img.path, name)
	if check != nil {
		if err := check(Reference{Kind: "backing", Image: img.path, Name: name, Path: path}); err != nil {
			return "", "", fmt.Errorf("%w: backing file %q of %s: %w", ErrRefused, name, img.path, err)
		}
	}
	var f Format
	switch img.hdr.BackingFormat {
	case "":
	case "qcow2":
		f = FormatQcow2
	case "raw", "file":
		f = FormatRaw
	default:
		return "", "", fmt.Errorf("%w: backing file %s of %s has format %q", ErrUnsupportedFeature, name, img.path, img.hdr.BackingFormat)
	}
	return path, f, nil
}

// checkRefName refuses names QEMU would hand to a protocol driver or parse
// as options: "json:{...}" and "proto:..." before any slash.
func checkRefName(name string) error {
	if name == "" {
		return fmt.Errorf("empty name")
	}
	if strings.HasPrefix(name, "json:") {
		return fmt.Errorf("json: names are never followed")
	}
	if strings.IndexByte(name, 0) >= 0 {
		return fmt.Errorf("name contains a NUL byte")
	}
	if i := strings.IndexByte(name, ':'); i > 0 {
		if j := strings.IndexByte(name, '/'); j < 0 || i < j {
			return fmt.Errorf("protocol names (%s:) are never followed", name[:i])
		}
	}
	return nil
}

// combinePath resolves a backing name against the image naming it the way
// QEMU's path_combine does: an absolute name stays, a relative one gets
// the directory part of base (up to and including the last slash)
// prepended, unnormalised.
func combinePath(base, name string) string {
	if strings.HasPrefix(name, "/") {
		return name
	}
	i := strings.LastIndexByte(base, '/')
	if i < 0 {
		return name
	}
	return base[:i+1] + name
}

// BackingPath returns the backing file name resolved against this
// image's directory (qemu-img's full-backing-filename), or "".
func (img *Image) BackingPath() string {
	if img.hdr == nil || img.hdr.BackingFile == "" {
		return ""
	}
	return combinePath(img.path, img.hdr.BackingFile)
}

// BackingFormat returns the backing format recorded in the image, or ""
// when it is absent (the backing file is then probed).
func (img *Image) BackingFormat() string {
	if img.hdr == nil {
		return ""
	}
	return img.hdr.BackingFormat
}
