package inflate

import (
	"bytes"
	stdflate "compress/flate"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"testing"

	"github.com/klauspost/compress/flate"
)

// corpus returns inputs of the kinds qcow2 clusters hold: text, random
// bytes, zeros, short and long repeats, and a mix.
func corpus(n int, seed uint64) map[string][]byte {
	rng := rand.New(rand.NewPCG(seed, 7))
	words := []string{"qcow2 ", "cluster ", "refcount ", "the ", "of ", "backing ", "L2 ", "table\n", "zlib ", "0x", "deadbeef "}
	var text []byte
	for len(text) < n {
		text = append(text, words[rng.IntN(len(words))]...)
	}
	vocab := make([]string, 4096)
	for i := range vocab {
		w := make([]byte, 2+rng.IntN(9))
		for j := range w {
			w[j] = 'a' + byte(rng.IntN(26))
		}
		vocab[i] = string(w) + " "
	}
	var many []byte
	for len(many) < n {
		many = append(many, vocab[rng.IntN(len(vocab))]...)
	}
	random := make([]byte, n)
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	short := make([]byte, n)
	for i := range short {
		short[i] = "abcab"[i%5]
	}
	mix := make([]byte, n)
	for i := 0; i < n; {
		k := min(n-i, 1+rng.IntN(300))
		switch rng.IntN(3) {
		case 0:
			copy(mix[i:i+k], random[i:])
		case 1:
			copy(mix[i:i+k], text[rng.IntN(n/2+1):])
		}
		i += k
	}
	return map[string][]byte{"text": text[:n], "words": many[:n], "random": random, "zeros": make([]byte, n), "short": short, "mix": mix}
}

func deflate(t testing.TB, data []byte, level, window int) []byte {
	var buf bytes.Buffer
	var w io.WriteCloser
	var err error
	if window > 0 {
		w, err = flate.NewWriterWindow(&buf, window)
	} else {
		w, err = flate.NewWriter(&buf, level)
	}
	if err != nil {
		t.Fatal(err)
	}
	w.Write(data)
	w.Close()
	return buf.Bytes()
}

func TestRoundTrip(t *testing.T) {
	var d Decoder
	for _, size := range []int{1, 100, 512, 4096, 65536, 2 << 20} {
		for name, data := range corpus(size, uint64(size)) {
			for _, level := range []int{stdflate.HuffmanOnly, 0, 1, 5, 9} {
				for _, window := range []int{0, 4096} {
					var src []byte
					if window > 0 {
						if level != 9 {
							continue
						}
						src = deflate(t, data, 0, window)
					} else {
						src = deflate(t, data, level, 0)
					}
					got := make([]byte, len(data))
					if err := d.Decode(got, src); err != nil {
						t.Fatalf("%s/%d level %d window %d: %v", name, size, level, window, err)
					}
					if !bytes.Equal(got, data) {
						t.Fatalf("%s/%d level %d window %d: output differs", name, size, level, window)
					}
					// A shorter output stops mid-stream, and trailing
					// bytes after the stream are ignored.
					half := make([]byte, len(data)/2)
					if err := d.Decode(half, append(src, 0xff, 0xee)); err != nil || !bytes.Equal(half, data[:len(half)]) {
						t.Fatalf("%s/%d level %d: half decode: %v", name, size, level, err)
					}
				}
			}
		}
	}
}

func TestStdlibWriter(t *testing.T) {
	var d Decoder
	for name, data := range corpus(1<<16, 3) {
		for _, level := range []int{stdflate.HuffmanOnly, 1, 6, 9} {
			var buf bytes.Buffer
			w, _ := stdflate.NewWriter(&buf, level)
			w.Write(data)
			w.Close()
			got := make([]byte, len(data))
			if err := d.Decode(got, buf.Bytes()); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("%s level %d: %v", name, level, err)
			}
		}
	}
}

