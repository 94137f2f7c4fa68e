package raft

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
)

// Elections under a fake clock: raft's clock moves only when the test ticks a member, and
// messages go over real gRPC.

// advance moves member m's clock by k ticks and returns once its loop handled them.
func (c *testCluster) advance(m *testMember, k int) {
	c.t.Helper()
	for range k {
		m.tk <- time.Now()
	}
	if err := m.n.inLoop(context.Background(), func() error { return nil }); err != nil {
		c.t.Fatal(err)
	}
}

func raftState(m *testMember) raft.StateType { return m.n.Status().RaftState }

func TestElectionOnlyAfterElectionTimeoutAndPartitionedLeaderStepsDown(t *testing.T) {
	c := newTestCluster(t, 0)
	peers := c.staticPeers(1, 2, 3)
	for _, p := range peers {
		c.start(p.ID, peers, nil, true)
	}
	const et = DefaultElectionTick
	// ElectionTick-1 ticks on every member: nobody campaigns.
	for _, m := range c.running() {
		c.advance(m, et-1)
	}
	for _, m := range c.running() {
		if st := raftState(m); st != raft.StateFollower || m.n.Leader() != 0 {
			t.Fatalf("member %d after %d ticks: %s, leader %x; want a follower with no leader", m.id, et-1, st, m.n.Leader())
		}
	}
	// Member 1 alone keeps ticking: it campaigns within raft's randomized [ElectionTick,
	// 2*ElectionTick) ticks, and wins (the others have no leader, so they grant their votes).
	m1 := c.members[1]
	ticks := et - 1
	for raftState(m1) == raft.StateFollower {
		if ticks == 2*et {
			t.Fatalf("member 1 did not campaign after %d ticks", ticks)
		}
		c.advance(m1, 1)
		ticks++
	}
	if ticks < et {
		t.Fatalf("member 1 campaigned after %d ticks, before ElectionTick (%d)", ticks, et)
	}
	leader := c.waitLeader(10 * time.Second)
	if leader.id != 1 {
		t.Fatalf("leader %d, want member 1, the only one whose clock ran out", leader.id)
	}
	propose(t, leader.n, "put", "k", "v")

	// Cut off, the leader steps down after at most two election timeouts of its own clock
	// (CheckQuorum), and its proposals fail at once.
	c.partition(1, true)
	for k := 0; leader.n.IsLeader(); k++ {
		if k == 2*et {
			t.Fatalf("the partitioned leader still leads after %d ticks", k)
		}
		c.advance(leader, 1)
	}
	if err := leader.n.Propose(context.Background(), cmd("put", "x", "y")); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("Propose on the deposed leader = %v, want ErrNotLeader", err)
	}
}

func TestNoLeaderWithoutQuorum(t *testing.T) {
	c := newTestCluster(t, 0)
	peers := c.staticPeers(1, 2, 3)
	m1 := c.start(1, peers, nil, true)
	// Alone of three, member 1 campaigns again and again but never leads.
	for range 10 {
		c.advance(m1, DefaultElectionTick)
		if m1.n.IsLeader() || m1.n.Leader() != 0 {
			t.Fatalf("member 1 leads (or knows a leader) without a quorum: %+v", m1.n.leadership.Load())
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := m1.n.Propose(ctx, cmd("put", "x", "y")); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("Propose without a quorum = %v, want ErrNotLeader", err)
	}
	if term := m1.n.Status().Term; term > 1 {
		t.Fatalf("member 1's term went up to %d without a quorum (pre-vote should keep it)", term)
	}

	// A second member makes a quorum: the next campaign wins.
	c.start(2, peers, nil, true)
	for k := 0; !m1.n.IsLeader() && c.members[2].n.Leader() == 0; k++ {
		if k == 100*DefaultElectionTick {
			t.Fatal("no leader with 2 of 3 members up")
		}
		c.advance(m1, 1)
		time.Sleep(time.Millisecond) // let the votes travel; the clock is what the test controls
	}
	c.waitLeader(10 * time.Second)
}
