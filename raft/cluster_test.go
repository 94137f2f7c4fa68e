package raft

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/flotilla/flotilla/api"
)

// testCluster runs raft members in-process, each with its own Raft gRPC server on a loopback
// port and a GRPCTransport dialing the others in plain text (the manager adds mTLS).
type testCluster struct {
	t       testing.TB
	tick    time.Duration // TickInterval of every member (0: the default)
	members map[uint64]*testMember
	// configure, if set, adjusts each member's Config before New.
	configure func(*Config)
	// grpcOpts are extra options for every member's server.
	grpcOpts []grpc.ServerOption

	mu          sync.Mutex
	partitioned map[uint64]bool
}

type testMember struct {
	id   uint64
	dir  string
	addr string
	sm   StateMachine
	tr   *GRPCTransport
	srv  *grpc.Server
	r    *runner
	n    *Node
	tk   chan time.Time // ticks when the cluster is driven by a fake clock
	lg   *logBuffer
}

func newTestCluster(t testing.TB, tick time.Duration) *testCluster {
	c := &testCluster{t: t, tick: tick, members: map[uint64]*testMember{}, partitioned: map[uint64]bool{}}
	t.Cleanup(func() {
		for _, m := range c.members {
			c.stop(m.id)
		}
	})
	return c
}

func plainDial(_ context.Context, addr string) (*grpc.ClientConn, error) {
	return grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

// start starts (or restarts, with the same dir and address) member id. peers bootstrap a new
// log; sm nil makes a new kv.
func (c *testCluster) start(id uint64, peers []raft.Peer, sm StateMachine, fakeClock bool) *testMember {
	c.t.Helper()
	m := c.add(id)
	if m.r != nil {
		c.t.Fatalf("member %d is running", id)
	}
	if sm == nil {
		sm = newKV()
	}
	m.sm = sm
	lg, lb := testLogger(c.t)
	m.lg = lb
	lg = lg.With("test.member", id)
	m.tr = NewGRPCTransport(TransportConfig{Dial: plainDial, Logger: lg})
	filter := func(msg raftpb.Message) bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.partitioned[msg.From] || c.partitioned[msg.To]
	}
	m.tr.filter.Store(&filter)
	cfg := Config{
		ID: id, Dir: m.dir, Peers: peers, Addr: m.addr, TickInterval: c.tick,
		StateMachine: sm, Transport: m.tr, Logger: lg,
	}
	if fakeClock {
		m.tk = make(chan time.Time)
		cfg.Ticks = m.tk
	}
	if c.configure != nil {
		c.configure(&cfg)
	}
	n, err := New(cfg)
	if err != nil {
		c.t.Fatalf("New member %d: %v", id, err)
	}
	m.n = n
	var lis net.Listener
	for deadline := time.Now().Add(10 * time.Second); ; {
		// The port was ours before a restart; another listener may hold it for a moment.
		if lis, err = net.Listen("tcp", m.addr); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		c.t.Fatalf("listen on %s: %v", m.addr, err)
	}
	m.srv = grpc.NewServer(c.grpcOpts...)
	api.RegisterRaftServer(m.srv, NewServer(n))
	go m.srv.Serve(lis)
	m.r = run(c.t, n)
	return m
}

// add reserves member id's directory and address.
func (c *testCluster) add(id uint64) *testMember {
	c.t.Helper()
	if m := c.members[id]; m != nil {
		return m
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		c.t.Fatal(err)
	}
	m := &testMember{id: id, dir: c.t.TempDir(), addr: lis.Addr().String()}
	lis.Close()
	c.members[id] = m
	return m
}

// staticPeers reserves members ids and returns them as bootstrap peers with their addresses.
func (c *testCluster) staticPeers(ids ...uint64) []raft.Peer {
	var peers []raft.Peer
	for _, id := range ids {
		peers = append(peers, raft.Peer{ID: id, Context: []byte(c.add(id).addr)})
	}
	return peers
}

