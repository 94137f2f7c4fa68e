package manager

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/manager/store"
	"github.com/flotilla/flotilla/manager/store/storetest"
	"github.com/flotilla/flotilla/raft"
)

// fakeRoleRaft is a raft membership the test controls.
type fakeRoleRaft struct {
	mu          sync.Mutex
	members     []raft.Member
	removed     []uint64
	transferred int
}

func (f *fakeRoleRaft) Members() []raft.Member {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.members)
}

func (f *fakeRoleRaft) RemoveMember(_ context.Context, id uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := slices.IndexFunc(f.members, func(m raft.Member) bool { return m.ID == id })
	if i < 0 {
		return raft.ErrUnknownMember
	}
	after := slices.Delete(slices.Clone(f.members), i, i+1)
	reachable := 0
	for _, m := range after {
		if m.Reachable {
			reachable++
		}
	}
	if reachable < len(after)/2+1 {
		return fmt.Errorf("%w: test", raft.ErrWouldLoseQuorum)
	}
	f.members = after
	f.removed = append(f.removed, id)
	return nil
}

func (f *fakeRoleRaft) TransferLeadership(context.Context, uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.transferred++
	return nil
}

func (f *fakeRoleRaft) setReachable(id uint64, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.members {
		if f.members[i].ID == id {
			f.members[i].Reachable = ok
		}
	}
}

func managerNode(id string, raftID uint64, desired api.NodeRole) *api.Node {
	return &api.Node{ID: id, Role: api.NodeRoleManager, Spec: api.NodeSpec{DesiredRole: desired},
		ManagerStatus: &api.ManagerStatus{RaftID: raftID, Addr: id + ":4242", Reachability: api.ReachabilityReachable}}
}

func waitNode(t *testing.T, s *store.MemoryStore, id, what string, ok func(*api.Node) bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	var n *api.Node
	for time.Now().Before(deadline) {
		s.View(func(tx store.ReadTx) { n = store.Get[*api.Node](tx, id) })
		if n != nil && ok(n) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("node %s: %s: not within 5s; node: %+v", id, what, n)
}

// The role manager promotes at once, removes a demoted manager from raft
// before making it a worker, waits while a removal would lose the quorum,
// and hands leadership over when the leader itself is demoted.
func TestRoleManagerCarriesOutPromotionAndDemotion(t *testing.T) {
	s, _ := storetest.New()
	fr := &fakeRoleRaft{members: []raft.Member{
		{ID: 1, Reachable: true, Leader: true}, {ID: 2, Reachable: true}, {ID: 3, Reachable: true},
	}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err := s.Update(ctx, func(tx store.Tx) error {
		for _, n := range []*api.Node{
			managerNode("m1", 1, api.NodeRoleManager),
			managerNode("m2", 2, api.NodeRoleManager),
			managerNode("m3", 3, api.NodeRoleManager),
			{ID: "w1", Role: api.NodeRoleWorker, Spec: api.NodeSpec{DesiredRole: api.NodeRoleWorker}},
		} {
			if err := tx.Create(n); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	rm := newRoleManager(s, fr, 1, slog.Default())
	setDesired := func(id string, role api.NodeRole) {
		t.Helper()
		if err := s.Update(ctx, func(tx store.Tx) error {
			n := store.Get[*api.Node](tx, id)
			n.Spec.DesiredRole = role
			return tx.Update(n)
		}); err != nil {
			t.Fatal(err)
		}
	}
	reconcile := func(wantHandedOver bool) {
		t.Helper()
		handedOver, err := rm.reconcile(ctx)
		if err != nil || handedOver != wantHandedOver {
			t.Fatalf("reconcile: handed over %v, %v; want handed over %v", handedOver, err, wantHandedOver)
		}
	}
	get := func(id string) (n *api.Node) {
		s.View(func(tx store.ReadTx) { n = store.Get[*api.Node](tx, id) })
		return n
	}

	// Run: a promotion is carried out as soon as it is written.
	done := make(chan error, 1)
	go func() { done <- rm.Run(ctx) }()
	setDesired("w1", api.NodeRoleManager)
	waitNode(t, s, "w1", "promoted", func(n *api.Node) bool { return n.Role == api.NodeRoleManager })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	ctx = context.Background()

	// Demotion of m3 with m2 unreachable would leave 1 of 2 reachable: it waits.
	fr.setReachable(2, false)
	setDesired("m3", api.NodeRoleWorker)
	reconcile(false)
	if n := get("m3"); n.Role != api.NodeRoleManager || n.ManagerStatus == nil || len(fr.removed) != 0 {
		t.Fatalf("m3 demoted (raft removed %v) while its removal would lose the quorum: %+v", fr.removed, n)
	}
	// m2 back: m3 leaves raft, then becomes a worker.
	fr.setReachable(2, true)
	reconcile(false)
	if n := get("m3"); n.Role != api.NodeRoleWorker || n.ManagerStatus != nil || !slices.Equal(fr.removed, []uint64{3}) {
		t.Fatalf("m3 not demoted (raft removed %v): %+v", fr.removed, n)
	}

	// Demoting the leader (raft ID 1) hands leadership over and stops there.
	setDesired("m1", api.NodeRoleWorker)
	reconcile(true)
	if n := get("m1"); fr.transferred != 1 || n.Role != api.NodeRoleManager || len(fr.removed) != 1 {
		t.Fatalf("leader's demotion: %d transfers, removed %v, node %+v; want a transfer only", fr.transferred, fr.removed, n)
	}
	// The next leader (raft ID 2) finishes it.
	rm = newRoleManager(s, fr, 2, slog.Default())
	reconcile(false)
	if n := get("m1"); n.Role != api.NodeRoleWorker || n.ManagerStatus != nil || !slices.Equal(fr.removed, []uint64{3, 1}) {
		t.Fatalf("m1 not demoted by the next leader (raft removed %v): %+v", fr.removed, n)
	}

	// The last managers: m2 demoted while w1 (promoted) never joined raft:
	// w1 has no raft member to remove and simply becomes a worker again.
	setDesired("w1", api.NodeRoleWorker)
	reconcile(false)
	if n := get("w1"); n.Role != api.NodeRoleWorker {
		t.Fatalf("w1 (never in raft) not demoted: %+v", n)
	}
}
