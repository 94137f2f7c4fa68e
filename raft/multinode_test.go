package raft

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
)

const testTick = 20 * time.Millisecond // election timeout 200-400 ms with the default ElectionTick

func kvOf(m *testMember) *kv { return m.sm.(*kv) }

func TestThreeMembersReplicateSurviveLeaderLossAndTheOldLeaderCatchesUp(t *testing.T) {
	c := newTestCluster(t, testTick)
	c.threeMembers()
	leader := c.waitLeader(10 * time.Second)
	if leader.id != 1 {
		t.Fatalf("leader is %d, want the bootstrapping member 1", leader.id)
	}
	proposeAll(t, leader.n, "a", 60, 8, "v")
	c.waitApplied(leader.n.AppliedIndex(), 10*time.Second)
	for _, m := range c.running() {
		requireKeys(t, kvOf(m), "a", 60)
		kvOf(m).check(t)
	}

	// Every member lists the three, with their addresses; the leader sees all reachable.
	ms := leader.n.Members()
	if len(ms) != 3 {
		t.Fatalf("members: %+v", ms)
	}
	for _, m := range ms {
		if m.Addr != c.members[m.ID].addr || !m.Reachable || m.Leader != (m.ID == 1) {
			t.Fatalf("leader's view of member %d: %+v (address %s)", m.ID, m, c.members[m.ID].addr)
		}
	}
	for _, id := range []uint64{2, 3} {
		n := c.members[id].n
		if got := n.LeaderAddr(); got != leader.addr {
			t.Fatalf("member %d: LeaderAddr %q, want %q", id, got, leader.addr)
		}
		if err := n.Propose(context.Background(), cmd("put", "x", "y")); !errors.Is(err, ErrNotLeader) {
			t.Fatalf("Propose on follower %d = %v, want ErrNotLeader", id, err)
		}
	}

	// Kill the leader: the others elect one within a few election timeouts.
	killed := time.Now()
	c.stop(1)
	nl := c.waitLeader(10 * time.Second)
	t.Logf("new leader %d ready %s after the leader was killed (election timeout %s-%s)",
		nl.id, time.Since(killed).Round(time.Millisecond), 10*testTick, 20*testTick)
	proposeAll(t, nl.n, "b", 60, 8, "w")
	if l := nl.n.LeaderAddr(); l != nl.addr {
		t.Fatalf("LeaderAddr on the new leader = %q, want %q", l, nl.addr)
	}

	// The old leader comes back from its log, follows, and catches up.
	old := c.start(1, nil, nil, false)
	c.waitApplied(nl.n.AppliedIndex(), 10*time.Second)
	requireKeys(t, kvOf(old), "a", 60)
	requireKeys(t, kvOf(old), "b", 60)
	eventually(t, 10*time.Second, "the old leader follows the new one", func() bool { return old.n.Leader() == nl.id })
	if old.n.IsLeader() {
		t.Fatal("the old leader took leadership back")
	}
	eventually(t, 10*time.Second, "the new leader sees 3 reachable members", func() bool { return reachableCount(nl.n) == 3 })
}

