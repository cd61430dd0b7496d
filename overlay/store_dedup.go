package overlay

import "context"

// WithLayers calls fn with the store's complete layers while holding the
// store lock shared, so that GC (which takes it exclusively) cannot remove
// a layer fn is working on; mounts, unpacks and commits go on meanwhile.
// Store-wide maintenance that rewrites files inside layer directories
// without changing what they show (dedup's StoreDedup) runs under it.
func (s *Store) WithLayers(ctx context.Context, fn func(layers []*Layer) error) error {
	lk, err := acquireLock(ctx, s.path("store.lock"), false)
	if err != nil {
		return err
	}
	defer lk.Unlock()
	ls, err := s.Layers()
	if err != nil {
		return err
	}
	return fn(ls)
}
