// Package inflate decodes raw DEFLATE streams (RFC 1951) held in memory
// into a buffer of known size.
//
// It is made for qcow2 compressed clusters: the whole compressed stream
// is in memory, and it must decode to exactly one cluster. Working slice
// to slice, with a 64-bit bit buffer, two-level Huffman tables and
// word-sized match copies, it decodes about twice as fast as an
// io.Reader-based inflater (compress/flate, klauspost/compress/flate),
// and it allocates nothing once a Decoder has decoded its first dynamic
// block.
//
// Acceptance follows zlib, which QEMU uses: over-subscribed and
// incomplete codes are refused (except a single distance or
// literal/length code of length 1), a dynamic block must have an
// end-of-block code, and a match may not reach before the start of the
// output. Distances up to 32 KiB are accepted, although QEMU writes with
// a 4 KiB window.
package inflate

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
)

// ErrTruncated reports a stream that ended before the output was full.
var ErrTruncated = errors.New("inflate: stream ends before the output is full")

// CorruptError reports invalid DEFLATE data at an input byte offset.
type CorruptError struct {
	Offset int64  // input byte where the decoder noticed
	Reason string // what is wrong
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("inflate: corrupt input at byte %d: %s", e.Offset, e.Reason)
}

// Table layout. A table entry is a uint32:
//
//	bits 0-3   n, the number of bits the entry consumes
//	bit  4     flagSub: a main-table pointer to a subtable; bits 8-31
//	           are the subtable's start in the subtable slice, and n
//	           the number of bits that index it
//	bit  5     flagBad: not a code, or the code of an invalid symbol
//	bit  6     flagPair: two literals (see below)
//	bit  7     flagLen: a length code, or with flagEOB end of block
//	bit  12    flagEOB
//	bits 8-11  extra bits of a length or distance code
//	bits 16-31 base of a length or distance
//
// Otherwise a literal/length entry holds literals: bits 8-15 the first,
// 16-23 a second if the entry is a pair (two literals whose codes
// together fit the main table), 24-27 the first code's length and 28-31
// the number of literals. The decoder stores two bytes and advances by
// that number, so one or two literals take the same branch-free path.
// Literal entries in subtables hold just the literal in bits 8-15, and
// code-length entries a symbol there. Packing the base and extra
// bits into the entry saves two dependent loads per match.
const (
	flagSub  = 0x10
	flagBad  = 0x20
	flagPair = 0x40
	flagLen  = 0x80
	flagEOB  = 0x1000

	litlenBits = 11 // main table bits for literal/length codes
	distBits   = 8  // main table bits for distance codes
	clenBits   = 7  // the code-length code never exceeds 7 bits

	maxLitlen = 286
	maxDist   = 30
)

// Symbol kinds, for the entries build writes.
const (
	kindClen = iota
	kindLitlen
	kindDist
)

// payload returns the entry bits of symbol sym, other than n.
func payload(kind int, sym int) uint32 {
	switch kind {
	case kindLitlen:
		switch {
		case sym < 256:
			return uint32(sym) << 8
		case sym == 256:
			return flagLen | flagEOB
		case sym < maxLitlen:
			return flagLen | uint32(lengthExtra[sym-257])<<8 | uint32(lengthBase[sym-257])<<16
		}
		return flagBad // 286 and 287, in the fixed code
	case kindDist:
		if sym < maxDist {
			return uint32(distExtra[sym])<<8 | uint32(distBase[sym])<<16
		}
		return flagBad // 30 and 31, in the fixed code
	}
	return uint32(sym) << 8
}

type table[M any] struct {
	main M        // [1<<bits]uint32
	sub  []uint32 // subtables, for codes longer than the main table's bits
}

// Decoder holds the tables of one decode at a time. The zero value is
// ready to use. A Decoder is not safe for concurrent use; keep one per
// goroutine or take them from a sync.Pool.
type Decoder struct {
	litlen table[[1 << litlenBits]uint32]
	dist   table[[1 << distBits]uint32]
	clen   [1 << clenBits]uint32
	lens   [maxLitlen + maxDist]uint8
}

