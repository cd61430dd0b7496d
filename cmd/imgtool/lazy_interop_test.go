package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/imgtool/imgtool/internal/testutil"
	"github.com/imgtool/imgtool/overlay/vmimage"
	"github.com/imgtool/imgtool/qcow2"
)

// lazyChain makes base <- db <- web in dir with qemu-img and qemu-io
// (1 GiB virtual each, relative backing names, mib MiB of data per level
// in two runs plus a few scattered clusters and a zeroed one) and returns
// the top's path.
func lazyChain(tb testing.TB, dir string, mib int) string {
	tb.Helper()
	testutil.NeedTool(tb, "qemu-img", "qemu-io")
	p := func(n string) string { return filepath.Join(dir, n+".qcow2") }
	testutil.Run(tb, "qemu-img", "create", "-q", "-f", "qcow2", p("base"), "1G")
	testutil.Run(tb, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", p("db"))
	testutil.Run(tb, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "db.qcow2", "-F", "qcow2", p("web"))
	half := strconv.Itoa(mib/2) + "M"
	testutil.Run(tb, "qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 "+half, "-c", "write -P 0x12 600M "+half, "-c", "write -P 0x13 1000M 64k", p("base"))
	testutil.Run(tb, "qemu-io", "-f", "qcow2", "-c", "write -P 0x21 100M "+half, "-c", "write -P 0x22 700M "+half, "-c", "write -P 0x23 5M 64k", p("db"))
	testutil.Run(tb, "qemu-io", "-f", "qcow2", "-c", "write -P 0x31 200M "+half, "-c", "write -P 0x32 800M "+half, "-c", "write -z 0 64k", "-c", "write -P 0x33 601M 4k", p("web"))
	return p("web")
}

// lazyPush pushes top's chain to ref with imgtool push and returns the
// total bytes of its level blobs.
func lazyPush(tb testing.TB, top, ref string) int64 {
	tb.Helper()
	var out, errb bytes.Buffer
	if code := run([]string{"push", "--output", "json", top, ref}, &out, &errb); code != 0 {
		tb.Fatalf("imgtool push: exit %d: %s", code, errb.String())
	}
	var res vmimage.PushResult
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		tb.Fatal(err)
	}
	var n int64
	for _, l := range res.Levels {
		n += l.BlobSize
	}
	if len(res.Levels) != 3 {
		tb.Fatalf("pushed %d levels, want 3", len(res.Levels))
	}
	return n
}