func TestErrors(t *testing.T) {
	data := corpus(65536, 9)["text"]
	good := deflate(t, data, 6, 0)
	var d Decoder
	for _, tc := range []struct {
		name   string
		src    []byte
		n      int
		want   error
		reason string
	}{
		{"empty", nil, 1, ErrTruncated, ""},
		{"truncated", good[:len(good)/2], len(data), ErrTruncated, ""},
		{"output longer than stream", good, len(data) + 1, ErrTruncated, ""},
		{"block type 3", []byte{0x07, 0, 0}, 10, nil, "invalid block type 3"},
		{"stored length complement", []byte{0x01, 0x05, 0x00, 0x00, 0x00, 'a', 'b', 'c', 'd', 'e'}, 5, nil, "stored block length does not match its complement"},
		{"stored truncated", []byte{0x01, 0x05, 0x00, 0xfa, 0xff, 'a', 'b'}, 5, ErrTruncated, ""},
		// Fixed block: literal 'a' then a match at distance 2 with only
		// one byte written.
		{"distance too far", fixedBlock(t, []sym{{lit: 'a'}, {length: 3, dist: 2}}), 4, nil, "distance reaches before the start of the output"},
	} {
		got := make([]byte, tc.n)
		err := d.Decode(got, tc.src)
		var ce *CorruptError
		switch {
		case tc.want != nil && !errors.Is(err, tc.want):
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		case tc.reason != "" && (!errors.As(err, &ce) || ce.Reason != tc.reason):
			t.Errorf("%s: err = %v, want reason %q", tc.name, err, tc.reason)
		}
	}
}

func TestStored(t *testing.T) {
	src := []byte{0x00, 0x03, 0x00, 0xfc, 0xff, 'a', 'b', 'c', 0x01, 0x02, 0x00, 0xfd, 0xff, 'd', 'e'}
	got := make([]byte, 5)
	var d Decoder
	if err := d.Decode(got, src); err != nil || string(got) != "abcde" {
		t.Fatalf("got %q, %v", got, err)
	}
}

// sym is a literal, or a match when length > 0.
type sym struct {
	lit          byte
	length, dist int
}

// fixedBlock hand-encodes a final fixed-Huffman block, for inputs no
// well-behaved compressor writes.
func fixedBlock(t *testing.T, syms []sym) []byte {
	var out []byte
	var acc uint64
	var n uint
	put := func(v uint64, bits uint) {
		acc |= v << n
		n += bits
		for n >= 8 {
			out = append(out, byte(acc))
			acc >>= 8
			n -= 8
		}
	}
	code := func(c uint32, l uint8) { put(uint64(reverse(c, l)), uint(l)) }
	litlen := func(s int) {
		switch {
		case s < 144:
			code(uint32(0x30+s), 8)
		case s < 256:
			code(uint32(0x190+s-144), 9)
		case s < 280:
			code(uint32(s-256), 7)
		default:
			code(uint32(0xc0+s-280), 8)
		}
	}
	put(1, 1) // final
	put(1, 2) // fixed
	for _, s := range syms {
		if s.length == 0 {
			litlen(int(s.lit))
			continue
		}
		i := 0
		for i+1 < len(lengthBase) && int(lengthBase[i+1]) <= s.length {
			i++
		}
		litlen(257 + i)
		put(uint64(s.length-int(lengthBase[i])), uint(lengthExtra[i]))
		j := 0
		for j+1 < maxDist && int(distBase[j+1]) <= s.dist {
			j++
		}
		code(uint32(j), 5)
		put(uint64(s.dist-int(distBase[j])), uint(distExtra[j]))
	}
	litlen(256)
	put(0, 7)
	return out
}

func TestFixedOverlap(t *testing.T) {
	// Overlapping matches of every short distance, and one near the end
	// of the output so the word copy cannot be used.
	want := []byte("abcabcabcabcabcabcxyxyxyxyxy")
	src := fixedBlock(t, []sym{{lit: 'a'}, {lit: 'b'}, {lit: 'c'}, {length: 15, dist: 3}, {lit: 'x'}, {lit: 'y'}, {length: 8, dist: 2}})
	got := make([]byte, len(want))
	var d Decoder
	if err := d.Decode(got, src); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("got %q, %v", got, err)
	}
}