var (
	lengthBase = [29]uint16{3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31,
		35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258}
	lengthExtra = [29]uint8{0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2,
		3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0}
	distBase = [32]uint16{1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193,
		257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577}
	distExtra = [32]uint8{0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6,
		7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13}
	clenOrder = [19]uint8{16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15}
)

// The fixed code of block type 1, built once.
var (
	fixedOnce sync.Once
	fixed     struct {
		litlen table[[1 << litlenBits]uint32]
		dist   table[[1 << distBits]uint32]
	}
)

func buildFixed() {
	var lens [288 + 32]uint8
	for i := range 288 {
		switch {
		case i < 144:
			lens[i] = 8
		case i < 256:
			lens[i] = 9
		case i < 280:
			lens[i] = 7
		default:
			lens[i] = 8
		}
	}
	for i := range 32 {
		lens[288+i] = 5
	}
	// The fixed codes are complete by construction; build cannot fail.
	fixed.litlen.sub, _ = build(fixed.litlen.main[:], fixed.litlen.sub[:0], lens[:288], litlenBits, false, kindLitlen)
	pairLiterals(&fixed.litlen.main)
	fixed.dist.sub, _ = build(fixed.dist.main[:], fixed.dist.sub[:0], lens[288:], distBits, false, kindDist)
}

var (
	errOversubscribed = "over-subscribed Huffman code"
	errIncomplete     = "incomplete Huffman code"
)

// build fills main (1<<bits entries) and appends subtables to sub for the
// canonical code with the given code lengths. Symbols with length 0 have
// no code. strict refuses every incomplete code (zlib's rule for the
// code-length code); otherwise a lone code of length 1 is allowed, and
// so is an empty code (a distance code for a block of literals).
func build(main []uint32, sub []uint32, lens []uint8, bits uint, strict bool, kind int) ([]uint32, string) {
	var count [16]uint16
	for _, l := range lens {
		count[l]++
	}
	count[0] = 0
	left := 1
	maxLen := 0
	for l := 1; l <= 15; l++ {
		left <<= 1
		left -= int(count[l])
		if left < 0 {
			return sub, errOversubscribed
		}
		if count[l] != 0 {
			maxLen = l
		}
	}
	if left > 0 && (strict || maxLen > 1) {
		return sub, errIncomplete
	}
	if left > 0 {
		// An incomplete code leaves bit patterns that are no code;
		// a complete one overwrites every main entry below.
		for i := range main {
			main[i] = flagBad
		}
	}
	var next [16]uint32
	code := uint32(0)
	for l := 1; l <= 15; l++ {
		code = (code + uint32(count[l-1])) << 1
		next[l] = code
	}
	// First pass: direct entries, and the widest code under each
	// main-table prefix that needs a subtable.
	var subBits [1 << litlenBits]uint8
	mask := uint32(1)<<bits - 1
	for sym, l := range lens {
		if l == 0 {
			continue
		}
		rev := reverse(next[l], l)
		next[l]++
		if uint(l) <= bits {
			e := payload(kind, sym) | uint32(l)
			for i := rev; i < 1<<bits; i += 1 << l {
				main[i] = e
			}
			continue
		}
		p := rev & mask
		subBits[p] = max(subBits[p], l-uint8(bits))
	}
	for p := range uint32(1) << bits {
		if sb := subBits[p]; sb != 0 {
			main[p] = uint32(len(sub))<<8 | flagSub | uint32(sb)
			for range 1 << sb {
				sub = append(sub, flagBad)
			}
		}
	}
	// Second pass: fill the subtables.
	for l := 1; l <= 15; l++ {
		next[l] = 0
	}
	code = 0
	for l := 1; l <= 15; l++ {
		code = (code + uint32(count[l-1])) << 1
		next[l] = code
	}
	for sym, l := range lens {
		if l == 0 {
			continue
		}
		rev := reverse(next[l], l)
		next[l]++
		if uint(l) <= bits {
			continue
		}
		ptr := main[rev&mask]
		start, sb := ptr>>8, ptr&15
		n := uint32(l) - uint32(bits)
		e := payload(kind, sym) | n
		for i := rev >> bits; i < 1<<sb; i += 1 << n {
			sub[start+i] = e
		}
	}
	return sub, ""
}

