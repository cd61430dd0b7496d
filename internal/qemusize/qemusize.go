// Package qemusize parses and prints byte counts exactly as qemu-img does
// (QEMU's qemu_strtosz and size_to_str), so that every size a qemu-img
// user types means the same here, and the same sizes are refused.
//
// The grammar, as QEMU 7.2 accepts it:
//
//   - optional leading white space and a '+' sign (a '-' anywhere in the
//     number is refused);
//   - a decimal integer, or a hexadecimal one written 0xN (no fraction);
//   - an optional fraction ".DIGITS" after a decimal integer, with no
//     exponent ("1e3" is refused, "1.5e" is 1.5 EiB);
//   - an optional suffix b/B (bytes), k/K, m/M, g/G, t/T, p/P or e/E
//     (powers of 1024); a fraction needs a suffix other than b/B;
//   - nothing after the suffix ("10GB" is refused).
//
// The fraction is kept with 64 bits of precision and the result is
// rounded to the nearest byte, halves upwards, as QEMU does.
package qemusize

import (
	"errors"
	"math"
	"math/bits"
	"strconv"
)

// Suffixes is the help text QEMU gives with a size it can't parse.
const Suffixes = "You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes."

// ErrSyntax and ErrRange classify a refused size; a *Error wraps one.
var (
	ErrSyntax = errors.New("qemusize: invalid size")
	ErrRange  = errors.New("qemusize: size out of range")
)

// Error reports a size that Parse refused.
type Error struct {
	Input string
	Err   error // ErrSyntax or ErrRange
}

func (e *Error) Error() string {
	if e.Err == ErrRange {
		return "invalid size " + strconv.Quote(e.Input) + ": must be between 0 and " + strconv.FormatInt(math.MaxInt64, 10)
	}
	return "invalid size " + strconv.Quote(e.Input) + ". " + Suffixes
}

func (e *Error) Unwrap() error { return e.Err }

// Parse returns the number of bytes s stands for, or an *Error. Sizes
// above math.MaxInt64 are out of range, as qemu-img's cvtnum has them.
func Parse(s string) (int64, error) {
	v, err := parse(s)
	if err != nil {
		return 0, &Error{Input: s, Err: err}
	}
	if v > math.MaxInt64 {
		return 0, &Error{Input: s, Err: ErrRange}
	}
	return int64(v), nil
}

// parse is QEMU's do_strtosz with the end pointer required at the end of
// the string.
func parse(s string) (uint64, error) {
	val, end, err := parseUint(s, 10)
	if err != nil {
		return 0, finish(s, end, err)
	}
	var valf uint64
	hex := false
	switch {
	case val == 0 && end < len(s) && (s[end] == 'x' || s[end] == 'X'):
		// Looks like hex: parse again in base 16, without a fraction.
		hex = true
		if val, end, err = parseUint(s, 16); err != nil {
			return 0, finish(s, end, err)
		}
		if end < len(s) && s[end] == '.' {
			return 0, ErrSyntax
		}
	case end < len(s) && s[end] == '.':
		f, n := parseFraction(s[end:])
		if n == 0 {
			end++ // a lone '.': "1.k" works without fractional digits
		} else {
			end += n
			if f < 0 {
				return 0, ErrSyntax // an exponent
			}
			if f*0x1p64 >= 0x1p64 {
				valf = math.MaxUint64
			} else {
				valf = uint64(f * 0x1p64)
			}
		}
	}
	_ = hex // QEMU warns about a suffix on hex numbers but accepts it
	mul := uint64(1)
	if end < len(s) {
		if m := suffixMul(s[end]); m > 0 {
			mul = m
			end++
		}
	}
	if end != len(s) {
		return 0, ErrSyntax
	}
	if mul == 1 {
		if valf != 0 {
			return 0, ErrSyntax // a fraction needs a scale
		}
		return val, nil
	}
	hi, lo := bits.Mul64(val, mul)
	fhi, flo := bits.Mul64(valf, mul)
	var c uint64
	lo, c = bits.Add64(lo, fhi, 0)
	hi += c
	lo, c = bits.Add64(lo, flo>>63, 0) // round halves upwards
	hi += c
	if hi != 0 {
		return 0, ErrRange
	}
	return lo, nil
}

