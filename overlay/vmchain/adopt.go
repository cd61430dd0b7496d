package vmchain

import (
	"context"
	"fmt"
)

// Adopt makes images that something other than the chain API puts into
// the directory (vmimage.Pull writes levels fetched from a registry)
// levels of the chain, so Images and `chain tree` show them as levels
// rather than unmanaged files. Under the chain's exclusive lock, it
// checks the directory scans cleanly, calls place (if not nil), which
// puts the files DIR/NAME.qcow2 of names in place, records each name the
// manifest does not list yet as a ChainLevel (names already listed keep
// their kind), and makes levels with dependents read-only. A place error
// is returned as it is, with the manifest untouched.
func (c *ChainDir) Adopt(ctx context.Context, names []string, place func() error) error {
	for _, n := range names {
		if err := validChainName(n); err != nil {
			return err
		}
	}
	l, err := c.lock(ctx, true)
	if err != nil {
		return err
	}
	defer l.Unlock()
	if _, err := c.scan(); err != nil {
		return err
	}
	if place != nil {
		if err := place(); err != nil {
			return err
		}
	}
	m, err := c.readManifest()
	if err != nil {
		return err
	}
	changed := false
	for _, n := range names {
		if _, ok := m.Images[n]; !ok {
			m.Images[n] = ChainLevel
			changed = true
		}
	}
	if changed {
		if err := c.writeManifest(m); err != nil {
			return err
		}
	}
	g, err := c.scan()
	if err != nil {
		return fmt.Errorf("vmchain: adopting %v: %w", names, err)
	}
	return c.fixModes(g)
}
