package dedup

import (
	"bytes"
	"crypto/sha256"
	"math/rand/v2"
	"slices"
	"testing"
)

// cdcChunks cuts data with a Chunker fed in pieces of random sizes.
func cdcChunks(t testing.TB, data []byte, rng *rand.Rand) [][]byte {
	var out [][]byte
	c := NewChunker(func(ch []byte) error {
		out = append(out, bytes.Clone(ch))
		return nil
	})
	for p := data; len(p) > 0; {
		n := min(len(p), 1+rng.IntN(300<<10))
		if _, err := c.Write(p[:n]); err != nil {
			t.Fatal(err)
		}
		p = p[n:]
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestFastCDC(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	data := make([]byte, 24<<20)
	fillRandom(rng, data)
	a := cdcChunks(t, data, rand.New(rand.NewPCG(1, 1)))
	b := cdcChunks(t, data, rand.New(rand.NewPCG(2, 2)))
	if len(a) != len(b) {
		t.Fatalf("%d chunks vs %d with other write sizes", len(a), len(b))
	}
	var joined []byte
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			t.Fatalf("chunk %d depends on write sizes", i)
		}
		if n := len(a[i]); (n < CDCMinSize && i != len(a)-1) || n > CDCMaxSize {
			t.Errorf("chunk %d: %d bytes", i, n)
		}
		joined = append(joined, a[i]...)
	}
	if !bytes.Equal(joined, data) {
		t.Fatal("chunks do not add up to the input")
	}
	avg := len(data) / len(a)
	t.Logf("%d chunks, average %d bytes", len(a), avg)
	if avg < CDCAvgSize*3/4 || avg > CDCAvgSize*5/4 {
		t.Errorf("average chunk %d bytes, want about %d", avg, CDCAvgSize)
	}
	// Content-defined: inserting bytes at the front changes the chunks
	// near it only.
	shifted := append([]byte("a few inserted bytes"), data...)
	c := cdcChunks(t, shifted, rng)
	have := map[[32]byte]bool{}
	for _, ch := range a {
		have[sha256.Sum256(ch)] = true
	}
	shared := 0
	for _, ch := range c {
		if have[sha256.Sum256(ch)] {
			shared += len(ch)
		}
	}
	if shared < len(data)*95/100 {
		t.Errorf("after an insertion only %d of %d bytes are in shared chunks", shared, len(data))
	}
	// Boundaries are stable across versions: the first cuts of a fixed
	// input (regenerate only when changing the gear table on purpose).
	var first []int
	for _, ch := range a[:4] {
		first = append(first, len(ch))
	}
	if want := []int{78020, 78101, 107234, 111022}; !slices.Equal(first, want) {
		t.Errorf("first cuts %v, want %v", first, want)
	}
	// Short inputs are one chunk; empty input none.
	if got := cdcChunks(t, data[:1000], rng); len(got) != 1 || len(got[0]) != 1000 {
		t.Errorf("short input: %d chunks", len(got))
	}
	if got := cdcChunks(t, nil, rng); len(got) != 0 {
		t.Errorf("empty input: %d chunks", len(got))
	}
}