// stop kills member id: its server and its Run loop.
func (c *testCluster) stop(id uint64) {
	m := c.members[id]
	if m == nil || m.r == nil {
		return
	}
	m.srv.Stop()
	if err := m.r.stop(c.t); err != nil {
		c.t.Errorf("member %d: Run: %v", id, err)
	}
	m.r, m.n = nil, nil
}

func (c *testCluster) partition(id uint64, cut bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.partitioned[id] = cut
}

// join has member id (started with no peers) join through the member at `via` with the Join
// RPC, and tells its transport the members the answer lists.
func (c *testCluster) join(id, via uint64) {
	c.t.Helper()
	m := c.members[id]
	conn, err := plainDial(context.Background(), c.members[via].addr)
	if err != nil {
		c.t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := api.NewRaftClient(conn).Join(ctx, &api.JoinRequest{RaftID: id, Addr: m.addr})
	if err != nil {
		c.t.Fatalf("member %d joining through %d: %v", id, via, err)
	}
	found := false
	for _, mem := range resp.Members {
		m.tr.SetPeer(mem.RaftID, mem.Addr)
		found = found || mem.RaftID == id
	}
	if !found {
		c.t.Fatalf("the join answer does not list member %d: %v", id, resp.Members)
	}
}

// running lists the running members.
func (c *testCluster) running() []*testMember {
	var out []*testMember
	for _, m := range c.members {
		if m.r != nil {
			out = append(out, m)
		}
	}
	return out
}

// waitLeader waits until the running members (but those in except) agree on a ready leader and
// returns it.
func (c *testCluster) waitLeader(timeout time.Duration, except ...uint64) *testMember {
	c.t.Helper()
	var last string
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		var leader uint64
		agree := true
		var ready *testMember
		for _, m := range c.running() {
			if contains(except, m.id) {
				continue
			}
			l := m.n.leadership.Load()
			if leader == 0 {
				leader = l.Leader
			}
			if l.Leader == 0 || l.Leader != leader {
				agree = false
			}
			if l.IsLeader && l.Ready {
				ready = m
			}
		}
		if agree && ready != nil && ready.id == leader {
			return ready
		}
		last = fmt.Sprintf("leader %x, agree %v, ready %v", leader, agree, ready != nil)
	}
	c.t.Fatalf("no ready leader agreed on within %s: %s", timeout, last)
	return nil
}

// waitApplied waits until every running member applied index.
func (c *testCluster) waitApplied(index uint64, timeout time.Duration) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for _, m := range c.running() {
		if err := m.n.WaitApplied(ctx, index); err != nil {
			c.t.Fatalf("member %d applied %d, want %d: %v", m.id, m.n.AppliedIndex(), index, err)
		}
	}
}

func contains(ids []uint64, id uint64) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}

// eventually polls cond until it holds or timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(timeout); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, what)
		}
	}
}

// threeMembers bootstraps member 1 and has 2 and 3 join (2 through 1, 3 through 2, a follower
// that forwards the join to the leader).
func (c *testCluster) threeMembers() {
	c.t.Helper()
	c.start(1, []raft.Peer{{ID: 1}}, nil, false)
	c.waitLeader(10 * time.Second)
	c.start(2, nil, nil, false)
	c.join(2, 1)
	c.waitApplied(c.members[1].n.AppliedIndex(), 10*time.Second)
	// Member 2 must be heard from before the leader accepts a third voter.
	eventually(c.t, 10*time.Second, "member 1 sees member 2 reachable", func() bool { return reachableCount(c.members[1].n) == 2 })
	c.start(3, nil, nil, false)
	c.join(3, 2)
	c.waitApplied(c.members[1].n.AppliedIndex(), 10*time.Second)
	eventually(c.t, 10*time.Second, "member 1 sees 3 reachable members", func() bool { return reachableCount(c.members[1].n) == 3 })
}

func reachableCount(n *Node) int {
	k := 0
	for _, m := range n.Members() {
		if m.Reachable {
			k++
		}
	}
	return k
}

func listen(t testing.TB) net.Listener {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return lis
}
