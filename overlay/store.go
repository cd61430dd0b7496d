// Package overlay assembles container root filesystems from OCI image
// layers with overlayfs.
//
// A Store is a directory holding each layer unpacked once, in overlayfs
// format (whiteouts as 0/0 character devices, opaque directories marked
// with the overlay.opaque xattr), keyed by its ChainID, so every image that
// shares a stack of layers shares the unpacked directories. Containers are
// overlay mounts of those layers with a private upper and work directory
// kept in the store; Mount, Unmount, Commit and GC are the operations on
// them.
//
// On-disk layout of a store directory:
//
//	store.json               format version and xattr flavour (trusted/user)
//	store.lock               flock: shared by mount/unpack/commit, exclusive by gc
//	layers/HEX/diff/         a layer in overlay format (HEX: its ChainID)
//	layers/HEX/layer.json    the layer's record (Layer)
//	l/SHORT -> ../layers/HEX/diff   short names for long mount(2) option strings
//	locks/HEX.lock           flock held while layer HEX is being unpacked
//	containers/NAME/         container.json, lock, upper/, work/
//	images/HEX.json          an image pin (see GC)
//	tmp/                     layers being unpacked; renamed into layers/ when complete
//	empty/, empty2/          empty directories padding lower stacks of fewer than two layers
//
// Everything in a store is safe against concurrent use by several
// processes: see the lock order in lock.go.
//
// The package is Linux only (overlayfs, flock, xattrs, the new mount API).
// Mounting needs root, or a user namespace owning its mount namespace
// (kernel >= 5.11; the store then uses user.overlay.* xattrs); where
// neither is available, copy mode (MountOptions.Copy) still works.
package overlay

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"time"

	"github.com/imgtool/imgtool/internal/jsonfile"
	digest "github.com/opencontainers/go-digest"
)

// Sentinel errors of the package; returned errors wrap them with detail.
var (
	// ErrNotStore: a directory exists where a store was expected but does
	// not look like one, or its store.json is unreadable.
	ErrNotStore = errors.New("overlay: not a layer store")
	// ErrXattrFlavour: the store's layers were unpacked for the other
	// xattr namespace (trusted.overlay.* versus user.overlay.*, that is
	// outside versus inside a user namespace).
	ErrXattrFlavour = errors.New("overlay: store was made for the other overlay xattr namespace")
	// ErrLayerNotFound: a ChainID names no layer of the store.
	ErrLayerNotFound = errors.New("overlay: layer not in store")
	// ErrContainerNotFound: no container of the store has that name or
	// mount target.
	ErrContainerNotFound = errors.New("overlay: no such container")
	// ErrContainerExists: a container of that name exists and is mounted,
	// or belongs to another image.
	ErrContainerExists = errors.New("overlay: container exists")
	// ErrMountUnsupported: overlayfs cannot be mounted here (no
	// privilege, no overlay support); copy mode may still work.
	ErrMountUnsupported = errors.New("overlay: cannot mount overlayfs")
	// ErrTooManyLayers: the stack is deeper than overlayfs accepts.
	ErrTooManyLayers = errors.New("overlay: too many layers")
	// ErrInvalidName: a container name with characters other than
	// [A-Za-z0-9_.-], or empty, or longer than 128 bytes.
	ErrInvalidName = errors.New("overlay: invalid container name")
)

// storeFormatVersion is the version in store.json this code writes and reads.
const storeFormatVersion = 1

// storeConfig is store.json.
type storeConfig struct {
	Version int `json:"version"`
	// Xattr is "trusted" or "user": the namespace of overlay.opaque in
	// the unpacked layers and hence whether mounts pass userxattr.
	Xattr string `json:"xattr"`
}

// StoreOptions configure OpenStore. The zero value means: detect whether
// we run in a user namespace, unpack GOMAXPROCS layers at a time.
type StoreOptions struct {
	// Concurrency is how many layers are unpacked at once (default
	// runtime.GOMAXPROCS(0)).
	Concurrency int
	// UserXattr forces (true) or forbids (false) the user.overlay.*
	// xattrs and the userxattr mount option (kernel >= 5.11), and with
	// them skipping device nodes when unpacking. Default: on inside a
	// user namespace or when not running as root, off otherwise.
	UserXattr *bool
}

// Store is a layer store directory. It holds only paths and settings:
// every method reads the directory afresh and takes the file locks it
// needs, so a Store is safe for concurrent use by several goroutines, and
// several processes may open the same directory. It needs no Close.
type Store struct {
	dir         string
	userXattr   bool
	concurrency int
}

