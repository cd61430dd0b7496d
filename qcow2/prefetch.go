package qcow2

import (
	"encoding/binary"
	"io"
	"sync"
)

// PrefetchMetadata reads the header of the qcow2 image in r (size bytes
// long), its L1 table and the L2 tables the L1 table points at, the L2
// tables in parallel, and drops what it read. It is for a caching
// io.ReaderAt, such as one reading a registry blob by HTTP range
// requests: afterwards the cache holds what OpenReaderAt and the first
// mappings read one structure at a time. At most budget bytes of tables
// are read. It is best effort and silent: it stops at anything out of
// range or unreadable, since opening the image checks every structure
// itself.
func PrefetchMetadata(r io.ReaderAt, size, budget int64) {
	buf := make([]byte, min(size, 4096))
	n, _ := r.ReadAt(buf, 0)
	h, err := decodeHeader("", buf[:n])
	if err != nil {
		return
	}
	cs := h.ClusterSize()
	l1Size, l1Off := int64(h.L1Size), int64(h.L1TableOffset)
	if l1Size == 0 || l1Size*8 > budget || l1Off%cs != 0 || l1Off+l1Size*8 > size {
		return
	}
	l1 := make([]byte, l1Size*8)
	if _, err := r.ReadAt(l1, l1Off); err != nil {
		return
	}
	var wg sync.WaitGroup
	spent := l1Size * 8
	for i := range l1Size {
		off := l1Entry(binary.BigEndian.Uint64(l1[i*8:])).l2Offset()
		if off == 0 || off%cs != 0 || off+cs > size {
			continue
		}
		if spent += cs; spent > budget {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.ReadAt(make([]byte, cs), off)
		}()
	}
	wg.Wait()
}
