package layers

import "fmt"

// Default limits, used for each zero field of Limits.
const (
	// DefaultMaxBytes caps the uncompressed tar stream: 64 GiB.
	DefaultMaxBytes = 64 << 30
	// DefaultMaxEntries caps the number of tar entries: 4 Mi.
	DefaultMaxEntries = 4 << 20
	// DefaultMaxPAXHeaderBytes caps the PAX records of one entry: 1 MiB
	// (archive/tar itself refuses larger PAX headers).
	DefaultMaxPAXHeaderBytes = 1 << 20
	// DefaultZstdMaxWindow caps the zstd window: 128 MiB (zstd --long=27).
	DefaultZstdMaxWindow = 128 << 20
	// DefaultZstdMaxMemory caps the zstd decoder's memory: 256 MiB.
	DefaultZstdMaxMemory = 256 << 20
)

// Limits bound the resources that reading an untrusted layer may use. The
// zero value of each field means the documented Default* constant; a
// negative value (or for the unsigned fields, none) is invalid.
type Limits struct {
	// MaxBytes caps the uncompressed size of the tar stream, and
	// separately the sum of the entries' sizes, which for sparse files
	// exceeds what the stream holds (default DefaultMaxBytes).
	MaxBytes int64
	// MaxEntries caps the number of tar entries (default DefaultMaxEntries).
	MaxEntries int
	// MaxPAXHeaderBytes caps the total size of one entry's PAX records,
	// keys plus values (default DefaultMaxPAXHeaderBytes).
	MaxPAXHeaderBytes int
	// ZstdMaxWindow caps the zstd window size (default DefaultZstdMaxWindow).
	ZstdMaxWindow uint64
	// ZstdMaxMemory caps the zstd decoder's memory (default
	// DefaultZstdMaxMemory).
	ZstdMaxMemory uint64
}

// withDefaults validates l and fills in defaults.
func (l Limits) withDefaults() (Limits, error) {
	if l.MaxBytes < 0 || l.MaxEntries < 0 || l.MaxPAXHeaderBytes < 0 {
		return l, fmt.Errorf("layers: negative limit in %+v", l)
	}
	if l.MaxBytes == 0 {
		l.MaxBytes = DefaultMaxBytes
	}
	if l.MaxEntries == 0 {
		l.MaxEntries = DefaultMaxEntries
	}
	if l.MaxPAXHeaderBytes == 0 {
		l.MaxPAXHeaderBytes = DefaultMaxPAXHeaderBytes
	}
	if l.ZstdMaxWindow == 0 {
		l.ZstdMaxWindow = DefaultZstdMaxWindow
	}
	if l.ZstdMaxMemory == 0 {
		l.ZstdMaxMemory = DefaultZstdMaxMemory
	}
	if l.ZstdMaxWindow < 1024 {
		return l, fmt.Errorf("layers: ZstdMaxWindow %d is below zstd's minimum of 1 KiB", l.ZstdMaxWindow)
	}
	return l, nil
}
