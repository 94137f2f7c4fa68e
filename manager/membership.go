package manager

import (
	"context"
	"time"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/manager/store"
	"github.com/flotilla/flotilla/raft"
)

// membershipSyncInterval is how often the leader copies the raft
// membership into the manager nodes' ManagerStatus.
const membershipSyncInterval = time.Second

// syncMembership is a leader loop: it keeps every manager node's
// ManagerStatus (address, leader, reachability) in step with the raft
// membership as this leader sees it, which `node ls` shows as MANAGER
// STATUS and agents use (managerPeers) to find the managers, leader first.
func (m *Manager) syncMembership(ctx context.Context) error {
	t := time.NewTicker(membershipSyncInterval)
	defer t.Stop()
	for {
		if err := m.syncManagerStatus(ctx); err != nil && ctx.Err() == nil {
			m.log.Warn("cannot record the managers' status", "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// syncManagerStatus writes the manager nodes whose status differs from the
// raft membership, in one transaction.
func (m *Manager) syncManagerStatus(ctx context.Context) error {
	if err := m.recordNewManagers(ctx); err != nil {
		return err
	}
	members := map[uint64]raft.Member{}
	for _, mem := range m.raft.Members() {
		members[mem.ID] = mem
	}
	var stale []*api.Node
	m.store.View(func(tx store.ReadTx) {
		_ = store.Each(tx, store.ByRole(api.NodeRoleManager), func(n *api.Node) bool {
			if n.ManagerStatus == nil || n.ManagerStatus.RaftID == 0 {
				return true
			}
			if want := managerStatus(n.ManagerStatus, members); *want != *n.ManagerStatus {
				c := n.Copy()
				c.ManagerStatus = want
				stale = append(stale, c)
			}
			return true
		})
	})
	if len(stale) == 0 {
		return nil
	}
	return m.store.Update(ctx, func(tx store.Tx) error {
		for _, n := range stale {
			cur := store.Get[*api.Node](tx, n.ID)
			if cur == nil || cur.ManagerStatus == nil || cur.ManagerStatus.RaftID != n.ManagerStatus.RaftID {
				continue // changed meanwhile: the next round sees it
			}
			cur.ManagerStatus = n.ManagerStatus
			if err := tx.Update(cur); err != nil {
				return err
			}
		}
		return nil
	})
}

// recordNewManagers writes the raft ID and address of the managers raft
// added since the last round into their nodes.
func (m *Manager) recordNewManagers(ctx context.Context) error {
	added := map[string]*api.ManagerStatus{}
	m.newManagers.Range(func(k, v any) bool {
		added[k.(string)] = v.(*api.ManagerStatus)
		return true
	})
	if len(added) == 0 {
		return nil
	}
	err := m.store.Update(ctx, func(tx store.Tx) error {
		for id, st := range added {
			n := store.Get[*api.Node](tx, id)
			if n == nil {
				continue // removed meanwhile
			}
			n.ManagerStatus = st
			if err := tx.Update(n); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for id, st := range added {
		m.newManagers.CompareAndDelete(id, st)
	}
	return nil
}

// managerStatus is what a manager's status should say given the raft
// members: a member is Reachable or Unreachable as the leader sees it; a
// node whose raft ID is not a member (removed, or not added yet) is
// Unreachable and not the leader.
func managerStatus(cur *api.ManagerStatus, members map[uint64]raft.Member) *api.ManagerStatus {
	want := cur.Copy()
	mem, ok := members[cur.RaftID]
	if !ok {
		want.Leader = false
		want.Reachability = api.ReachabilityUnreachable
		return want
	}
	if mem.Addr != "" {
		want.Addr = mem.Addr
	}
	want.Leader = mem.Leader
	want.Reachability = api.ReachabilityUnreachable
	if mem.Reachable {
		want.Reachability = api.ReachabilityReachable
	}
	return want
}