// finish applies do_strtosz's last rule: with characters left over, any
// error is a syntax error.
func finish(s string, end int, err error) error {
	if end < len(s) {
		return ErrSyntax
	}
	return err
}

func suffixMul(c byte) uint64 {
	switch c {
	case 'b', 'B':
		return 1
	case 'k', 'K':
		return 1 << 10
	case 'm', 'M':
		return 1 << 20
	case 'g', 'G':
		return 1 << 30
	case 't', 'T':
		return 1 << 40
	case 'p', 'P':
		return 1 << 50
	case 'e', 'E':
		return 1 << 60
	}
	return 0
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'
}

func digit(c byte, base uint64) (uint64, bool) {
	var d uint64
	switch {
	case c >= '0' && c <= '9':
		d = uint64(c - '0')
	case c >= 'a' && c <= 'f':
		d = uint64(c-'a') + 10
	case c >= 'A' && c <= 'F':
		d = uint64(c-'A') + 10
	default:
		return 0, false
	}
	return d, d < base
}

// parseUint is qemu_strtou64 as do_strtosz uses it: C's strtoull (leading
// white space, an optional sign, "0x" in base 16) returning the index just
// past the digits. A '-' is refused outright; overflow is ErrRange with
// the index past all digits.
func parseUint(s string, base uint64) (uint64, int, error) {
	i := 0
	for i < len(s) && isSpace(s[i]) {
		i++
	}
	neg := false
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		neg = s[i] == '-'
		i++
	}
	if base == 16 && i+1 < len(s) && s[i] == '0' && (s[i+1] == 'x' || s[i+1] == 'X') {
		if _, ok := digit(safeAt(s, i+2), 16); ok {
			i += 2
		}
	}
	start := i
	var v uint64
	overflow := false
	for i < len(s) {
		d, ok := digit(s[i], base)
		if !ok {
			break
		}
		hi, lo := bits.Mul64(v, base)
		lo, c := bits.Add64(lo, d, 0)
		if hi != 0 || c != 0 {
			overflow = true
		}
		v = lo
		i++
	}
	if i == start {
		return 0, 0, ErrSyntax // no conversion: the end is the start
	}
	if neg {
		return 0, 0, ErrSyntax
	}
	if overflow {
		return 0, i, ErrRange
	}
	return v, i, nil
}

func safeAt(s string, i int) byte {
	if i < len(s) {
		return s[i]
	}
	return 0
}

// parseFraction reads what C's strtod would read from s, which starts
// with '.': digits, then an optional exponent. It returns the value and
// the bytes read (0 when strtod would read nothing), or -1 as the value
// when an exponent was read, which QEMU refuses.
func parseFraction(s string) (float64, int) {
	i := 1
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i == 1 {
		return 0, 0
	}
	n := i
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		j := i + 1
		if j < len(s) && (s[j] == '+' || s[j] == '-') {
			j++
		}
		if j < len(s) && s[j] >= '0' && s[j] <= '9' {
			return -1, j
		}
	}
	f, err := strconv.ParseFloat("0"+s[:n], 64)
	if err != nil {
		return 0, 0
	}
	return f, n
}

// String formats a byte count as qemu-img does: three significant digits
// and a binary unit ("336 KiB", "1.5 GiB").
func String(v int64) string {
	suffixes := []string{"", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"}
	_, e := math.Frexp(float64(v) / (1000.0 / 1024.0))
	i := (e - 1) / 10
	i = max(0, min(i, len(suffixes)-1))
	div := float64(uint64(1) << (10 * i))
	return strconv.FormatFloat(float64(v)/div, 'g', 3, 64) + " " + suffixes[i] + "B"
}
