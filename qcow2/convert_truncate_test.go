package qcow2

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/imgtool/imgtool/internal/testutil"
)

// TestConvertSourceTruncated: a source file truncated while convert reads
// it gives an error naming the file, and no output is left behind, for a
// raw and a qcow2 source, to raw and to qcow2.
func TestConvertSourceTruncated(t *testing.T) {
	testutil.NeedTool(t, "qemu-img")
	for _, srcFmt := range []Format{FormatRaw, FormatQcow2} {
		for _, f := range []Format{FormatRaw, FormatQcow2} {
			dir := t.TempDir()
			raw := writeRawFile(t, dir, "src.raw", mixedData(21, 16<<20))
			srcPath := raw
			if srcFmt == FormatQcow2 {
				srcPath = filepath.Join(dir, "src.qcow2")
				testutil.Run(t, "qemu-img", "convert", "-O", "qcow2", raw, srcPath)
				os.Remove(raw)
			}
			src, err := Open(srcPath, Options{})
			if err != nil {
				t.Fatal(err)
			}
			var once sync.Once
			err = Convert(context.Background(), src, filepath.Join(dir, "out"), ConvertOptions{
				Create:  CreateOptions{Format: f},
				Workers: 1,
				Progress: func(done, total int64) {
					if done > 0 {
						once.Do(func() { os.Truncate(srcPath, 64<<10) })
					}
				},
			})
			src.Close()
			if err == nil || !strings.Contains(err.Error(), "changed while it was read") || !strings.Contains(err.Error(), srcPath) {
				t.Errorf("%s to %s, source truncated: err = %v", srcFmt, f, err)
			}
			ents, _ := os.ReadDir(dir)
			for _, e := range ents {
				if e.Name() != filepath.Base(srcPath) {
					t.Errorf("%s to %s: left behind %s", srcFmt, f, e.Name())
				}
			}
		}
	}
}
