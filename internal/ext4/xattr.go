package ext4

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"sort"
	"strings"
)

// xattr is one extended attribute, its name split into the ext4 name
// index and the rest.
type xattr struct {
	index uint8
	name  string
	value []byte
}

const (
	xattrMagic      = 0xEA020000
	xattrBlockHdr   = 32
	inodeXattrSpace = inodeSize - 128 - 32
)

var xattrPrefixes = []struct {
	prefix string
	index  uint8
}{
	{"user.", 1},
	{"trusted.", 4},
	{"security.", 6},
}

// ErrUnsupportedXattr is returned for an xattr name ext4 cannot store.
var ErrUnsupportedXattr = fmt.Errorf("ext4: unsupported xattr")

// makeXattrs converts a tar's xattrs to ext4's, dropping trusted.overlay.*
// (overlayfs' own, meaningless in a flattened filesystem) and converting
// POSIX ACLs to ext4's compact form.
func makeXattrs(m map[string]string) ([]xattr, error) {
	var out []xattr
	for k, v := range m {
		if strings.HasPrefix(k, "trusted.overlay.") {
			continue
		}
		var x xattr
		switch k {
		case "system.posix_acl_access", "system.posix_acl_default":
			val, err := aclToExt4([]byte(v))
			if err != nil {
				return nil, fmt.Errorf("%w: %s: %v", ErrUnsupportedXattr, k, err)
			}
			x = xattr{index: 2, value: val}
			if k == "system.posix_acl_default" {
				x.index = 3
			}
		default:
			for _, p := range xattrPrefixes {
				if rest, ok := strings.CutPrefix(k, p.prefix); ok {
					x = xattr{index: p.index, name: rest, value: []byte(v)}
				}
			}
			if x.index == 0 {
				return nil, fmt.Errorf("%w: %q", ErrUnsupportedXattr, k)
			}
		}
		if len(x.name) > 255 {
			return nil, fmt.Errorf("%w: name %q is longer than 255 bytes", ErrUnsupportedXattr, k)
		}
		out = append(out, x)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.index != b.index {
			return a.index < b.index
		}
		if len(a.name) != len(b.name) {
			return len(a.name) < len(b.name)
		}
		return a.name < b.name
	})
	return out, nil
}

// aclToExt4 converts a VFS POSIX ACL (version 2, 8-byte entries) to
// ext4's (version 1, 4-byte entries for the owner, group, mask and other).
func aclToExt4(v []byte) ([]byte, error) {
	if len(v) < 4 || (len(v)-4)%8 != 0 || binary.LittleEndian.Uint32(v) != 2 {
		return nil, fmt.Errorf("not a POSIX ACL")
	}
	out := binary.LittleEndian.AppendUint32(nil, 1)
	for p := v[4:]; len(p) > 0; p = p[8:] {
		tag := binary.LittleEndian.Uint16(p)
		out = append(out, p[:4]...)
		switch tag {
		case 0x02, 0x08: // ACL_USER, ACL_GROUP carry an id
			out = append(out, p[4:8]...)
		case 0x01, 0x04, 0x10, 0x20:
		default:
			return nil, fmt.Errorf("ACL tag %#x", tag)
		}
	}
	return out, nil
}

func entrySize(x xattr) int { return (16 + len(x.name) + 3) &^ 3 }
func valueSize(x xattr) int { return (len(x.value) + 3) &^ 3 }
func xattrsSize(xs []xattr) int {
	n := 4 // terminating zero
	for _, x := range xs {
		n += entrySize(x) + valueSize(x)
	}
	return n
}

// fitsInInode reports whether xs fit in the space after i_extra_isize.
func fitsInInode(xs []xattr) bool { return 4+xattrsSize(xs) <= inodeXattrSpace }

// encodeInodeXattrs writes the in-inode xattr area (magic, entries,
// values at the end; value offsets count from the first entry).
func encodeInodeXattrs(b []byte, xs []xattr) bool {
	if !fitsInInode(xs) {
		return false
	}
	le32(b, xattrMagic)
	encodeEntries(b[4:inodeXattrSpace], 0, xs, false)
	return true
}

// encodeEntries writes entries from the start of area and values from
// its end. base is added to value offsets (the block header for a block).
func encodeEntries(area []byte, base int, xs []xattr, hash bool) {
	off := base
	end := len(area)
	for _, x := range xs {
		end -= valueSize(x)
		copy(area[end:], x.value)
		e := area[off:]
		e[0] = byte(len(x.name))
		e[1] = x.index
		le16(e[2:], uint16(end))
		le32(e[4:], 0)
		le32(e[8:], uint32(len(x.value)))
		if hash {
			le32(e[12:], xattrHash(x))
		}
		copy(e[16:], x.name)
		off += entrySize(x)
	}
}

// xattrHash is ext4_xattr_hash_entry.
func xattrHash(x xattr) uint32 {
	var h uint32
	for _, c := range []byte(x.name) {
		h = h<<5 ^ h>>27 ^ uint32(c)
	}
	v := make([]byte, valueSize(x))
	copy(v, x.value)
	for i := 0; i < len(v); i += 4 {
		h = h<<16 ^ h>>16 ^ binary.LittleEndian.Uint32(v[i:])
	}
	return h
}

// encodeXattrBlock builds an xattr block holding xs.
func encodeXattrBlock(xs []xattr) ([]byte, error) {
	if xattrBlockHdr+xattrsSize(xs) > blockSize {
		return nil, fmt.Errorf("%w: %d bytes of xattrs do not fit in a block", ErrUnsupportedXattr, xattrsSize(xs))
	}
	b := make([]byte, blockSize)
	le32(b[0:], xattrMagic)
	le32(b[4:], 1) // refcount
	le32(b[8:], 1) // blocks
	encodeEntries(b, xattrBlockHdr, xs, true)
	var h uint32
	for _, x := range xs {
		h = h<<16 ^ h>>16 ^ xattrHash(x)
	}
	le32(b[12:], h)
	return b, nil
}

func xattrsEqual(a, b []xattr) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].index != b[i].index || a[i].name != b[i].name || !bytes.Equal(a[i].value, b[i].value) {
			return false
		}
	}
	return true
}
