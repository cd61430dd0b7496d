package main

import (
	"io"
	"sync"

	"github.com/schollz/progressbar/v3"
)

// newProgress returns a progress callback for the library operations
// (func(done, total int64), called from any goroutine) and a finish
// function to call when the operation ends. With enabled false both do
// nothing. The bar is drawn on w (stderr), in bytes.
func newProgress(enabled bool, w io.Writer, description string) (update func(done, total int64), finish func()) {
	if !enabled {
		return func(int64, int64) {}, func() {}
	}
	var (
		mu  sync.Mutex
		bar *progressbar.ProgressBar
	)
	update = func(done, total int64) {
		mu.Lock()
		defer mu.Unlock()
		if bar == nil {
			bar = progressbar.NewOptions64(total,
				progressbar.OptionSetWriter(w),
				progressbar.OptionSetDescription(description),
				progressbar.OptionShowBytes(true),
				progressbar.OptionSetWidth(30),
				progressbar.OptionThrottle(100_000_000), // 100 ms
				progressbar.OptionShowCount(),
				progressbar.OptionClearOnFinish(),
			)
		}
		if total != bar.GetMax64() {
			bar.ChangeMax64(total)
		}
		bar.Set64(done) //nolint:errcheck // drawing errors are not worth failing an operation
	}
	finish = func() {
		mu.Lock()
		defer mu.Unlock()
		if bar != nil {
			bar.Finish() //nolint:errcheck // clears the bar's line (OptionClearOnFinish)
		}
	}
	return update, finish
}