// DefaultStoreDir returns the default store directory:
// $XDG_DATA_HOME/imgtool/store, or ~/.local/share/imgtool/store when
// XDG_DATA_HOME is unset or not absolute (per the XDG base directory spec).
func DefaultStoreDir() (string, error) {
	if d := os.Getenv("XDG_DATA_HOME"); filepath.IsAbs(d) {
		return filepath.Join(d, "imgtool", "store"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("overlay: no store directory: %w", err)
	}
	return filepath.Join(home, ".local", "share", "imgtool", "store"), nil
}

// OpenStore opens the store at dir, creating it (and its parents) when it
// does not exist. dir is made absolute, since mount options and container
// records hold absolute paths.
func OpenStore(dir string, opts StoreOptions) (*Store, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	// trusted.* xattrs need CAP_SYS_ADMIN in the initial namespace.
	user := inUserNamespace() || os.Geteuid() != 0
	if opts.UserXattr != nil {
		user = *opts.UserXattr
	}
	if opts.Concurrency < 0 {
		return nil, fmt.Errorf("overlay: negative concurrency %d", opts.Concurrency)
	}
	s := &Store{dir: abs, userXattr: user, concurrency: opts.Concurrency}
	if s.concurrency == 0 {
		s.concurrency = defaultConcurrency()
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("overlay: store %s: %w", abs, err)
	}
	for _, sub := range []string{"layers", "l", "locks", "containers", "images", "tmp", "empty"} {
		if err := os.Mkdir(filepath.Join(abs, sub), 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("overlay: store %s: %w", abs, err)
		}
	}
	want := storeConfig{Version: storeFormatVersion, Xattr: "trusted"}
	if user {
		want.Xattr = "user"
	}
	cfgPath := filepath.Join(abs, "store.json")
	var have storeConfig
	err = jsonfile.Read(cfgPath, &have)
	if errors.Is(err, fs.ErrNotExist) {
		b, _ := json.Marshal(want)
		if err := jsonfile.WriteBytes(cfgPath, b, 0o600); err != nil {
			return nil, err
		}
		err = jsonfile.Read(cfgPath, &have) // another process may have won the race
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrNotStore, cfgPath, err)
	}
	if have.Version != storeFormatVersion {
		return nil, fmt.Errorf("%w: %s: version %d, this imgtool reads %d", ErrNotStore, cfgPath, have.Version, storeFormatVersion)
	}
	if have.Xattr != want.Xattr {
		return nil, fmt.Errorf("%w: %s holds layers for %s.overlay.* xattrs, this process needs %s.overlay.* (use another --store)", ErrXattrFlavour, abs, have.Xattr, want.Xattr)
	}
	return s, nil
}

// Dir returns the store's absolute directory.
func (s *Store) Dir() string { return s.dir }

// UserXattr reports whether the store uses user.overlay.* xattrs and
// mounts with userxattr.
func (s *Store) UserXattr() bool { return s.userXattr }

func (s *Store) path(elem ...string) string {
	return filepath.Join(append([]string{s.dir}, elem...)...)
}

// layerKey is the directory name of a layer: the encoded part of its
// ChainID. The digest is validated, so the key is hex and cannot escape.
func layerKey(chainID digest.Digest) (string, error) {
	if err := chainID.Validate(); err != nil {
		return "", fmt.Errorf("overlay: chain ID %q: %w", chainID, err)
	}
	if chainID.Algorithm() != digest.SHA256 {
		return "", fmt.Errorf("overlay: chain ID %q: only sha256 is supported", chainID)
	}
	return chainID.Encoded(), nil
}

// Layer is the record of one unpacked layer (layers/HEX/layer.json).
type Layer struct {
	ChainID digest.Digest `json:"chain_id"`
	DiffID  digest.Digest `json:"diff_id"`
	// Parent is the ChainID of the layer below, empty for a bottom layer.
	Parent digest.Digest `json:"parent,omitempty"`
	// Blob is the digest of the (compressed) blob it was unpacked from.
	Blob      digest.Digest `json:"blob,omitempty"`
	MediaType string        `json:"media_type,omitempty"`
	// Short is the name of its link in l/ (see mount_linux.go).
	Short string `json:"short"`
	// Size is the disk usage of the unpacked directory in bytes
	// (allocated blocks, each hardlinked inode counted once).
	Size int64 `json:"size"`
	// UncompressedSize is the size of the layer's tar stream.
	UncompressedSize int64     `json:"uncompressed_size,omitempty"`
	Unpacked         time.Time `json:"unpacked"`
	// Dir is the unpacked directory (not stored; filled in on reading).
	Dir string `json:"-"`
}

// LayerDir returns the overlay-format directory of the layer with the
// given ChainID (which need not exist).
func (s *Store) LayerDir(chainID digest.Digest) (string, error) {
	k, err := layerKey(chainID)
	if err != nil {
		return "", err
	}
	return s.path("layers", k, "diff"), nil
}

// Layer reads the record of one layer; ErrLayerNotFound if it is absent.
func (s *Store) Layer(chainID digest.Digest) (*Layer, error) {
	k, err := layerKey(chainID)
	if err != nil {
		return nil, err
	}
	var l Layer
	p := s.path("layers", k, "layer.json")
	if err := jsonfile.Read(p, &l); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s", ErrLayerNotFound, chainID)
		}
		return nil, fmt.Errorf("overlay: %s: %w", p, err)
	}
	if l.ChainID != chainID {
		return nil, fmt.Errorf("overlay: %s: records chain ID %s", p, l.ChainID)
	}
	l.Dir = s.path("layers", k, "diff")
	return &l, nil
}

// Layers lists the layers of the store, sorted by ChainID. Directories
// that are not complete layers are skipped.
func (s *Store) Layers() ([]*Layer, error) {
	ents, err := os.ReadDir(s.path("layers"))
	if err != nil {
		return nil, fmt.Errorf("overlay: %w", err)
	}
	var out []*Layer
	for _, e := range ents {
		d := digest.NewDigestFromEncoded(digest.SHA256, e.Name())
		if d.Validate() != nil {
			continue
		}
		l, err := s.Layer(d)
		if errors.Is(err, ErrLayerNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ChainID < out[j].ChainID })
	return out, nil
}

// diskUsage sums the allocated bytes below dir, counting each inode once
// (hardlinks) and not following symlinks. A missing dir uses 0 bytes.
func diskUsage(dir string) (int64, error) {
	seen := map[[2]uint64]bool{}
	var total int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		fi, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			total += fi.Size()
			return nil
		}
		if st.Nlink > 1 && !d.IsDir() {
			k := [2]uint64{uint64(st.Dev), st.Ino}
			if seen[k] {
				return nil
			}
			seen[k] = true
		}
		total += st.Blocks * 512
		return nil
	})
	return total, err
}
