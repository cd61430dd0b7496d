package qcow2

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestConfineTo: backing references inside the root open; escapes by
// "..", by an absolute name and by a symlink are refused.
func TestConfineTo(t *testing.T) {
	outside := t.TempDir()
	root := t.TempDir()
	secret := filepath.Join(outside, "secret.raw")
	if err := Create(secret, CreateOptions{Format: FormatRaw, Size: 1 << 16}); err != nil {
		t.Fatal(err)
	}
	inBase := filepath.Join(root, "base.qcow2")
	if err := Create(inBase, CreateOptions{Size: 1 << 16}); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(secret, filepath.Join(root, "link.raw")); err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(root, secret)
	if err != nil {
		t.Fatal(err)
	}
	check, err := ConfineTo(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		backing string
		format  Format
		ok      bool
	}{
		{"base.qcow2", FormatQcow2, true},
		{rel, FormatRaw, false},    // ../../.../secret.raw
		{secret, FormatRaw, false}, // absolute
		{"link.raw", FormatRaw, false},
	} {
		top := filepath.Join(root, "top.qcow2")
		if err := Create(top, CreateOptions{Size: 1 << 16, BackingFile: c.backing, BackingFormat: c.format, Overwrite: true}); err != nil {
			t.Fatal(err)
		}
		img, err := Open(top, Options{CheckReference: check})
		if c.ok {
			if err != nil {
				t.Errorf("%s: %v", c.backing, err)
			} else {
				img.Close()
			}
			continue
		}
		if !errors.Is(err, ErrRefused) {
			t.Errorf("%s: opened (err %v), want ErrRefused", c.backing, err)
			if img != nil {
				img.Close()
			}
		}
		// Without the policy the escape opens: the test image is real.
		img, err = Open(top, Options{})
		if err != nil {
			t.Fatalf("%s without a root: %v", c.backing, err)
		}
		img.Close()
	}
	if _, err := ConfineTo(filepath.Join(root, "missing")); err == nil {
		t.Error("ConfineTo of a missing directory succeeded")
	}
}
