package manager

import (
	"context"
	"errors"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/manager/controlapi"
	"github.com/flotilla/flotilla/manager/store"
)

// applyClusterSettings keeps the settings of this manager's own components
// in line with the cluster object (the raft snapshot interval, the unlock key
// its keys are sealed with). Every manager runs it, leader or not, since each
// manages its own log and keys.
func (m *Manager) applyClusterSettings(ctx context.Context) error {
	// Start from a store that has applied this member's own committed log:
	// the snapshot restored at start may predate autolock, and acting on it
	// would write the keys in the clear until the log caught up.
	if err := m.raft.WaitApplied(ctx, m.raft.CommittedIndex()); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	for {
		var cluster *api.Cluster
		w, _, err := m.store.ViewAndWatch(func(tx store.ReadTx) {
			if cs, _ := store.Find[*api.Cluster](tx, store.All()); len(cs) > 0 {
				cluster = cs[0]
			}
		})
		if err != nil {
			return err
		}
		m.applySettings(cluster)
		for done := false; !done; {
			select {
			case <-ctx.Done():
				w.Close()
				return nil
			case c, ok := <-w.C:
				if !ok {
					if err := w.Err(); err != nil && !errors.Is(err, store.ErrWatchOverflow) && !errors.Is(err, store.ErrWatchReset) {
						return err
					}
					done = true // resubscribe from a fresh view
					continue
				}
				for _, ev := range c.Events {
					if cl, ok := ev.Object.(*api.Cluster); ok && ev.Action != api.WatchActionKindRemove {
						m.applySettings(cl)
					}
				}
			}
		}
	}
}

func (m *Manager) applySettings(c *api.Cluster) {
	if c == nil {
		return
	}
	m.raft.SetSnapshotInterval(c.Spec.Raft.SnapshotInterval)
	if m.cfg.OnUnlockKey != nil {
		m.cfg.OnUnlockKey(controlapi.ManagerUnlockKey(c))
	}
}
