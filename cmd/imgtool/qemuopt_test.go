package main

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/imgtool/imgtool/qcow2"
)

func TestParseCreateOptions(t *testing.T) {
	var o qcow2.CreateOptions
	if err := parseCreateOptions(&o, "cluster_size=16k,compat=0.10,lazy_refcounts=on,refcount_bits=64,size=1.5G,backing_file=b.qcow2,backing_fmt=qcow2"); err != nil {
		t.Fatal(err)
	}
	want := qcow2.CreateOptions{ClusterSize: 16 << 10, Compat: "0.10", LazyRefcounts: true, RefcountBits: 64, Size: 3 << 29, BackingFile: "b.qcow2", BackingFormat: qcow2.FormatQcow2}
	if diff := cmp.Diff(want, o, cmpopts.IgnoreFields(qcow2.CreateOptions{}, "Progress")); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	for _, bad := range []string{"size=10GB", "cluster_size=1.5", "lazy_refcounts=maybe", "frobnicate=1"} {
		var o qcow2.CreateOptions
		if err := parseCreateOptions(&o, bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestResizeTarget(t *testing.T) {
	for _, c := range []struct {
		cur  int64
		spec string
		want int64
		ok   bool
	}{{1 << 30, "+1G", 2 << 30, true}, {1 << 30, "-512M", 512 << 20, true}, {1 << 30, "2G", 2 << 30, true}, {1 << 20, "-2M", 0, false}, {1 << 30, "+10GB", 0, false}} {
		got, err := resizeTarget(c.cur, c.spec)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("resizeTarget(%d, %q) = %d, %v", c.cur, c.spec, got, err)
		}
	}
}

// FuzzParseCreateOptions: no -o list, however odd, panics the parser.
func FuzzParseCreateOptions(f *testing.F) {
	for _, s := range []string{"size=64K", "cluster_size=1.5G", "size=8E", "compat=0.10,size=2T", "refcount_bits=7b", "size=-1", "", "size=9999999999999999999", "size=0x10", "lazy_refcounts=on,preallocation=full"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var o qcow2.CreateOptions
		if err := parseCreateOptions(&o, s); err == nil && (o.Size < 0 || o.ClusterSize < 0) {
			t.Fatalf("parseCreateOptions(%q) gave size %d, cluster size %d", s, o.Size, o.ClusterSize)
		}
	})
}