func TestPartitionedLeaderStepsDownFailsFastAndCatchesUpWhenHealed(t *testing.T) {
	c := newTestCluster(t, testTick)
	c.threeMembers()
	leader := c.waitLeader(10 * time.Second)
	proposeAll(t, leader.n, "a", 10, 2, "v")

	c.partition(leader.id, true)
	eventually(t, 10*time.Second, "the partitioned leader steps down", func() bool { return !leader.n.IsLeader() })
	start := time.Now()
	err := leader.n.Propose(context.Background(), cmd("put", "lost", "1"))
	if !errors.Is(err, ErrNotLeader) {
		t.Fatalf("Propose on the partitioned member = %v, want ErrNotLeader", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Propose on the partitioned member took %s, want fast", d)
	}
	nl := c.waitLeader(10*time.Second, leader.id)
	proposeAll(t, nl.n, "p", 30, 4, "w")
	if _, ok := kvOf(leader).get("p0"); ok {
		t.Fatal("the partitioned member applied an entry it cannot have received")
	}

	c.partition(leader.id, false)
	c.waitApplied(nl.n.AppliedIndex(), 10*time.Second)
	requireKeys(t, kvOf(leader), "p", 30)
	eventually(t, 10*time.Second, "the healed member follows the new leader", func() bool { return leader.n.Leader() == nl.id })
	if _, ok := kvOf(leader).get("lost"); ok {
		t.Fatal("a proposal refused with ErrNotLeader was applied")
	}
}

func TestRemoveMemberKeepsQuorumHandsOverLeadershipAndNeverReusesIDs(t *testing.T) {
	c := newTestCluster(t, testTick)
	c.threeMembers()
	leader := c.waitLeader(10 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// 3 members, 1 down: removing either of the 2 up ones, or adding a 4th, is refused.
	c.stop(3)
	eventually(t, 10*time.Second, "the leader sees member 3 unreachable", func() bool { return reachableCount(leader.n) == 2 })
	for _, id := range []uint64{2, 1} {
		err := leader.n.RemoveMember(ctx, id)
		if !errors.Is(err, ErrWouldLoseQuorum) || !strings.Contains(err.Error(), "1 of 2 managers reachable and needs 2") {
			t.Fatalf("RemoveMember(%d) with member 3 down = %v, want ErrWouldLoseQuorum saying 1 of 2 reachable, 2 needed", id, err)
		}
	}
	if err := leader.n.AddMember(ctx, 4, "127.0.0.1:1"); !errors.Is(err, ErrWouldLoseQuorum) {
		t.Fatalf("AddMember(4) with member 3 down = %v, want ErrWouldLoseQuorum", err)
	}
	if got := len(leader.n.Members()); got != 3 {
		t.Fatalf("%d members after refused changes", got)
	}
	if err := c.members[2].n.RemoveMember(ctx, 3); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("RemoveMember on a follower = %v, want ErrNotLeader", err)
	}

	// Back to 3 reachable: removing the leader hands leadership over first.
	c.start(3, nil, nil, false)
	eventually(t, 10*time.Second, "the leader sees 3 reachable members", func() bool { return reachableCount(leader.n) == 3 })
	proposeAll(t, leader.n, "a", 10, 2, "v")
	if err := leader.n.RemoveMember(ctx, leader.id); err != nil {
		t.Fatalf("RemoveMember(leader): %v", err)
	}
	select {
	case <-leader.n.Removed():
	default:
		t.Fatal("the removed leader does not know it was removed")
	}
	nl := c.waitLeader(10*time.Second, leader.id)
	if nl.id == leader.id {
		t.Fatal("the removed member still leads")
	}
	if ms := nl.n.Members(); len(ms) != 2 || slices.ContainsFunc(ms, func(m Member) bool { return m.ID == leader.id }) {
		t.Fatalf("members after removing the leader: %+v", ms)
	}
	proposeAll(t, nl.n, "b", 10, 2, "w")

	// The removed ID is never a member again.
	if err := nl.n.AddMember(ctx, leader.id, leader.addr); !errors.Is(err, ErrMemberRemoved) {
		t.Fatalf("AddMember of the removed ID = %v, want ErrMemberRemoved", err)
	}
	// Its messages are dropped, and it is told why.
	err := nl.n.Step(ctx, raftpb.Message{Type: raftpb.MsgHeartbeatResp, From: leader.id, To: nl.id, Term: 100})
	if !errors.Is(err, ErrMemberRemoved) {
		t.Fatalf("Step of a message from the removed member = %v, want ErrMemberRemoved", err)
	}
	conn, err := plainDial(ctx, nl.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = api.NewRaftClient(conn).ProcessRaftMessage(ctx, &api.ProcessRaftMessageRequest{Message: &raftpb.Message{
		Type: raftpb.MsgVote, From: leader.id, To: nl.id, Term: 1000, LogTerm: 1000, Index: 1 << 40,
	}})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("a vote request from the removed member = %v, want FailedPrecondition", err)
	}
	if l, _ := nl.n.Leadership(); !l.IsLeader || l.Term >= 1000 {
		t.Fatalf("the removed member's vote request disturbed the leader: %+v", l)
	}
	// The Join RPC refuses the removed ID too, with the reason.
	_, err = api.NewRaftClient(conn).Join(ctx, &api.JoinRequest{RaftID: leader.id, Addr: leader.addr})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "removed") {
		t.Fatalf("Join of the removed ID = %v, want FailedPrecondition (removed)", err)
	}
	c.stop(leader.id)
	c.waitApplied(nl.n.AppliedIndex(), 10*time.Second)
}

// blobSM is a state machine of big values: "fill\x00key\x00size" stores size bytes derived from
// key, so a few small proposals make hundreds of MB of state.
type blobSM struct {
	mu   sync.Mutex
	data map[string][]byte
}

func newBlobSM() *blobSM { return &blobSM{data: map[string][]byte{}} }

func (s *blobSM) Apply(_ uint64, cmd []byte) error {
	parts := strings.SplitN(string(cmd), "\x00", 3)
	if len(parts) != 3 {
		return fmt.Errorf("bad command %q", cmd)
	}
	var v []byte
	switch parts[0] {
	case "fill":
		size, err := strconv.Atoi(parts[2])
		if err != nil {
			return err
		}
		v = make([]byte, size)
		seed := sha256.Sum256([]byte(parts[1]))
		n := copy(v, seed[:])
		for n < size {
			n += copy(v[n:], v[:n])
		}
		binary.BigEndian.PutUint64(v[size/2:], uint64(size)) // not only a repeated pattern
	default:
		v = []byte(parts[2])
	}
	s.mu.Lock()
	s.data[parts[1]] = v
	s.mu.Unlock()
	return nil
}

