package ext4

import (
	"bytes"
	"context"
	"testing"

	"github.com/imgtool/imgtool/internal/tartest"
)

// blockRecorder is an io.WriterAt that records which blocks each write
// touched, and with which content.
type blockRecorder struct{ blocks map[uint32][]byte }

func (r *blockRecorder) WriteAt(p []byte, off int64) (int, error) {
	for i := 0; i < len(p); i += blockSize {
		r.blocks[uint32(off/blockSize)+uint32(i/blockSize)] = bytes.Clone(p[i:min(len(p), i+blockSize)])
	}
	return len(p), nil
}

// TestAllocatorForwardOnly: the blocks of a file a later layer deletes
// are never written again in the chain (each level leaves the ones below
// untouched but for metadata), and a layer's new data lands past every
// block an earlier layer used.
func TestAllocatorForwardOnly(t *testing.T) {
	fs, err := New(Options{Size: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	a := bytes.Repeat([]byte{0xAA}, 64*blockSize)
	layers := [][]tarEntry{
		{dirE("d/", 0o755), fileE("d/a", 0o644, a), fileE("d/b", 0o644, []byte("b"))},
		{fileE("d/.wh.a", 0o644, nil), fileE("d/c", 0o644, bytes.Repeat([]byte{0xCC}, 64*blockSize))},
		{fileE("d/b", 0o644, []byte("b2")), fileE("d/e", 0o644, bytes.Repeat([]byte{0xEE}, 8*blockSize))},
	}
	var aBlocks []uint32
	var highest uint32
	for k, l := range layers {
		rec := &blockRecorder{blocks: map[uint32][]byte{}}
		if _, err := fs.ApplyLayer(context.Background(), bytes.NewReader(tartest.Layer(l...)), rec); err != nil {
			t.Fatalf("layer %d: %v", k, err)
		}
		var lowestData uint32 = 1<<32 - 1
		for b, data := range rec.blocks {
			if k == 0 && bytes.Equal(data, a[:blockSize]) {
				aBlocks = append(aBlocks, b)
			}
			if data[0] == 0xCC || data[0] == 0xEE {
				lowestData = min(lowestData, b)
			}
		}
		if k > 0 {
			for _, b := range aBlocks {
				if _, ok := rec.blocks[b]; ok {
					t.Errorf("layer %d (0-based) wrote block %d, which held d/a (deleted by layer 1)", k, b)
				}
			}
			if lowestData <= highest {
				t.Errorf("layer %d put data at block %d, not past %d (the highest block used before)", k, lowestData, highest)
			}
		}
		for b := range rec.blocks {
			if b < fs.geo.blocks && fs.blockUsed(b) {
				highest = max(highest, b)
			}
		}
	}
	if len(aBlocks) != 64 {
		t.Fatalf("found %d blocks of d/a, want 64", len(aBlocks))
	}
}
