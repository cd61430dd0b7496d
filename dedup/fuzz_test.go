package dedup

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// FuzzChunker checks the chunker's contract on arbitrary streams: the
// chunks add up to the input, respect the size bounds, and do not depend
// on how the stream is split into writes.
func FuzzChunker(f *testing.F) {
	seed := make([]byte, 4096)
	fillRandom(rand.New(rand.NewPCG(1, 2)), seed)
	f.Add(seed, uint16(100), uint8(7))
	f.Add([]byte("short"), uint16(1), uint8(200))
	f.Add([]byte{}, uint16(0), uint8(0))
	f.Fuzz(func(t *testing.T, unit []byte, split uint16, reps uint8) {
		// Repeat the input so that streams reach several maximum chunks.
		data := bytes.Repeat(unit, int(reps)*len(unit)%(1<<20)/max(len(unit), 1)+1)
		var whole, pieces [][]byte
		c := NewChunker(func(ch []byte) error { whole = append(whole, bytes.Clone(ch)); return nil })
		c.Write(data)
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		c = NewChunker(func(ch []byte) error { pieces = append(pieces, bytes.Clone(ch)); return nil })
		step := int(split)*8 + 1
		for p := data; len(p) > 0; {
			n := min(len(p), step)
			if _, err := c.Write(p[:n]); err != nil {
				t.Fatal(err)
			}
			p = p[n:]
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		if len(whole) != len(pieces) {
			t.Fatalf("%d chunks in one write, %d in writes of %d", len(whole), len(pieces), step)
		}
		var joined []byte
		for i := range whole {
			if !bytes.Equal(whole[i], pieces[i]) {
				t.Fatalf("chunk %d differs with writes of %d", i, step)
			}
			if n := len(whole[i]); n == 0 || n > CDCMaxSize || (n < CDCMinSize && i != len(whole)-1) {
				t.Fatalf("chunk %d of %d bytes", i, n)
			}
			joined = append(joined, whole[i]...)
		}
		if !bytes.Equal(joined, data) {
			t.Fatal("chunks do not add up to the input")
		}
	})
}
