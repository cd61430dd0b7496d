package registry

import (
	"errors"
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
)

// TransportPrefix marks a registry reference where an argument may also be
// a local path (rootfs mount, store unpack), as skopeo spells it.
const TransportPrefix = "docker://"

// ErrInvalidReference: a string is not a registry reference.
var ErrInvalidReference = errors.New("registry: invalid reference")

// IsReference reports whether s carries the docker:// prefix.
func IsReference(s string) bool { return strings.HasPrefix(s, TransportPrefix) }

// ParseReference parses host[:port]/repo[:tag][@digest], with or without
// docker://. A reference without a registry is Docker Hub's, without a
// tag or digest it is :latest (go-containerregistry's rules). The error
// wraps ErrInvalidReference and quotes s.
func ParseReference(s string) (name.Reference, error) { return parseReference(s, false) }

// Reference parses s as ParseReference does; with Options.Insecure the
// registry may also be reached over plain HTTP.
func (c *Client) Reference(s string) (name.Reference, error) {
	return parseReference(s, c.opts.Insecure)
}

func parseReference(s string, insecure bool) (name.Reference, error) {
	t := strings.TrimPrefix(s, TransportPrefix)
	if t == "" {
		return nil, fmt.Errorf("%w: empty", ErrInvalidReference)
	}
	if strings.HasPrefix(t, "/") || strings.Contains(t, "://") {
		return nil, fmt.Errorf("%w: %q: want HOST[:PORT]/REPO[:TAG][@DIGEST]", ErrInvalidReference, s)
	}
	opts := []name.Option{name.WeakValidation}
	if insecure {
		opts = append(opts, name.Insecure)
	}
	ref, err := name.ParseReference(t, opts...)
	if err != nil {
		return nil, fmt.Errorf("%w: %q: %v", ErrInvalidReference, s, err)
	}
	return ref, nil
}