// pairLiterals completes the main table's literal entries: each gets
// its count and first-code length, and where the bits after a short
// literal code hold a second literal code that also fits, the entry
// becomes a pair. Literal-heavy data (QEMU compresses with a 4 KiB
// window, so much of a cluster is literals) then takes one lookup per
// two bytes.
func pairLiterals(main *[1 << litlenBits]uint32) {
	// Downwards, so that main[i>>n1] (at most i) still holds its single
	// entry when entry i reads it.
	for i := len(main) - 1; i >= 0; i-- {
		e := main[i]
		n1 := e & 15
		if e&(flagSub|flagBad|flagLen) != 0 {
			continue
		}
		e2 := main[uint32(i)>>n1]
		main[i] = 1<<28 | n1<<24 | e
		if n1 >= litlenBits {
			continue
		}
		n2 := e2 & 15
		if e2&(flagSub|flagBad|flagLen) != 0 || n1+n2 > litlenBits {
			continue
		}
		main[i] = 2<<28 | n1<<24 | (e2>>8&0xff)<<16 | (e>>8&0xff)<<8 | flagPair | (n1 + n2)
	}
}

// reverse returns the low n bits of code in reverse order: DEFLATE packs
// Huffman codes starting with their most significant bit.
func reverse(code uint32, n uint8) uint32 {
	var r uint32
	for range n {
		r = r<<1 | code&1
		code >>= 1
	}
	return r
}

// bitReader is the decoder's input: bits of src, least significant first.
//
// Bits are loaded into bitbuf ahead of use. refill's fast path loads a
// whole word and counts only the bytes that fit entirely; the bits above
// nbits are then those same bytes, so OR-ing them in again is harmless.
// Near the end of src it goes a byte at a time and feeds zeros past the
// end, failing once some of those zeros were consumed (a valid stream
// never reads them).
type bitReader struct {
	src     []byte
	bitbuf  uint64 // pending bits
	nbits   uint   // how many of bitbuf's low bits are valid
	in      int    // next byte of src to load
	overrun int    // zero bytes fed in past the end of src
}

// refill makes nbits > 56, or reports that the input ran out.
func (r *bitReader) refill() bool {
	if r.in+8 <= len(r.src) {
		r.bitbuf |= binary.LittleEndian.Uint64(r.src[r.in:]) << r.nbits
		r.in += int(63-r.nbits) >> 3
		r.nbits |= 56
		return true
	}
	if r.exhausted() {
		return false
	}
	for r.nbits <= 56 {
		if r.in < len(r.src) {
			r.bitbuf |= uint64(r.src[r.in]) << r.nbits
			r.in++
		} else {
			r.overrun++
		}
		r.nbits += 8
	}
	return true
}

// take returns the next n (at most 32) bits.
func (r *bitReader) take(n uint) (uint32, bool) {
	if r.nbits < n && !r.refill() {
		return 0, false
	}
	v := uint32(r.bitbuf & (1<<n - 1))
	r.bitbuf >>= n
	r.nbits -= n
	return v, true
}

// exhausted reports whether bits past the end of src were consumed.
func (r *bitReader) exhausted() bool { return r.overrun*8 > int(r.nbits) }

func (r *bitReader) corrupt(reason string) error {
	return &CorruptError{Offset: int64(r.in - int(r.nbits/8)), Reason: reason}
}

