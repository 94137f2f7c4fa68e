package manager

import (
	"context"
	"fmt"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/api/defaults"
	"github.com/flotilla/flotilla/api/identity"
	"github.com/flotilla/flotilla/manager/store"
)

// bootstrap makes sure the cluster object exists and that this manager is
// registered as a READY manager node leading the cluster. It runs at the
// start of every term this member leads, so a restart refreshes it.
func (m *Manager) bootstrap(ctx context.Context) error {
	err := m.store.Update(ctx, func(tx store.Tx) error {
		clusters, err := store.Find[*api.Cluster](tx, store.All())
		if err != nil {
			return err
		}
		if len(clusters) == 0 {
			c := &api.Cluster{ID: identity.NewID(), Spec: defaults.ClusterSpec()}
			if err := tx.Create(c); err != nil {
				return err
			}
			m.log.Info("created a new cluster", "cluster.id", c.ID)
		}
		self := store.Get[*api.Node](tx, m.cfg.NodeID)
		create := self == nil
		if create {
			self = &api.Node{ID: m.cfg.NodeID, Role: api.NodeRoleManager,
				Spec: api.NodeSpec{DesiredRole: api.NodeRoleManager}}
		}
		self.Description = m.cfg.Description
		self.Status = api.NodeStatus{State: api.NodeStatusReady, Addr: m.cfg.AdvertiseAddr}
		self.ManagerStatus = &api.ManagerStatus{
			RaftID:       m.cfg.RaftID,
			Addr:         m.cfg.AdvertiseAddr,
			Leader:       true,
			Reachability: api.ReachabilityReachable,
		}
		if create {
			return tx.Create(self)
		}
		return tx.Update(self)
	})
	if err != nil {
		return fmt.Errorf("register this manager in the store: %w", err)
	}
	return nil
}