func (s *blobSM) Snapshot() ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := make([]string, 0, len(s.data))
	size := 0
	for k, v := range s.data {
		keys = append(keys, k)
		size += len(k) + len(v) + 2*binary.MaxVarintLen64
	}
	slices.Sort(keys)
	out := make([]byte, 0, size)
	for _, k := range keys {
		out = binary.AppendUvarint(out, uint64(len(k)))
		out = append(out, k...)
		out = binary.AppendUvarint(out, uint64(len(s.data[k])))
		out = append(out, s.data[k]...)
	}
	return out, nil
}

func (s *blobSM) Restore(b []byte) error {
	data := map[string][]byte{}
	for len(b) > 0 {
		var parts [2][]byte
		for i := range parts {
			n, k := binary.Uvarint(b)
			if k <= 0 || n > uint64(len(b)-k) {
				return errors.New("blob snapshot damaged")
			}
			parts[i], b = b[k:k+int(n)], b[k+int(n):]
		}
		data[string(parts[0])] = parts[1]
	}
	s.mu.Lock()
	s.data = data
	s.mu.Unlock()
	return nil
}

func (s *blobSM) digest() ([32]byte, int) {
	b, _ := s.Snapshot()
	return sha256.Sum256(b), len(b)
}

// chunkCounter counts the StreamRaftMessage chunks a server receives, and the largest.
type chunkCounter struct {
	chunks, maxData atomic.Int64
}

func (cc *chunkCounter) interceptor() grpc.ServerOption {
	return grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		return handler(srv, &countingStream{ServerStream: ss, cc: cc})
	})
}

type countingStream struct {
	grpc.ServerStream
	cc *chunkCounter
}

func (s *countingStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if req, ok := m.(*api.StreamRaftMessageRequest); ok && err == nil {
		s.cc.chunks.Add(1)
		for size := int64(len(req.Data)); ; {
			old := s.cc.maxData.Load()
			if size <= old || s.cc.maxData.CompareAndSwap(old, size) {
				break
			}
		}
	}
	return err
}

func TestJoiningMemberOfACompactedClusterGetsA200MBSnapshotInChunks(t *testing.T) {
	total, pieces := 200<<20, 4
	if raceEnabled {
		total = 32 << 20 // the same path with less data: the 200 MB run takes 20 s under -race
	}
	c := newTestCluster(t, testTick)
	var counter chunkCounter
	c.grpcOpts = []grpc.ServerOption{counter.interceptor()}
	c.configure = func(cfg *Config) {
		cfg.SnapshotInterval = 1 << 40 // snapshots only when the test asks
		cfg.LogEntriesForSlowFollowers = 1
	}
	sm1 := newBlobSM()
	m1 := c.start(1, []raft.Peer{{ID: 1}}, sm1, false)
	c.waitLeader(10 * time.Second)
	for i := range pieces {
		propose(t, m1.n, "fill", fmt.Sprintf("blob%d", i), strconv.Itoa(total/pieces))
	}
	// One snapshot of everything, and the log compacted behind it.
	m1.n.SetSnapshotInterval(1)
	propose(t, m1.n, "put", "small", "1")
	m1.n.SetSnapshotInterval(1 << 40)
	if first, _ := m1.n.ms.FirstIndex(); first <= 2 {
		t.Fatalf("the log was not compacted: first index %d", first)
	}

	sm2 := newBlobSM()
	m2 := c.start(2, nil, sm2, false)
	m2.tr.SetPeer(1, m1.addr) // what the Join answer would have listed
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := m1.n.AddMember(ctx, 2, m2.addr); err != nil {
		t.Fatalf("AddMember(2): %v", err)
	}
	c.waitApplied(m1.n.AppliedIndex(), 60*time.Second)
	elapsed := time.Since(start)
	want, size := sm1.digest()
	if got, _ := sm2.digest(); got != want {
		t.Fatal("the new member's state differs from the leader's")
	}
	if size < total {
		t.Fatalf("state of %d bytes, want at least %d", size, total)
	}
	chunks, biggest := counter.chunks.Load(), counter.maxData.Load()
	t.Logf("new member caught up from a %d MiB snapshot in %s (%d chunks, largest %d bytes)",
		size>>20, elapsed.Round(time.Millisecond), chunks, biggest)
	if chunks < int64(size/DefaultSnapshotChunkSize) || biggest > DefaultSnapshotChunkSize {
		t.Fatalf("%d chunks of at most %d bytes for %d bytes, want chunks of at most %d", chunks, biggest, size, DefaultSnapshotChunkSize)
	}
	// The two members go on together. (Member 1 may have stepped down meanwhile: with two
	// voters, quorum needs member 2, whose loop was busy installing the snapshot.)
	leader := c.waitLeader(20 * time.Second)
	eventually(t, 10*time.Second, "the leader sees both members reachable", func() bool { return reachableCount(leader.n) == 2 })
	propose(t, leader.n, "put", "after", "2")
	c.waitApplied(leader.n.AppliedIndex(), 10*time.Second)
}

