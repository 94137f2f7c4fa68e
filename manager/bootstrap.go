package manager

import (
	"context"
	"fmt"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/api/defaults"
	"github.com/flotilla/flotilla/ca"
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
			c, err := m.newCluster()
			if err != nil {
				return err
			}
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
	// The root key is in the replicated store now; the node may drop its copy.
	if m.cfg.RootKeyStored != nil {
		m.cfg.RootKeyStored()
	}
	return nil
}

// newCluster is the cluster object of a new cluster, with the root CA this
// first manager made and fresh join tokens.
func (m *Manager) newCluster() (*api.Cluster, error) {
	if len(m.cfg.RootCA.Key) == 0 {
		return nil, fmt.Errorf("no root CA key to create the cluster with: the state dir lost it before the cluster was created; start over with an empty state dir")
	}
	c := &api.Cluster{ID: m.cfg.ClusterID, Spec: defaults.ClusterSpec()}
	c.RootCA = api.RootCA{CACert: m.cfg.RootCA.Cert, CAKey: m.cfg.RootCA.Key, CACertHash: m.cfg.RootCA.Digest()}
	var err error
	if c.RootCA.JoinTokens.Worker, err = ca.GenerateJoinToken(m.cfg.RootCA); err != nil {
		return nil, err
	}
	if c.RootCA.JoinTokens.Manager, err = ca.GenerateJoinToken(m.cfg.RootCA); err != nil {
		return nil, err
	}
	return c, nil
}
