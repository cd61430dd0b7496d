package qcow2

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// ConfineTo returns a CheckReference policy that refuses every backing
// reference resolving outside the directory root, symlinks followed, so
// that an untrusted image (one naming "../../etc/shadow" as its backing
// file) can't make a reader copy out files it names. root must exist.
func ConfineTo(root string) (func(Reference) error, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("qcow2: backing root %s: %w", root, err)
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return nil, fmt.Errorf("qcow2: backing root: %w", err)
	}
	if fi, err := os.Stat(real); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("qcow2: backing root %s is not a directory", root)
	}
	return func(ref Reference) error {
		p, err := resolveReal(ref.Path)
		if err != nil {
			return err
		}
		if !within(real, p) {
			return fmt.Errorf("%s resolves to %s, outside the backing root %s", ref.Name, p, real)
		}
		return nil
	}, nil
}

// resolveReal makes path absolute with symlinks resolved; a missing last
// element is resolved through its directory.
func resolveReal(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	real, err := filepath.EvalSymlinks(abs)
	if err == nil {
		return real, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	dir, err := filepath.EvalSymlinks(filepath.Dir(abs))
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, filepath.Base(abs)), nil
}

// within reports whether p is root or below it.
func within(root, p string) bool {
	rel, err := filepath.Rel(root, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) && !filepath.IsAbs(rel)
}