// noRangeProxy forwards to host with the Range header removed, as a
// registry (or a proxy in front of one) without range support answers.
func noRangeProxy(t *testing.T, host string) string {
	u, _ := url.Parse("http://" + host)
	rp := httputil.NewSingleHostReverseProxy(u)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Header.Del("Range")
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// TestLazyInterop: a chain pushed to the real registry is read in place
// through docker://: map --output=json equals the local chain's map and
// fetches at most 2 % of the blob bytes (counted by a proxy), info
// --backing-chain describes the three levels, compare finds it identical
// to the local top, convert -O raw gives the same bytes as a convert of
// the local chain, and a registry without ranges fails saying to pull.
func TestLazyInterop(t *testing.T) {
	reg := testutil.StartRegistry(t, testutil.RegistryOptions{})
	proxy := testutil.StartProxy(t, reg.Host)
	dir := t.TempDir()
	top := lazyChain(t, dir, 16)
	blobBytes := lazyPush(t, top, reg.Host+"/vm:2")
	ref := "docker://" + proxy.Host + "/vm:2"

	mark := proxy.Mark()
	got := registryRun(t, "map", "--output=json", ref)
	var fetched int64
	for _, n := range proxy.BlobBytes(mark) {
		fetched += n
	}
	if want := registryRun(t, "map", "--output=json", top); got != want {
		t.Errorf("map of %s:\n%s\nmap of the local chain:\n%s", ref, got, want)
	}
	t.Logf("lazy map fetched %d of %d blob bytes (%.2f %%) in %d requests", fetched, blobBytes, 100*float64(fetched)/float64(blobBytes), len(proxy.Requests())-mark)
	if fetched == 0 || fetched*50 > blobBytes {
		t.Errorf("lazy map fetched %d blob bytes, want some and at most 2 %% of %d", fetched, blobBytes)
		for _, r := range proxy.Requests()[mark:] {
			t.Logf("%s %s %s: %d bytes", r.Method, r.Path, r.Range, r.Out)
		}
	}
	// The human map names the levels by reference.
	if human := registryRun(t, "map", ref); !strings.Contains(human, ref+"/base.qcow2") || !strings.Contains(human, ref+"/web.qcow2") {
		t.Errorf("human map does not name the levels docker://REF/NAME.qcow2:\n%s", human)
	}

	var infos []qcow2.ImageInfo
	if err := json.Unmarshal([]byte(registryRun(t, "info", "--backing-chain", "--output=json", ref)), &infos); err != nil {
		t.Fatal(err)
	}
	type level struct {
		Filename, Format, BackingFilename string
		VirtualSize                       int64
	}
	var levels []level
	for _, in := range infos {
		levels = append(levels, level{in.Filename, in.Format, in.BackingFilename, in.VirtualSize})
	}
	want := []level{
		{ref + "/web.qcow2", "qcow2", "db.qcow2", 1 << 30},
		{ref + "/db.qcow2", "qcow2", "base.qcow2", 1 << 30},
		{ref + "/base.qcow2", "qcow2", "", 1 << 30},
	}
	if d := cmp.Diff(want, levels); d != "" {
		t.Errorf("info --backing-chain (-want +got):\n%s", d)
	}
	var one qcow2.ImageInfo
	if err := json.Unmarshal([]byte(registryRun(t, "info", "--output=json", ref)), &one); err != nil || one.Filename != ref+"/web.qcow2" {
		t.Errorf("info: %+v %v", one, err)
	}

	if out := registryRun(t, "compare", ref, top); !strings.Contains(out, "Images are identical") {
		t.Errorf("compare docker:// local: %s", out)
	}
	if out := registryRun(t, "compare", top, ref); !strings.Contains(out, "Images are identical") {
		t.Errorf("compare local docker://: %s", out)
	}
	// A changed local copy differs (exit 1).
	changed := filepath.Join(dir, "changed.qcow2")
	testutil.Run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "web.qcow2", "-F", "qcow2", changed)
	testutil.Run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x77 900M 4k", changed)
	if code, out, _ := imageTestRun(t, "compare", ref, changed); code != 1 || !strings.Contains(out, "mismatch") {
		t.Errorf("compare with a changed copy: exit %d: %s", code, out)
	}

	lazyRaw, localRaw := filepath.Join(dir, "lazy.raw"), filepath.Join(dir, "local.raw")
	registryRun(t, "convert", "-O", "raw", ref, lazyRaw)
	registryRun(t, "convert", "-O", "raw", top, localRaw)
	sameFiles(t, lazyRaw, localRaw)

	// A registry that ignores Range: every lazy command says to pull.
	nr := "docker://" + noRangeProxy(t, reg.Host) + "/vm:2"
	for _, args := range [][]string{{"map", nr}, {"info", nr}, {"convert", "-O", "raw", nr, filepath.Join(dir, "no.raw")}} {
		if errb := registryFail(t, args...); !strings.Contains(errb, "imgtool pull") || !strings.Contains(errb, "range") {
			t.Errorf("imgtool %s without ranges: %s, want an error saying to pull instead", args[0], errb)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "no.raw")); err == nil {
		t.Error("a failed lazy convert left its output")
	}
	if code, _, errb := imageTestRun(t, "compare", nr, top); code != 2 || !strings.Contains(errb, "imgtool pull") {
		t.Errorf("compare without ranges: exit %d: %s", code, errb)
	}
}

// sameFiles fails unless the files at a and b hold the same bytes.
func sameFiles(t *testing.T, a, b string) {
	t.Helper()
	fa, err := os.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	ba, bb := make([]byte, 4<<20), make([]byte, 4<<20)
	for off := int64(0); ; off += int64(len(ba)) {
		na, ea := io.ReadFull(fa, ba)
		nb, eb := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			t.Fatalf("%s and %s differ in the 4 MiB at %d", a, b, off)
		}
		if ea != nil || eb != nil {
			return
		}
	}
}
