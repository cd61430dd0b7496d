package zero

import "testing"

func TestIs(t *testing.T) {
	for _, n := range []int{0, 1, 511, 4096, len(page), len(page) + 1, 3*len(page) + 17} {
		b := make([]byte, n)
		if !Is(b) {
			t.Errorf("%d zero bytes: Is = false", n)
		}
		for _, at := range []int{0, n / 2, n - 1} {
			if n == 0 {
				continue
			}
			b[at] = 1
			if Is(b) {
				t.Errorf("%d bytes with byte %d set: Is = true", n, at)
			}
			b[at] = 0
		}
	}
}

func BenchmarkIs(b *testing.B) {
	buf := make([]byte, 1<<20)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		if !Is(buf) {
			b.Fatal("not zero")
		}
	}
}