// Decode decodes the raw DEFLATE stream at the start of src until dst is
// full. It stops there, mid-block if need be: bytes of src after that
// point are not looked at, as zlib does when its output buffer fills. It
// returns ErrTruncated if the stream ends (or src runs out) first, and a
// *CorruptError for invalid data.
func (d *Decoder) Decode(dst, src []byte) error {
	fixedOnce.Do(buildFixed)
	r := bitReader{src: src}
	out := 0 // next byte of dst to write
	final := false
	for out < len(dst) && !final {
		v, ok := r.take(3)
		if !ok {
			return ErrTruncated
		}
		final = v&1 != 0
		var (
			lmain *[1 << litlenBits]uint32
			lsub  []uint32
			dmain *[1 << distBits]uint32
			dsub  []uint32
		)
		switch v >> 1 {
		case 0: // stored
			// Drop to a byte boundary and hand the whole pending
			// bytes back to src.
			r.bitbuf >>= r.nbits & 7
			r.nbits &^= 7
			pending := int(r.nbits/8) - r.overrun
			if pending < 0 {
				return ErrTruncated
			}
			in := r.in - pending
			r = bitReader{src: src}
			if len(src)-in < 4 {
				return ErrTruncated
			}
			n := int(binary.LittleEndian.Uint16(src[in:]))
			if uint16(n) != ^binary.LittleEndian.Uint16(src[in+2:]) {
				return &CorruptError{Offset: int64(in), Reason: "stored block length does not match its complement"}
			}
			in += 4
			n = min(n, len(dst)-out)
			if len(src)-in < n {
				return ErrTruncated
			}
			copy(dst[out:], src[in:in+n])
			out += n
			r.in = in + n
			continue
		case 1:
			lmain, lsub = &fixed.litlen.main, fixed.litlen.sub
			dmain, dsub = &fixed.dist.main, fixed.dist.sub
		case 2:
			if err := d.readDynamic(&r); err != nil {
				return err
			}
			lmain, lsub = &d.litlen.main, d.litlen.sub
			dmain, dsub = &d.dist.main, d.dist.sub
		default:
			return r.corrupt("invalid block type 3")
		}
		var err error
		if out, err = decodeBlock(dst, out, &r, lmain, lsub, dmain, dsub); err != nil {
			return err
		}
	}
	if out < len(dst) || r.exhausted() {
		return ErrTruncated
	}
	return nil
}

