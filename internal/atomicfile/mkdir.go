package atomicfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// MkdirParents creates the missing parents of path, as mkdir -p does
// (mode 0777 less the umask), and returns an undo that removes those it
// created, deepest first, where they are still empty: a command that
// fails leaves no directories it made for its output.
func MkdirParents(path string) (undo func(), err error) {
	var missing []string
	for p := filepath.Dir(filepath.Clean(path)); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err == nil {
			if !fi.IsDir() {
				return nil, fmt.Errorf("%s: %s is not a directory", path, p)
			}
			break
		}
		if !errors.Is(err, os.ErrNotExist) || p == filepath.Dir(p) {
			return nil, err
		}
		missing = append(missing, p)
	}
	var made []string
	undo = func() {
		for i := len(made) - 1; i >= 0; i-- {
			os.Remove(made[i])
		}
	}
	for i := len(missing) - 1; i >= 0; i-- {
		if err := os.Mkdir(missing[i], 0o777); err != nil && !errors.Is(err, os.ErrExist) {
			undo()
			return nil, err
		}
		made = append(made, missing[i])
	}
	return undo, nil
}
