package raft

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
)

// appendToLog writes entries (and hs, if not empty) to the log of a stopped member, as if it had
// received them from a leader.
func appendToLog(t *testing.T, dir string, id uint64, key *DataKey, hs raftpb.HardState, ents ...raftpb.Entry) recovered {
	t.Helper()
	lg, _ := testLogger(t)
	st, rec, err := openStorage(dir, id, 1<<20, key, lg)
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	if err := st.save(hs, ents); err != nil {
		t.Fatal(err)
	}
	if err := st.sync(); err != nil {
		t.Fatal(err)
	}
	return rec
}

func confChangeEntry(t *testing.T, term, index uint64, typ raftpb.ConfChangeType, id uint64, addr string) raftpb.Entry {
	t.Helper()
	data, err := (&raftpb.ConfChange{Type: typ, NodeID: id, Context: []byte(addr)}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return raftpb.Entry{Type: raftpb.EntryConfChange, Term: term, Index: index, Data: data}
}

func TestForceNewClusterLeadsAloneWithTheSameStateAndNeverTakesBackTheOldMembers(t *testing.T) {
	c := newTestCluster(t, testTick)
	force := map[uint64]bool{}
	c.configure = func(cfg *Config) { cfg.ForceNewCluster = force[cfg.ID] }
	c.threeMembers()
	leader := c.waitLeader(10 * time.Second)
	proposeAll(t, leader.n, "a", 40, 4, "v")
	c.waitApplied(leader.n.AppliedIndex(), 10*time.Second)

	// Quorum lost for good: members 1 and 2 are gone, member 3 cannot elect itself.
	c.stop(1)
	c.stop(2)
	survivor := c.members[3]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	eventually(t, 10*time.Second, "member 3 knows no leader", func() bool { return survivor.n.Leader() == 0 })
	if err := survivor.n.Propose(ctx, cmd("put", "x", "y")); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("Propose without quorum = %v, want ErrNotLeader", err)
	}
	c.stop(3)

	// An entry member 3 holds beyond its commit index (the lost leader may have committed it)
	// is kept and committed.
	rec := appendToLog(t, survivor.dir, 3, nil, raftpb.HardState{})
	lastEnt := rec.ents[len(rec.ents)-1]
	appendToLog(t, survivor.dir, 3, nil, raftpb.HardState{}, raftpb.Entry{
		Term: lastEnt.Term, Index: lastEnt.Index + 1, Data: encodeEnvelope(1, 1<<40, cmd("put", "tail", "t")),
	})

	force[3] = true
	restarted := time.Now()
	survivor = c.start(3, nil, nil, false)
	if nl := c.waitLeader(10 * time.Second); nl.id != 3 {
		t.Fatalf("leader after forcing a new cluster is %d, want 3", nl.id)
	}
	t.Logf("member 3 restarted with ForceNewCluster leads alone after %s", time.Since(restarted).Round(time.Millisecond))
	if ms := survivor.n.Members(); len(ms) != 1 || ms[0].ID != 3 || ms[0].Addr != survivor.addr || !ms[0].Leader {
		t.Fatalf("members after forcing a new cluster: %+v", ms)
	}
	requireKeys(t, kvOf(survivor), "a", 40)
	if v, ok := kvOf(survivor).get("tail"); !ok || v != "t" {
		t.Fatal("the entry beyond the commit index was dropped")
	}
	kvOf(survivor).check(t)
	proposeAll(t, survivor.n, "b", 20, 4, "w")

	// The old members' IDs are refused, whatever way they come back.
	if err := survivor.n.AddMember(ctx, 1, c.members[1].addr); !errors.Is(err, ErrMemberRemoved) {
		t.Fatalf("AddMember of an old member = %v, want ErrMemberRemoved", err)
	}
	conn, err := plainDial(ctx, survivor.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = api.NewRaftClient(conn).Join(ctx, &api.JoinRequest{RaftID: 2, Addr: c.members[2].addr})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "removed") {
		t.Fatalf("Join of an old member = %v, want FailedPrecondition (removed)", err)
	}
	term := survivor.n.leadership.Load().Term
	force[3] = false
	old := c.start(1, nil, nil, false) // with its own log, where it is still one of three
	select {
	case <-old.n.Removed():
	case <-time.After(10 * time.Second):
		t.Fatal("the old member restarted with its log does not learn that it was removed")
	}
	if l := survivor.n.leadership.Load(); !l.IsLeader || l.Term != term {
		t.Fatalf("the old member disturbed the new cluster: %+v (term was %d)", l, term)
	}
	c.stop(1)

	// The rewrite is durable: member 3 restarts without the flag, alone, with the same state.
	c.stop(3)
	survivor = c.start(3, nil, nil, false)
	if nl := c.waitLeader(10 * time.Second); nl.id != 3 {
		t.Fatalf("leader after a plain restart is %d, want 3", nl.id)
	}
	requireKeys(t, kvOf(survivor), "b", 20)
	if ms := survivor.n.Members(); len(ms) != 1 {
		t.Fatalf("members after a plain restart: %+v", ms)
	}

	// A new member joins, and gets the whole state.
	c.start(4, nil, nil, false)
	c.join(4, 3)
	proposeAll(t, survivor.n, "c", 10, 2, "x")
	c.waitApplied(survivor.n.AppliedIndex(), 10*time.Second)
	requireKeys(t, kvOf(c.members[4]), "a", 40)
	requireKeys(t, kvOf(c.members[4]), "c", 10)
	if _, ok := kvOf(c.members[4]).get("tail"); !ok {
		t.Fatal("the new member lacks an entry committed by forcing the new cluster")
	}
	if ms := survivor.n.Members(); len(ms) != 2 || ms[0].ID != 3 || ms[1].ID != 4 {
		t.Fatalf("members after a new one joined: %+v", ms)
	}
}

