// Package tarname holds the rules for entry names in OCI layer tarballs,
// shared by everything that applies a layer (layers, internal/ext4): which
// names are safe, how a clean name splits, and how whiteouts are spelt
// (OCI image-spec layer.md).
package tarname

import (
	"fmt"
	"strings"
)

// Whiteout spellings: ".wh.NAME" removes NAME from the layers below, and
// DIR/.wh..wh..opq makes DIR opaque.
const (
	WhiteoutPrefix = ".wh."
	OpaqueMarker   = ".wh..wh..opq"
)

// Clean validates a tar entry name or hardlink target and returns it
// without a leading "./" or trailing "/"; "." stands for the root. It
// rejects rather than cleans anything non-local: an empty or absolute
// name, a NUL, or a "..", "." or empty component. The error says what is
// wrong with name; callers wrap it with their own sentinel.
func Clean(name string) (string, error) {
	n := strings.TrimPrefix(name, "./")
	n = strings.TrimSuffix(n, "/")
	if n == "" || n == "." {
		if name == "" {
			return "", fmt.Errorf("empty name")
		}
		return ".", nil
	}
	if strings.HasPrefix(n, "/") {
		return "", fmt.Errorf("absolute name %q", name)
	}
	if strings.IndexByte(n, 0) >= 0 {
		return "", fmt.Errorf("NUL in name %q", name)
	}
	for c := range strings.SplitSeq(n, "/") {
		switch c {
		case "..":
			return "", fmt.Errorf("%q has a \"..\" component", name)
		case ".", "":
			return "", fmt.Errorf("%q is not a clean path", name)
		}
	}
	return n, nil
}

// Split splits a clean name into its parent directory and base name; the
// parent of a top-level name is ".".
func Split(n string) (dir, base string) {
	if n == "." {
		return ".", "."
	}
	i := strings.LastIndexByte(n, '/')
	if i < 0 {
		return ".", n
	}
	return n[:i], n[i+1:]
}
