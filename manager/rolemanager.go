package manager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/manager/controlapi"
	"github.com/flotilla/flotilla/manager/store"
	"github.com/flotilla/flotilla/raft"
)

// Promotion and demotion. A node's Spec.DesiredRole is what the operator
// asked (swarmctl node promote/demote); its Role is what the cluster made of
// it, and the CA signs the node's certificate with Role when the node renews
// it. The role manager, a leader loop, moves Role towards DesiredRole:
//
//   - promotion: Role becomes manager at once. The node renews its
//     certificate when its session shows the new role, starts a manager
//     component, and joins raft (Raft.Join checks Role).
//   - demotion: the node's raft member is removed first, so the managers
//     never count a voter that has stopped voting, and Role becomes worker
//     (and ManagerStatus goes) only then; the node then renews as a worker
//     and stops its manager component. A removal that would leave the
//     reachable managers without a quorum waits (the Control API refuses such
//     a demotion in the first place; this covers managers lost since). When
//     the node to demote is this leader, it hands leadership over and stops
//     there: the next leader's role manager removes it.
//
// A worker that still has a ManagerStatus (it was added to raft while being
// demoted) is taken out of raft the same way.

// roleRetryInterval is how often the role manager looks again at changes it
// could not make (a removal waiting for a quorum, a failed write).
const roleRetryInterval = time.Second

// roleRaft is what the role manager needs of the raft node.
type roleRaft interface {
	Members() []raft.Member
	RemoveMember(ctx context.Context, id uint64) error
	TransferLeadership(ctx context.Context, to uint64) error
}

// roleManager is the leader loop that carries out role changes.
type roleManager struct {
	store  *store.MemoryStore
	raft   roleRaft
	raftID uint64 // this leader's raft ID
	log    *slog.Logger
	// waiting names the nodes whose demotion waits for a quorum, so that it
	// is logged once at warn.
	waiting map[string]bool
}

func newRoleManager(s *store.MemoryStore, r roleRaft, raftID uint64, log *slog.Logger) *roleManager {
	return &roleManager{store: s, raft: r, raftID: raftID, log: log.With("module", "rolemanager"), waiting: map[string]bool{}}
}

// manageRoles is the leader loop (see leaderLoops).
func (m *Manager) manageRoles(ctx context.Context) error {
	return newRoleManager(m.store, m.raft, m.cfg.RaftID, m.log).Run(ctx)
}

// Removed is closed once this manager knows it was removed from raft (its
// node was demoted, or removed with node rm --force): the node should stop
// it.
func (m *Manager) Removed() <-chan struct{} { return m.raft.Removed() }