// decodeBlock decodes a Huffman-coded block into dst from out until its
// end-of-block code or until dst is full, and returns the new out. The
// bit reader's state lives in locals here, the hot loop of the package.
func decodeBlock(dst []byte, out int, r *bitReader, lmain *[1 << litlenBits]uint32, lsub []uint32,
	dmain *[1 << distBits]uint32, dsub []uint32) (int, error) {
	src := r.src
	bitbuf, nbits, in := r.bitbuf, r.nbits, r.in
	// Locals only: a closure or defer over them would keep them out of
	// registers. Every return writes them back.
	corrupt := func(reason string, bitbuf uint64, nbits uint, in int) error {
		r.bitbuf, r.nbits, r.in = bitbuf, nbits, in
		return r.corrupt(reason)
	}
decode:
	for out < len(dst) {
		// Make sure of a few literal lookups. A short match leaves
		// enough, so most matches are followed by no refill here.
		if nbits < 32 {
			if in+8 <= len(src) {
				bitbuf |= binary.LittleEndian.Uint64(src[in:]) << nbits
				in += int(63-nbits) >> 3
				nbits |= 56
			} else {
				r.bitbuf, r.nbits, r.in = bitbuf, nbits, in
				ok := r.refill()
				bitbuf, nbits, in = r.bitbuf, r.nbits, r.in
				if !ok {
					return out, ErrTruncated
				}
			}
		}
		// Literals, one or two per lookup, while the bits last: any
		// code of at most litlenBits bits is decodable with that many.
		e := lmain[bitbuf&(1<<litlenBits-1)]
		for e&(flagSub|flagBad|flagLen) == 0 && out+2 <= len(dst) {
			binary.LittleEndian.PutUint16(dst[out:], uint16(e>>8))
			out += int(e >> 28)
			bitbuf >>= e & 15
			nbits -= uint(e & 15)
			if nbits < litlenBits {
				continue decode
			}
			e = lmain[bitbuf&(1<<litlenBits-1)]
		}
		if out == len(dst) {
			// Full: e must not be consumed (a match would take bits
			// a complete stream need not have).
			break
		}
		if e&(flagSub|flagBad|flagLen) == 0 {
			// Room for one byte at most.
			if out < len(dst) {
				dst[out] = byte(e >> 8)
				bitbuf >>= (e >> 24) & 15
				nbits -= uint((e >> 24) & 15)
				out++
			}
			continue
		}
		// Refill to >= 56 bits: enough for a length code (15), its
		// extra bits (5), a distance code (15) and its extra bits
		// (13). Refilling adds bits above the ones e was looked up
		// with, so e stays valid.
		if nbits < 48 {
			if in+8 <= len(src) {
				bitbuf |= binary.LittleEndian.Uint64(src[in:]) << nbits
				in += int(63-nbits) >> 3
				nbits |= 56
			} else {
				r.bitbuf, r.nbits, r.in = bitbuf, nbits, in
				ok := r.refill()
				bitbuf, nbits, in = r.bitbuf, r.nbits, r.in
				if !ok {
					return out, ErrTruncated
				}
			}
		}
		if e&(flagSub|flagBad) != 0 {
			if e&flagBad != 0 {
				return out, corrupt("invalid literal/length code", bitbuf, nbits, in)
			}
			bitbuf >>= litlenBits
			nbits -= litlenBits
			e = lsub[e>>8+uint32(bitbuf&(1<<(e&15)-1))]
			if e&flagBad != 0 {
				return out, corrupt("invalid literal/length code", bitbuf, nbits, in)
			}
			if e&flagLen == 0 {
				dst[out] = byte(e >> 8)
				out++
				bitbuf >>= e & 15
				nbits -= uint(e & 15)
				continue
			}
		}
		if e&flagEOB != 0 {
			bitbuf >>= e & 15
			nbits -= uint(e & 15)
			r.bitbuf, r.nbits, r.in = bitbuf, nbits, in
			return out, nil
		}
		// A match: the length code and its extra bits, then the
		// distance code and its extra bits, each taken in one step.
		n, eb := e&15, (e>>8)&15
		length := int(e>>16) + int((bitbuf>>n)&(1<<eb-1))
		bitbuf >>= n + eb
		nbits -= uint(n + eb)

		e = dmain[bitbuf&(1<<distBits-1)]
		if e&(flagSub|flagBad) != 0 {
			if e&flagBad != 0 {
				return out, corrupt("invalid distance code", bitbuf, nbits, in)
			}
			bitbuf >>= distBits
			nbits -= distBits
			e = dsub[e>>8+uint32(bitbuf&(1<<(e&15)-1))]
			if e&flagBad != 0 {
				return out, corrupt("invalid distance code", bitbuf, nbits, in)
			}
		}
		n, eb = e&15, (e>>8)&15
		dist := int(e>>16) + int((bitbuf>>n)&(1<<eb-1))
		bitbuf >>= n + eb
		nbits -= uint(n + eb)
		if dist > out {
			return out, corrupt("distance reaches before the start of the output", bitbuf, nbits, in)
		}

		from := out - dist
		if out+length+8 <= len(dst) {
			// A word at a time; the last word may run past the match
			// into bytes that are written later anyway.
			switch {
			case dist >= 8:
				// Each word reads only bytes already written.
				binary.LittleEndian.PutUint64(dst[out:], binary.LittleEndian.Uint64(dst[from:]))
				for i := 8; i < length; i += 8 {
					binary.LittleEndian.PutUint64(dst[out+i:], binary.LittleEndian.Uint64(dst[from+i:]))
				}
			case dist == 1:
				// A run of one byte, the usual way zeros are coded.
				v := uint64(dst[from]) * 0x0101010101010101
				for i := 0; i < length; i += 8 {
					binary.LittleEndian.PutUint64(dst[out+i:], v)
				}
			default:
				// The output repeats with period dist, so also with
				// period step, the first multiple of dist >= 8: write
				// one word a byte at a time, then copy words from
				// step back.
				for i := range 8 {
					dst[out+i] = dst[from+i]
				}
				step := dist * ((8 + dist - 1) / dist)
				for i := 8; i < length; i += 8 {
					binary.LittleEndian.PutUint64(dst[out+i:], binary.LittleEndian.Uint64(dst[out+i-step:]))
				}
			}
			out += length
			continue
		}
		length = min(length, len(dst)-out)
		if dist >= length {
			copy(dst[out:out+length], dst[from:])
		} else {
			for i := range length {
				dst[out+i] = dst[from+i]
			}
		}
		out += length
	}
	r.bitbuf, r.nbits, r.in = bitbuf, nbits, in
	return out, nil
}

