package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/imgtool/imgtool/internal/registry"
	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// newBlobProgress returns a registry progress callback that draws one bar
// per blob on w (redrawn in place on a terminal, a line per finished blob
// otherwise), and the function to call when the operation ends. With
// enabled false it returns nil and a no-op.
func newBlobProgress(enabled bool, w io.Writer) (registry.ProgressFunc, func()) {
	if !enabled {
		return nil, func() {}
	}
	bp := &blobProgress{w: w, tty: isTerminal(w), index: map[digest.Digest]int{}}
	return bp.update, bp.finish
}

type blobProgress struct {
	w   io.Writer
	tty bool

	mu     sync.Mutex
	index  map[digest.Digest]int
	blobs  []registry.Progress
	drawn  int // lines drawn last time
	last   time.Time
	closed bool
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func (bp *blobProgress) update(p registry.Progress) {
	bp.mu.Lock()
	defer bp.mu.Unlock()
	if bp.closed {
		return
	}
	i, ok := bp.index[p.Digest]
	if !ok {
		i = len(bp.blobs)
		bp.index[p.Digest] = i
		bp.blobs = append(bp.blobs, p)
	}
	bp.blobs[i] = p
	final := p.State == registry.BlobDone || p.State == registry.BlobSkipped
	if !bp.tty {
		if final {
			fmt.Fprintln(bp.w, blobLine(p))
		}
		return
	}
	if now := time.Now(); final || now.Sub(bp.last) >= 100*time.Millisecond {
		bp.last = now
		bp.draw()
	}
}

func (bp *blobProgress) draw() {
	var b strings.Builder
	if bp.drawn > 0 {
		fmt.Fprintf(&b, "\x1b[%dA", bp.drawn)
	}
	for _, p := range bp.blobs {
		b.WriteString("\r\x1b[2K")
		b.WriteString(blobLine(p))
		b.WriteByte('\n')
	}
	bp.drawn = len(bp.blobs)
	io.WriteString(bp.w, b.String())
}

func (bp *blobProgress) finish() {
	bp.mu.Lock()
	defer bp.mu.Unlock()
	if bp.tty && len(bp.blobs) > 0 {
		bp.draw()
	}
	bp.closed = true
}

// blobLine renders one blob: short digest, a 30-column bar, bytes.
func blobLine(p registry.Progress) string {
	short := p.Digest.Encoded()
	if len(short) > 12 {
		short = short[:12]
	}
	const width = 30
	frac := 0.0
	if p.Size > 0 {
		frac = float64(p.Done) / float64(p.Size)
	}
	if frac > 1 {
		frac = 1
	}
	fill := int(frac * width)
	bar := strings.Repeat("=", fill) + strings.Repeat(" ", width-fill)
	state := ""
	switch p.State {
	case registry.BlobSkipped:
		state = " already there"
	case registry.BlobDone:
		state = " done"
	}
	return fmt.Sprintf("%s [%s] %s / %s%s", short, bar, storeBytes(p.Done), storeBytes(p.Size), state)
}