// zlibOnly are the inputs zlib (and so QEMU, and this package) refuses
// but Go's compress/flate accepts.
func zlibOnly(err error) bool {
	var ce *CorruptError
	return errors.As(err, &ce) && (ce.Reason == "no end-of-block code" || ce.Reason == "code-length code: "+errIncomplete)
}

// FuzzDecode compares Decode with Go's compress/flate on arbitrary input.
func FuzzDecode(f *testing.F) {
	for name, data := range corpus(4096, 1) {
		_ = name
		f.Add(deflate(f, data, 6, 0), uint16(4096))
		f.Add(deflate(f, data, stdflate.HuffmanOnly, 0), uint16(1000))
		f.Add(deflate(f, data, 0, 4096), uint16(4096))
	}
	f.Add([]byte{0x01, 0x03, 0x00, 0xfc, 0xff, 'a', 'b', 'c'}, uint16(3))
	f.Fuzz(func(t *testing.T, src []byte, n uint16) {
		want := make([]byte, n)
		_, werr := io.ReadFull(stdflate.NewReader(bytes.NewReader(src)), want)
		got := make([]byte, n)
		var d Decoder
		err := d.Decode(got, src)
		switch {
		case err == nil && werr == nil:
			if !bytes.Equal(got, want) {
				t.Fatalf("output differs from compress/flate")
			}
		case err == nil && errors.Is(werr, io.ErrUnexpectedEOF):
			// compress/flate reads as many bits as the block's
			// end-of-block code is long before decoding any symbol,
			// so it can fail near the end of input where zlib does
			// not. Given padding it must agree.
			padded := append(append([]byte(nil), src...), make([]byte, 8)...)
			if _, werr = io.ReadFull(stdflate.NewReader(bytes.NewReader(padded)), want); werr != nil {
				t.Fatalf("compress/flate fails with %v even with padding, Decode succeeds", werr)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("output differs from compress/flate (padded input)")
			}
		case err == nil:
			t.Fatalf("compress/flate fails with %v, Decode succeeds", werr)
		case werr == nil && !zlibOnly(err):
			t.Fatalf("Decode fails with %v, compress/flate succeeds", err)
		}
	})
}

// zlibCluster returns a 64 KiB cluster as C zlib compresses it for QEMU
// (testdata/README), decoded by compress/flate.
func zlibCluster(t testing.TB) (src, data []byte) {
	src, err := os.ReadFile("testdata/words-zlib6-w12.deflate")
	if err != nil {
		t.Fatal(err)
	}
	data, err = io.ReadAll(stdflate.NewReader(bytes.NewReader(src)))
	if err != nil || len(data) != 65536 {
		t.Fatalf("%d bytes, %v", len(data), err)
	}
	return src, data
}

func TestZlibCluster(t *testing.T) {
	src, data := zlibCluster(t)
	got := make([]byte, len(data))
	var d Decoder
	if err := d.Decode(got, src); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("differs from compress/flate: %v", err)
	}
}

func BenchmarkDecode(b *testing.B) {
	zsrc, zdata := zlibCluster(b)
	for _, name := range []string{"zlib-words", "text", "words", "mix", "random"} {
		data := corpus(65536, 5)[name]
		src := deflate(b, data, 0, 4096) // a 4 KiB window, as QEMU writes clusters
		if name == "zlib-words" {
			src, data = zsrc, zdata
		}
		out := make([]byte, len(data))
		b.Run(name+"/inflate", func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			var d Decoder
			for b.Loop() {
				if err := d.Decode(out, src); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/klauspost", func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			var br bytes.Reader
			br.Reset(src)
			r := flate.NewReader(&br)
			for b.Loop() {
				br.Reset(src)
				r.(flate.Resetter).Reset(&br, nil)
				if _, err := io.ReadFull(r, out); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