func TestForceNewClusterNeedsAMembersLogAndSurvivesRestarts(t *testing.T) {
	for _, tc := range []struct {
		name string
		key  *DataKey
	}{{"plaintext log", nil}, {"encrypted log", newTestDataKey(t, 3)}} {
		t.Run(tc.name, func(t *testing.T) { testForceNewClusterOnACraftedLog(t, tc.key) })
	}
}

func testForceNewClusterOnACraftedLog(t *testing.T, key *DataKey) {
	lg, _ := testLogger(t)
	cfg := func(dir string, id uint64) Config {
		return Config{ID: id, Dir: dir, StateMachine: newKV(), Logger: lg, ForceNewCluster: true, DataKey: key}
	}

	// No log: refused, and nothing is created.
	empty := t.TempDir()
	if _, err := New(cfg(empty, 1)); !errors.Is(err, ErrNoClusterState) || !strings.Contains(err.Error(), empty) {
		t.Fatalf("New with ForceNewCluster on an empty dir = %v, want ErrNoClusterState naming the dir", err)
	}
	if ents, _ := os.ReadDir(empty); len(ents) != 0 {
		t.Fatalf("a refused ForceNewCluster left %d files in the data directory", len(ents))
	}

	// A log of 3 members where member 2 was removed, and member 4 was never added.
	log := func(id uint64) string {
		dir := t.TempDir()
		appendToLog(t, dir, id, key, raftpb.HardState{Term: 2, Vote: 1, Commit: 5},
			confChangeEntry(t, 1, 1, raftpb.ConfChangeAddNode, 1, "127.0.0.1:1"),
			confChangeEntry(t, 1, 2, raftpb.ConfChangeAddNode, 2, "127.0.0.1:2"),
			confChangeEntry(t, 1, 3, raftpb.ConfChangeAddNode, 3, "127.0.0.1:3"),
			raftpb.Entry{Term: 2, Index: 4, Data: encodeEnvelope(1, 1, cmd("put", "k", marker))},
			confChangeEntry(t, 2, 5, raftpb.ConfChangeRemoveNode, 2, ""),
		)
		return dir
	}
	if _, err := New(cfg(log(2), 2)); !errors.Is(err, ErrMemberRemoved) {
		t.Fatalf("New with ForceNewCluster on a removed member's log = %v, want ErrMemberRemoved", err)
	}
	if _, err := New(cfg(log(4), 4)); !errors.Is(err, ErrNoClusterState) {
		t.Fatalf("New with ForceNewCluster on a log without this member = %v, want ErrNoClusterState", err)
	}

	// Member 1 of the same log: 3 is removed too, and 2 stays removed.
	dir := log(1)
	c := cfg(dir, 1)
	sm := c.StateMachine.(*kv)
	r := startNode(t, c)
	waitLeaderReady(t, r.n)
	if ms := r.n.Members(); len(ms) != 1 || ms[0].ID != 1 {
		t.Fatalf("members: %+v", ms)
	}
	if _, ok := sm.get("k"); !ok {
		t.Fatal("the committed entry is missing")
	}
	propose(t, r.n, "put", "after", marker)
	for _, id := range []uint64{2, 3} {
		if err := r.n.AddMember(context.Background(), id, "127.0.0.1:9"); !errors.Is(err, ErrMemberRemoved) {
			t.Fatalf("AddMember(%d) = %v, want ErrMemberRemoved", id, err)
		}
	}
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	if key != nil {
		requireNoMarker(t, dir)
	}
	// Restarting, forced again or not, changes nothing.
	for _, force := range []bool{true, false} {
		c = cfg(dir, 1)
		c.ForceNewCluster = force
		r = startNode(t, c)
		waitLeaderReady(t, r.n)
		if _, ok := c.StateMachine.(*kv).get("after"); !ok {
			t.Fatalf("state lost by a restart (ForceNewCluster %v)", force)
		}
		if ms := r.n.Members(); len(ms) != 1 || ms[0].ID != 1 {
			t.Fatalf("members after a restart (ForceNewCluster %v): %+v", force, ms)
		}
		if err := r.stop(t); err != nil {
			t.Fatal(err)
		}
	}
}