// A snapshot stream has a deadline per chunk, not for the whole: a slow receiver that keeps
// reading gets the whole snapshot, one that stops reading fails the send in about a chunk
// timeout.
func TestSnapshotStreamDeadlineIsPerChunk(t *testing.T) {
	for _, tc := range []struct {
		name    string
		size    int
		stall   bool
		wantErr bool
	}{
		{name: "slow but moving", size: 2 << 20},
		{name: "stalled", size: 64 << 20, stall: true, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := &fakeRaftServer{delay: 20 * time.Millisecond, stall: tc.stall, got: make(chan int, 1)}
			srv := grpc.NewServer()
			api.RegisterRaftServer(srv, fs)
			lis := listen(t)
			go srv.Serve(lis)
			t.Cleanup(srv.Stop)

			lg, _ := testLogger(t)
			tr := NewGRPCTransport(TransportConfig{Dial: plainDial, Logger: lg, SnapshotChunkSize: 64 << 10, SnapshotChunkTimeout: 300 * time.Millisecond})
			tr.SetPeer(2, lis.Addr().String())
			t.Cleanup(tr.close)
			data := bytes.Repeat([]byte{7}, tc.size)
			m := raftpb.Message{Type: raftpb.MsgSnap, From: 1, To: 2, Snapshot: &raftpb.Snapshot{Data: data, Metadata: raftpb.SnapshotMetadata{Index: 9, Term: 2}}}
			start := time.Now()
			err := tr.peer(2).stream(m)
			elapsed := time.Since(start)
			if tc.wantErr {
				if err == nil || !strings.Contains(err.Error(), "per-chunk deadline") {
					t.Fatalf("stream to a stalled receiver = %v, want a per-chunk deadline error", err)
				}
				if elapsed > 10*time.Second {
					t.Fatalf("gave up after %s", elapsed)
				}
				return
			}
			if err != nil {
				t.Fatalf("stream to a slow receiver: %v", err)
			}
			if elapsed < 300*time.Millisecond {
				t.Fatalf("the whole stream took %s, not longer than one chunk timeout: the test proves nothing", elapsed)
			}
			if got := <-fs.got; got != tc.size {
				t.Fatalf("receiver got %d bytes, want %d", got, tc.size)
			}
		})
	}
}

type fakeRaftServer struct {
	api.UnimplementedRaftServer
	delay time.Duration
	stall bool
	got   chan int
}

func (f *fakeRaftServer) StreamRaftMessage(stream api.Raft_StreamRaftMessageServer) error {
	size := 0
	for i := 0; ; i++ {
		if f.stall && i == 1 {
			<-stream.Context().Done()
			return stream.Context().Err()
		}
		if i > 0 {
			time.Sleep(f.delay) // a slow receiver
		}
		req, err := stream.Recv()
		if err != nil {
			f.got <- size
			return stream.SendAndClose(&api.StreamRaftMessageResponse{})
		}
		size += len(req.Data)
	}
}

// The receiving side gives up on a stream whose next chunk does not come in time.
func TestSnapshotReceiverGivesUpOnAStalledStream(t *testing.T) {
	c := newTestCluster(t, testTick)
	c.configure = func(cfg *Config) {
		cfg.Transport.(*GRPCTransport).cfg.SnapshotChunkTimeout = 300 * time.Millisecond
	}
	m := c.start(1, []raft.Peer{{ID: 1}}, nil, false)
	conn, err := plainDial(context.Background(), m.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stream, err := api.NewRaftClient(conn).StreamRaftMessage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	err = stream.Send(&api.StreamRaftMessageRequest{
		Message:   &raftpb.Message{Type: raftpb.MsgSnap, From: 2, To: 1, Snapshot: &raftpb.Snapshot{}},
		TotalSize: 10, Data: []byte{1},
	})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = stream.RecvMsg(&api.StreamRaftMessageResponse{})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("stalled stream ended with %v, want DeadlineExceeded from the receiver", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the receiver gave up after %s", d)
	}
}