// Run carries out role changes until ctx ends (leadership lost). It returns
// nil then; it never fails the leadership for a change it cannot make yet.
func (r *roleManager) Run(ctx context.Context) error {
	w, _, err := r.store.ViewAndWatch(func(store.ReadTx) {})
	if err != nil {
		return fmt.Errorf("role manager: watch the store: %w", err)
	}
	defer func() { w.Close() }()
	retry := time.NewTicker(roleRetryInterval)
	defer retry.Stop()
	for {
		handedOver, err := r.reconcile(ctx)
		if handedOver {
			// Leadership went to another manager, whose role manager
			// finishes the demotion; this term's loops stop shortly.
			<-ctx.Done()
			return nil
		}
		if err != nil && ctx.Err() == nil {
			r.log.Warn("cannot carry out a role change yet; will retry", "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-retry.C:
		case _, ok := <-w.C:
			if !ok {
				// Overflow or a restored snapshot: watch again; the next
				// reconcile reads everything anyway.
				if w, _, err = r.store.ViewAndWatch(func(store.ReadTx) {}); err != nil {
					return fmt.Errorf("role manager: watch the store: %w", err)
				}
			}
			// Coalesce what else is queued: reconcile reads the whole state.
			for drained := false; !drained; {
				select {
				case _, ok := <-w.C:
					drained = !ok
				default:
					drained = true
				}
			}
		}
	}
}

// reconcile makes every role change it can. handedOver: this leader gave up
// leadership to be demoted.
func (r *roleManager) reconcile(ctx context.Context) (handedOver bool, err error) {
	var pending []*api.Node
	r.store.View(func(tx store.ReadTx) {
		_ = store.Each(tx, store.All(), func(n *api.Node) bool {
			if n.Role != n.Spec.DesiredRole || (n.Role == api.NodeRoleWorker && n.ManagerStatus != nil) {
				pending = append(pending, n)
			}
			return true
		})
	})
	var errs []error
	for _, n := range pending {
		var err error
		switch {
		case n.Role == api.NodeRoleWorker && n.ManagerStatus == nil: // DesiredRole manager
			err = r.promote(ctx, n)
		default: // a manager to demote, or a worker still in raft
			handedOver, err = r.demote(ctx, n)
		}
		if handedOver {
			return true, nil
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return false, errors.Join(errs...)
}

func (r *roleManager) promote(ctx context.Context, n *api.Node) error {
	err := r.store.Update(ctx, func(tx store.Tx) error {
		cur := store.Get[*api.Node](tx, n.ID)
		if cur == nil || cur.Spec.DesiredRole != api.NodeRoleManager || cur.Role != api.NodeRoleWorker {
			return nil // changed meanwhile: the next round sees it
		}
		cur.Role = api.NodeRoleManager
		return tx.Update(cur)
	})
	if err != nil {
		return fmt.Errorf("promote node %s: %w", n.ID, err)
	}
	r.log.Info("node promoted to manager; it renews its certificate and joins raft", "node.id", n.ID)
	return nil
}

// demote takes n out of raft, then makes it a worker.
func (r *roleManager) demote(ctx context.Context, n *api.Node) (handedOver bool, err error) {
	if id := raftIDOf(n); id != 0 && r.isMember(id) {
		if id == r.raftID {
			if !r.quorumWithout(n, id) {
				return false, nil // waits
			}
			r.log.Info("this leader is being demoted: handing leadership over first", "node.id", n.ID, "raft.id", fmt.Sprintf("%x", id))
			if err := r.raft.TransferLeadership(ctx, 0); err != nil {
				return false, fmt.Errorf("demote node %s (this leader): hand leadership over: %w", n.ID, err)
			}
			return true, nil
		}
		if err := r.raft.RemoveMember(ctx, id); err != nil && !errors.Is(err, raft.ErrUnknownMember) {
			if errors.Is(err, raft.ErrWouldLoseQuorum) {
				if !r.waiting[n.ID] {
					r.waiting[n.ID] = true
					r.log.Warn("demotion waits: removing the manager from raft would lose the quorum", "node.id", n.ID, "error", err)
				}
				return false, nil
			}
			return false, fmt.Errorf("demote node %s: remove raft member %x: %w", n.ID, id, err)
		}
		r.log.Info("demoted manager removed from raft", "node.id", n.ID, "raft.id", fmt.Sprintf("%x", id))
	}
	delete(r.waiting, n.ID)
	err = r.store.Update(ctx, func(tx store.Tx) error {
		cur := store.Get[*api.Node](tx, n.ID)
		if cur == nil {
			return nil
		}
		if raftIDOf(cur) != raftIDOf(n) {
			return nil // joined or changed meanwhile: the next round sees it
		}
		// Out of raft now, whatever DesiredRole says meanwhile: a node
		// promoted again becomes a manager in the next round, with a new
		// raft ID.
		if cur.Role == api.NodeRoleWorker && cur.ManagerStatus == nil {
			return nil
		}
		cur.Role = api.NodeRoleWorker
		cur.ManagerStatus = nil
		return tx.Update(cur)
	})
	if err != nil {
		return false, fmt.Errorf("demote node %s: %w", n.ID, err)
	}
	r.log.Info("node demoted to worker; it renews its certificate and stops its manager", "node.id", n.ID)
	return false, nil
}

// quorumWithout reports whether the managers left without raft member id
// keep a quorum: leadership is not handed over for a demotion the next
// leader could not carry out.
func (r *roleManager) quorumWithout(n *api.Node, id uint64) bool {
	if left, reachable, need, ok := controlapi.QuorumAfterRemoval(r.raft.Members(), map[uint64]bool{id: true}); !ok {
		if !r.waiting[n.ID] {
			r.waiting[n.ID] = true
			r.log.Warn("demotion of this leader waits: the managers left would lose the quorum",
				"node.id", n.ID, "left", left, "reachable", reachable, "quorum", need)
		}
		return false
	}
	return true
}

func (r *roleManager) isMember(id uint64) bool {
	for _, m := range r.raft.Members() {
		if m.ID == id {
			return true
		}
	}
	return false
}

func raftIDOf(n *api.Node) uint64 {
	if n.ManagerStatus == nil {
		return 0
	}
	return n.ManagerStatus.RaftID
}
