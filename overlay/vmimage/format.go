package vmimage

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Media types of a VM chain image.
const (
	ManifestMediaType = types.OCIManifestSchema1         // application/vnd.oci.image.manifest.v1+json
	ConfigMediaType   = types.OCIConfigJSON              // application/vnd.oci.image.config.v1+json
	LayerMediaType    = types.OCIUncompressedLayer       // application/vnd.oci.image.layer.v1.tar
	titleAnnotation   = "org.opencontainers.image.title" // the OCI title annotation
)

// Annotation keys of a VM chain image.
const (
	// AnnotationTop (manifest) is the NAME of the top level.
	AnnotationTop = "org.imgtool.chain.top"
	// AnnotationName (layer) is the level's NAME.
	AnnotationName = "org.imgtool.level.name"
	// AnnotationParent (layer) is the parent level's NAME; absent on the base.
	AnnotationParent = "org.imgtool.level.parent"
	// AnnotationVirtualSize (layer) is the guest size in decimal bytes.
	AnnotationVirtualSize = "org.imgtool.level.virtual-size"
	// AnnotationSize (layer) is the size of the qcow2 file in decimal bytes.
	AnnotationSize = "org.imgtool.level.size"
	// AnnotationTitle (layer) is disk/NAME.qcow2.
	AnnotationTitle = titleAnnotation
)

// Fixed tar header fields of a level (KubeVirt's containerDisk owner and
// mode).
const (
	FileUID  = 107
	FileGID  = 107
	FileMode = 0o440
	// FileDir is the directory of the level files inside the layers.
	FileDir = "disk"
	// FileExt is the extension of a level file.
	FileExt = ".qcow2"
	// FlattenName is the NAME of the single level a flattened push makes.
	FlattenName = "disk"
)

// Layout of a layer blob.
const (
	// HeaderSize is the size of the tar header; the qcow2 file starts at
	// this offset of the blob.
	HeaderSize = 512
	// TrailerSize is the end-of-archive: two zero blocks.
	TrailerSize = 1024
	// MaxNameLen is the longest level NAME.
	MaxNameLen = 64
	// MaxLevels caps the number of layers Plan accepts (qcow2's default
	// backing chain depth limit, plus the top).
	MaxLevels = 65
	// maxLevelSize bounds the qcow2 size a header or annotation may
	// claim: 2^56 (qcow2's host offset limit).
	maxLevelSize int64 = 1 << 56
	// maxOctalSize is the largest size the 11 octal digits of a ustar
	// size field hold; larger files use base-256 (see Header).
	maxOctalSize int64 = 1<<33 - 1
)

// Errors callers branch on; returned errors wrap them with detail.
var (
	// ErrInvalidName: a level NAME outside the allowed alphabet or length.
	ErrInvalidName = errors.New("vmimage: invalid level name")
	// ErrNotChain: a manifest that is not a VM chain image, or whose
	// levels do not form one chain.
	ErrNotChain = errors.New("vmimage: not a VM chain image")
	// ErrBadLayer: a layer blob that is not exactly one level file in the
	// fixed tar layout.
	ErrBadLayer = errors.New("vmimage: bad level layer")
	// ErrBadBacking: a level whose qcow2 backing file is not PARENT.qcow2.
	ErrBadBacking = errors.New("vmimage: bad level backing file")
)

// ValidName reports whether name may name a level: 1 to 64 bytes of
// [A-Za-z0-9._-], not starting with '.' or '-', without "..". Such a name
// is a safe file name (no '/', never "." or ".."), disk/NAME.qcow2 fits
// the ustar name field, and a pulled chain is a VM chain directory
// (overlay/vmchain accepts every level name).
func ValidName(name string) error {
	if name == "" || len(name) > MaxNameLen {
		return fmt.Errorf("%w: %q (1 to %d bytes)", ErrInvalidName, name, MaxNameLen)
	}
	if name[0] == '.' || name[0] == '-' {
		return fmt.Errorf("%w: %q starts with %q", ErrInvalidName, name, name[0])
	}
	if strings.Contains(name, "..") {
		return fmt.Errorf("%w: %q contains \"..\"", ErrInvalidName, name)
	}
	for i := 0; i < len(name); i++ {
		if !nameByte(name[i]) {
			return fmt.Errorf("%w: %q has character %q (allowed: letters, digits, . _ -)", ErrInvalidName, name, name[i])
		}
	}
	return nil
}

func nameByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
}

// FileName returns NAME.qcow2, the level's file name in a directory and
// the backing name its children store.
func FileName(name string) string { return name + FileExt }

// Title returns disk/NAME.qcow2, the level's path inside its layer.
func Title(name string) string { return FileDir + "/" + name + FileExt }

// BlobSize returns the size of the layer blob of a qcow2 file of size
// bytes: header, file, padding to 512 bytes, end-of-archive.
func BlobSize(size int64) int64 {
	return HeaderSize + (size+511)&^511 + TrailerSize
}

// Header returns the tar header of level name's layer for a qcow2 file
// of size bytes: a ustar header for disk/NAME.qcow2, regular file, mode
// 0440, uid/gid 107, mtime 0, empty user and group names. Sizes up to
// 8 GiB - 1 are 11 octal digits; larger ones use the base-256 size
// encoding every common tar reader accepts (GNU tar, libarchive, Go), so
// no extension header is ever needed.
func Header(name string, size int64) ([HeaderSize]byte, error) {
	var h [HeaderSize]byte
	if err := ValidName(name); err != nil {
		return h, err
	}
	if size < 0 || size > maxLevelSize {
		return h, fmt.Errorf("%w: level %s: file size %d out of range", ErrBadLayer, name, size)
	}
	copy(h[0:100], Title(name))
	putOctal(h[100:108], FileMode)
	putOctal(h[108:116], FileUID)
	putOctal(h[116:124], FileGID)
	if size <= maxOctalSize {
		putOctal(h[124:136], size)
	} else {
		f := h[124:136]
		f[0] = 0x80
		for i, v := len(f)-1, size; i > 0; i, v = i-1, v>>8 {
			f[i] = byte(v)
		}
	}
	putOctal(h[136:148], 0) // mtime
	h[156] = '0'            // regular file
	copy(h[257:263], "ustar\x00")
	copy(h[263:265], "00")
	putOctal(h[329:337], 0) // devmajor
	putOctal(h[337:345], 0) // devminor
	// Checksum: the sum of all bytes with the checksum field as spaces,
	// six octal digits, NUL, space.
	copy(h[148:156], "        ")
	var sum int64
	for _, c := range h {
		sum += int64(c)
	}
	copy(h[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return h, nil
}

// putOctal writes v as zero-padded octal filling the field but its last
// byte, which stays NUL (as Go's archive/tar and GNU tar write ustar).
func putOctal(f []byte, v int64) {
	s := strconv.FormatInt(v, 8)
	n := len(f) - 1
	for i := range n {
		f[i] = '0'
	}
	copy(f[n-len(s):n], s)
	f[n] = 0
}

// ParseHeader checks that h is exactly the header Header writes for level
// name, byte for byte, and returns the file size it declares. Anything
// else (another name or type, a link, other owner or mode, a PAX or GNU
// extension header, a bad checksum) is ErrBadLayer.
func ParseHeader(h []byte, name string) (int64, error) {
	if len(h) != HeaderSize {
		return 0, fmt.Errorf("%w: level %s: tar header of %d bytes", ErrBadLayer, name, len(h))
	}
	size, err := headerSize(h[124:136])
	if err != nil {
		return 0, fmt.Errorf("%w: level %s: tar header size field: %v", ErrBadLayer, name, err)
	}
	want, err := Header(name, size)
	if err != nil {
		return 0, err
	}
	if !bytes.Equal(h, want[:]) {
		return 0, fmt.Errorf("%w: level %s: tar header is not the fixed header of %s (%s)", ErrBadLayer, name, Title(name), headerDiff(h, want[:]))
	}
	return size, nil
}

// headerSize decodes a size field written by Header.
func headerSize(f []byte) (int64, error) {
	if f[0] == 0x80 {
		var v int64
		for _, c := range f[1:] {
			if v > maxLevelSize>>8 {
				return 0, errors.New("base-256 size out of range")
			}
			v = v<<8 | int64(c)
		}
		return v, nil
	}
	if f[len(f)-1] != 0 {
		return 0, errors.New("not NUL-terminated")
	}
	v, err := strconv.ParseInt(string(f[:len(f)-1]), 8, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("%q is not an octal size", f)
	}
	return v, nil
}

// headerDiff names the first field where got and want differ.
func headerDiff(got, want []byte) string {
	fields := []struct {
		name     string
		off, end int
	}{
		{"name", 0, 100}, {"mode", 100, 108}, {"uid", 108, 116}, {"gid", 116, 124},
		{"size", 124, 136}, {"mtime", 136, 148}, {"checksum", 148, 156}, {"typeflag", 156, 157},
		{"linkname", 157, 257}, {"magic", 257, 263}, {"version", 263, 265}, {"uname", 265, 297},
		{"gname", 297, 329}, {"devmajor", 329, 337}, {"devminor", 337, 345}, {"prefix", 345, 500},
		{"padding", 500, 512},
	}
	for _, f := range fields {
		if !bytes.Equal(got[f.off:f.end], want[f.off:f.end]) {
			return fmt.Sprintf("field %s is %q, want %q", f.name, bytes.TrimRight(got[f.off:f.end], "\x00"), bytes.TrimRight(want[f.off:f.end], "\x00"))
		}
	}
	return "identical"
}

// Trailer returns the bytes that follow a qcow2 file of size bytes in its
// layer: zero padding to 512 bytes and the end-of-archive.
func Trailer(size int64) []byte {
	return make([]byte, (-size)&511+TrailerSize)
}

// CheckTrailer reads what follows the file in a layer from r and checks
// it is exactly the zero padding and end-of-archive of Trailer(size),
// then the end of the blob: a second file, or anything past the
// end-of-archive, is ErrBadLayer.
func CheckTrailer(r io.Reader, name string, size int64) error {
	want := int((-size)&511 + TrailerSize)
	buf := make([]byte, want+1)
	n, err := io.ReadFull(r, buf)
	switch {
	case err == nil:
		return fmt.Errorf("%w: level %s: data after the end-of-archive (a layer holds exactly one file)", ErrBadLayer, name)
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
	default:
		return fmt.Errorf("vmimage: level %s: %w", name, err)
	}
	if n < want {
		return fmt.Errorf("%w: level %s: layer ends %d bytes short of its end-of-archive", ErrBadLayer, name, want-n)
	}
	for i, c := range buf[:n] {
		if c != 0 {
			return fmt.Errorf("%w: level %s: non-zero byte at offset %d after the file (a layer holds exactly one file)", ErrBadLayer, name, HeaderSize+size+int64(i))
		}
	}
	return nil
}

// Level is one level of a chain image, as the manifest describes it.
type Level struct {
	Index       int     // layer index, 0 for the base
	Name        string  // NAME; the file is NAME.qcow2
	Parent      string  // parent NAME, "" for the base
	VirtualSize int64   // guest size in bytes
	Size        int64   // size of the qcow2 file in bytes
	Digest      v1.Hash // layer digest (== diffID: layers are uncompressed)
	BlobSize    int64   // layer blob size: BlobSize(Size)
}

// File returns NAME.qcow2.
func (l Level) File() string { return FileName(l.Name) }

// Backing returns the backing file name the level's qcow2 must store:
// PARENT.qcow2, or "" for the base.
func (l Level) Backing() string {
	if l.Parent == "" {
		return ""
	}
	return FileName(l.Parent)
}

// CheckBacking checks a level's qcow2 backing file name and backing
// format as stored in its header: the base has none, every other level
// exactly PARENT.qcow2 with format qcow2. Anything else (an absolute
// path, "..", another level, a protocol, a raw backing file) is
// ErrBadBacking.
func (l Level) CheckBacking(backing, format string) error {
	want := l.Backing()
	if backing != want {
		if want == "" {
			return fmt.Errorf("%w: level %s is the base but names backing file %q", ErrBadBacking, l.Name, backing)
		}
		return fmt.Errorf("%w: level %s names backing file %q, want %q", ErrBadBacking, l.Name, backing, want)
	}
	if want != "" && format != "qcow2" {
		return fmt.Errorf("%w: level %s names backing format %q, want \"qcow2\"", ErrBadBacking, l.Name, format)
	}
	return nil
}

// Plan validates m as a VM chain image and returns its levels, base
// first. It checks the manifest and config media types, that every layer
// is an uncompressed tar with all the level annotations (valid, unique
// names; decimal sizes; a blob size that matches the file size; the title
// disk/NAME.qcow2; a sha256 digest), and that the parents form one chain
// in layer order: the base has no parent and each other level's parent
// is the previous layer. A missing parent, a loop, a fork (two levels on
// one parent, or two bases) or a level out of order is an error saying
// which. Errors wrap ErrNotChain or ErrInvalidName.
func Plan(m *v1.Manifest) ([]Level, error) {
	if m == nil {
		return nil, fmt.Errorf("%w: no manifest", ErrNotChain)
	}
	if m.SchemaVersion != 2 {
		return nil, fmt.Errorf("%w: manifest schemaVersion %d, want 2", ErrNotChain, m.SchemaVersion)
	}
	if m.MediaType != ManifestMediaType {
		return nil, fmt.Errorf("%w: manifest media type %q, want %q", ErrNotChain, m.MediaType, ManifestMediaType)
	}
	if m.Config.MediaType != ConfigMediaType {
		return nil, fmt.Errorf("%w: config media type %q, want %q", ErrNotChain, m.Config.MediaType, ConfigMediaType)
	}
	if len(m.Layers) == 0 {
		return nil, fmt.Errorf("%w: manifest has no layers", ErrNotChain)
	}
	if len(m.Layers) > MaxLevels {
		return nil, fmt.Errorf("%w: manifest has %d layers, at most %d levels are allowed", ErrNotChain, len(m.Layers), MaxLevels)
	}
	levels := make([]Level, len(m.Layers))
	index := make(map[string]int, len(m.Layers))
	for i, d := range m.Layers {
		l, err := planLevel(i, d)
		if err != nil {
			return nil, err
		}
		if j, dup := index[l.Name]; dup {
			return nil, fmt.Errorf("%w: layers %d and %d are both level %q (names are unique in a chain)", ErrNotChain, j, i, l.Name)
		}
		index[l.Name] = i
		levels[i] = l
	}
	if err := checkChain(levels, index); err != nil {
		return nil, err
	}
	top := levels[len(levels)-1].Name
	if got, ok := m.Annotations[AnnotationTop]; !ok || got != top {
		return nil, fmt.Errorf("%w: manifest annotation %s is %q, want the last layer's level %q", ErrNotChain, AnnotationTop, got, top)
	}
	return levels, nil
}

// planLevel reads layer i's descriptor.
func planLevel(i int, d v1.Descriptor) (Level, error) {
	bad := func(format string, args ...any) (Level, error) {
		return Level{}, fmt.Errorf("%w: layer %d: %s", ErrNotChain, i, fmt.Sprintf(format, args...))
	}
	if d.MediaType != LayerMediaType {
		return bad("media type %q, want %q", d.MediaType, LayerMediaType)
	}
	name, ok := d.Annotations[AnnotationName]
	if !ok {
		return bad("annotation %s missing", AnnotationName)
	}
	if err := ValidName(name); err != nil {
		return Level{}, fmt.Errorf("layer %d: %w", i, err)
	}
	l := Level{Index: i, Name: name, Digest: d.Digest, BlobSize: d.Size}
	if p, ok := d.Annotations[AnnotationParent]; ok {
		if err := ValidName(p); err != nil {
			return Level{}, fmt.Errorf("layer %d (%s): parent: %w", i, name, err)
		}
		l.Parent = p
	}
	var err error
	if l.VirtualSize, err = decimal(d.Annotations, AnnotationVirtualSize); err != nil {
		return bad("level %s: %v", name, err)
	}
	if l.Size, err = decimal(d.Annotations, AnnotationSize); err != nil {
		return bad("level %s: %v", name, err)
	}
	if want := BlobSize(l.Size); d.Size != want {
		return bad("level %s: blob size %d, want %d for a %d-byte file", name, d.Size, want, l.Size)
	}
	if got := d.Annotations[AnnotationTitle]; got != Title(name) {
		return bad("level %s: annotation %s is %q, want %q", name, AnnotationTitle, got, Title(name))
	}
	if d.Digest.Algorithm != "sha256" || len(d.Digest.Hex) != 64 {
		return bad("level %s: digest %q is not sha256", name, d.Digest)
	}
	return l, nil
}

// decimal parses annotation key as a non-negative decimal number of
// bytes (digits only, no sign or leading zeros) up to 2^56.
func decimal(a map[string]string, key string) (int64, error) {
	s, ok := a[key]
	if !ok {
		return 0, fmt.Errorf("annotation %s missing", key)
	}
	if s == "" || len(s) > 18 || (len(s) > 1 && s[0] == '0') {
		return 0, fmt.Errorf("annotation %s is %q, not a decimal size", key, s)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, fmt.Errorf("annotation %s is %q, not a decimal size", key, s)
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v > maxLevelSize {
		return 0, fmt.Errorf("annotation %s is %q, out of range", key, s)
	}
	return v, nil
}

// checkChain checks that the parents of levels form one chain in layer
// order, and names the first defect precisely.
func checkChain(levels []Level, index map[string]int) error {
	children := map[string][]string{}
	for _, l := range levels {
		if l.Parent != "" {
			children[l.Parent] = append(children[l.Parent], l.Name)
		}
	}
	for _, l := range levels {
		if l.Parent == "" {
			continue
		}
		if _, ok := index[l.Parent]; !ok {
			return fmt.Errorf("%w: layer %d (%s): parent %q is missing from the manifest", ErrNotChain, l.Index, l.Name, l.Parent)
		}
		if l.Parent == l.Name {
			return fmt.Errorf("%w: layer %d (%s): backing loop: the level is its own parent", ErrNotChain, l.Index, l.Name)
		}
		if c := children[l.Parent]; len(c) > 1 {
			return fmt.Errorf("%w: levels %q all build on %q (a fork: an image is one chain)", ErrNotChain, c, l.Parent)
		}
	}
	// Follow each level's parents: reaching a level twice is a loop.
	for _, l := range levels {
		seen := map[string]bool{l.Name: true}
		for p := l.Parent; p != ""; p = levels[index[p]].Parent {
			if seen[p] {
				return fmt.Errorf("%w: layer %d (%s): backing loop through %q", ErrNotChain, l.Index, l.Name, p)
			}
			seen[p] = true
		}
	}
	var bases []string
	for _, l := range levels {
		if l.Parent == "" {
			bases = append(bases, l.Name)
		}
	}
	if len(bases) != 1 {
		return fmt.Errorf("%w: levels %q have no parent (an image has one base)", ErrNotChain, bases)
	}
	if levels[0].Parent != "" {
		return fmt.Errorf("%w: layer 0 (%s) has parent %q; the base comes first", ErrNotChain, levels[0].Name, levels[0].Parent)
	}
	for _, l := range levels[1:] {
		if prev := levels[l.Index-1].Name; l.Parent != prev {
			return fmt.Errorf("%w: layer %d (%s) has parent %q, want the previous layer %q (levels go base first)", ErrNotChain, l.Index, l.Name, l.Parent, prev)
		}
	}
	return nil
}

// imageConfig is the image config of a chain image: nothing but the
// platform and the diffIDs, so it depends on the levels alone.
type imageConfig struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
	RootFS       struct {
		Type    string    `json:"type"`
		DiffIDs []v1.Hash `json:"diff_ids"`
	} `json:"rootfs"`
}

// ConfigJSON returns the image config of a chain image with levels (base
// first) for architecture arch: {"architecture": arch, "os": "linux",
// "rootfs": {"type": "layers", "diff_ids": [the level digests]}}.
func ConfigJSON(levels []Level, arch string) ([]byte, error) {
	var c imageConfig
	c.Architecture, c.OS = arch, "linux"
	c.RootFS.Type = "layers"
	c.RootFS.DiffIDs = make([]v1.Hash, len(levels))
	for i, l := range levels {
		c.RootFS.DiffIDs[i] = l.Digest
	}
	return json.Marshal(&c)
}

// CheckConfig checks that raw, the image config of a chain image, lists
// the level digests as its diffIDs (the layers are uncompressed, so each
// diffID is the layer digest).
func CheckConfig(raw []byte, levels []Level) error {
	cfg, err := v1.ParseConfigFile(bytes.NewReader(raw))
	if err != nil {
		return fmt.Errorf("%w: image config: %v", ErrNotChain, err)
	}
	if cfg.RootFS.Type != "layers" {
		return fmt.Errorf("%w: image config rootfs type %q, want \"layers\"", ErrNotChain, cfg.RootFS.Type)
	}
	if len(cfg.RootFS.DiffIDs) != len(levels) {
		return fmt.Errorf("%w: image config lists %d diffIDs for %d layers", ErrNotChain, len(cfg.RootFS.DiffIDs), len(levels))
	}
	for i, l := range levels {
		if cfg.RootFS.DiffIDs[i] != l.Digest {
			return fmt.Errorf("%w: image config diffID %d is %s, but layer %d (%s) is %s (chain layers are uncompressed)", ErrNotChain, i, cfg.RootFS.DiffIDs[i], i, l.Name, l.Digest)
		}
	}
	return nil
}