// readDynamic reads a dynamic block's code definitions into d's tables.
func (d *Decoder) readDynamic(r *bitReader) error {
	hdr, ok := r.take(14)
	if !ok {
		return ErrTruncated
	}
	nlit := int(hdr&31) + 257
	ndist := int(hdr>>5&31) + 1
	nclen := int(hdr>>10) + 4
	if nlit > maxLitlen || ndist > maxDist {
		return r.corrupt("too many length or distance symbols")
	}
	var clens [19]uint8
	for i := range nclen {
		v, ok := r.take(3)
		if !ok {
			return ErrTruncated
		}
		clens[clenOrder[i]] = uint8(v)
	}
	if _, reason := build(d.clen[:], nil, clens[:], clenBits, true, kindClen); reason != "" {
		return r.corrupt("code-length code: " + reason)
	}
	lens := d.lens[:nlit+ndist]
	for i := 0; i < len(lens); {
		if r.nbits < 14 && !r.refill() {
			return ErrTruncated
		}
		e := d.clen[r.bitbuf&(1<<clenBits-1)]
		if e&flagBad != 0 {
			return r.corrupt("invalid code-length code")
		}
		r.bitbuf >>= e & 15
		r.nbits -= uint(e & 15)
		sym := e >> 8
		if sym < 16 {
			lens[i] = uint8(sym)
			i++
			continue
		}
		var rep int
		var val uint8
		switch sym {
		case 16:
			if i == 0 {
				return r.corrupt("repeat of a code length with none before")
			}
			val = lens[i-1]
			v, _ := r.take(2)
			rep = 3 + int(v)
		case 17:
			v, _ := r.take(3)
			rep = 3 + int(v)
		default:
			v, _ := r.take(7)
			rep = 11 + int(v)
		}
		if i+rep > len(lens) {
			return r.corrupt("code lengths repeat past the end")
		}
		for range rep {
			lens[i] = val
			i++
		}
	}
	if r.exhausted() {
		return ErrTruncated
	}
	if lens[256] == 0 {
		return r.corrupt("no end-of-block code")
	}
	var reason string
	if d.litlen.sub, reason = build(d.litlen.main[:], d.litlen.sub[:0], lens[:nlit], litlenBits, false, kindLitlen); reason != "" {
		return r.corrupt("literal/length code: " + reason)
	}
	pairLiterals(&d.litlen.main)
	if d.dist.sub, reason = build(d.dist.main[:], d.dist.sub[:0], lens[nlit:], distBits, false, kindDist); reason != "" {
		return r.corrupt("distance code: " + reason)
	}
	return nil
}
