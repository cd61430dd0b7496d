package tartest

import (
	"archive/tar"
	"time"
)

// LayerTime is the mtime Layer gives entries that have none; its
// nanoseconds let a test see that sub-second times survive.
var LayerTime = time.Unix(1700000000, 123456789)

// Layer writes the entries into an uncompressed tar as a layer builder
// would: a regular file's size is its body's, an entry without an mtime
// gets LayerTime, and every header is PAX (which keeps the nanoseconds).
// Tar, by contrast, writes each header as given.
func Layer(entries ...Entry) []byte {
	fixed := make([]Entry, len(entries))
	for i, e := range entries {
		h := e.Header
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.Body))
		}
		if h.ModTime.IsZero() {
			h.ModTime = LayerTime
		}
		h.Format = tar.FormatPAX
		fixed[i] = Entry{Header: h, Body: e.Body}
	}
	return Tar(fixed...)
}
