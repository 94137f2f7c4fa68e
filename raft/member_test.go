package raft

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
)

// These tests run member 2 of a two-voter cluster whose member 1 is scripted by the test: the
// test reads what node 2 sends (fakeTransport) and answers with Step, and drives node 2's clock.

type fakeTransport struct {
	mu   sync.Mutex
	msgs []raftpb.Message
}

func (f *fakeTransport) Send(ms []raftpb.Message) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.msgs = append(f.msgs, ms...)
}

// take removes and returns the first sent message that matches.
func (f *fakeTransport) take(match func(raftpb.Message) bool) (raftpb.Message, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, m := range f.msgs {
		if match(m) {
			f.msgs = append(f.msgs[:i], f.msgs[i+1:]...)
			return m, true
		}
	}
	return raftpb.Message{}, false
}

func ofType(t raftpb.MessageType) func(raftpb.Message) bool {
	return func(m raftpb.Message) bool { return m.Type == t }
}

// scriptedMember is node 2 plus the means to script member 1.
type scriptedMember struct {
	t     *testing.T
	r     *runner
	sm    *kv
	tr    *fakeTransport
	ticks chan time.Time
}

// settle returns once node 2's loop handled everything caused by earlier calls (the loop handles
// every pending Ready before it takes the next request).
func (s *scriptedMember) settle() {
	s.t.Helper()
	if err := s.r.n.inLoop(context.Background(), func() error { return nil }); err != nil {
		s.t.Fatal(err)
	}
}

func (s *scriptedMember) step(m raftpb.Message) {
	s.t.Helper()
	m.From, m.To = 1, 2
	if err := s.r.n.Step(context.Background(), m); err != nil {
		s.t.Fatalf("Step %v: %v", m.Type, err)
	}
	s.settle()
}

func (s *scriptedMember) expect(typ raftpb.MessageType) raftpb.Message {
	s.t.Helper()
	m, ok := s.tr.take(ofType(typ))
	if !ok {
		s.t.Fatalf("node 2 sent no %v", typ)
	}
	return m
}

// newScriptedMember starts member 2 with an empty log (joining: no Peers) and has member 1,
// leader at term 3, send it a snapshot at index 100 then entry 101.
func newScriptedMember(t *testing.T, dir string) *scriptedMember {
	sm := newKV()
	cfg := testConfig(t, dir, sm)
	cfg.ID, cfg.Peers = 2, nil
	s := &scriptedMember{t: t, sm: sm, tr: &fakeTransport{}, ticks: make(chan time.Time)}
	cfg.Transport, cfg.Ticks = s.tr, s.ticks
	s.r = startNode(t, cfg)

	data, err := (&kv{data: map[string]string{"from-snapshot": "1"}, last: 100}).Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	s.step(raftpb.Message{Type: raftpb.MsgSnap, Term: 3, Snapshot: &raftpb.Snapshot{
		Data:     data,
		Metadata: raftpb.SnapshotMetadata{Index: 100, Term: 3, ConfState: raftpb.ConfState{Voters: []uint64{1, 2}}},
	}})
	if resp := s.expect(raftpb.MsgAppResp); resp.Index != 100 || resp.Reject {
		t.Fatalf("response to the snapshot: %+v", resp)
	}
	s.step(raftpb.Message{Type: raftpb.MsgApp, Term: 3, LogTerm: 3, Index: 100, Commit: 101, Entries: []raftpb.Entry{
		{Term: 3, Index: 101, Data: encodeEnvelope(1, 7, cmd("put", "from-leader", "1"))},
	}})
	if resp := s.expect(raftpb.MsgAppResp); resp.Index != 101 || resp.Reject {
		t.Fatalf("response to the append: %+v", resp)
	}
	return s
}

func TestFollowerInstallsLeaderSnapshotAndRestartsFromIt(t *testing.T) {
	dir := t.TempDir()
	s := newScriptedMember(t, dir)
	if s.sm.restores != 1 || s.r.n.AppliedIndex() != 101 {
		t.Fatalf("after snapshot + entry: %d restores, applied %d", s.sm.restores, s.r.n.AppliedIndex())
	}
	for _, k := range []string{"from-snapshot", "from-leader"} {
		if _, ok := s.sm.get(k); !ok {
			t.Fatalf("%s missing", k)
		}
	}
	if l, _ := s.r.n.Leadership(); l.Leader != 1 || l.IsLeader || l.Term != 3 {
		t.Fatalf("leadership on the follower: %+v", l)
	}
	if err := s.r.n.Propose(context.Background(), cmd("put", "x", "y")); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("Propose on the follower = %v, want ErrNotLeader", err)
	}
	if err := s.r.stop(t); err != nil {
		t.Fatal(err)
	}

	sm2 := newKV()
	cfg := testConfig(t, dir, sm2)
	cfg.ID, cfg.Peers = 2, nil
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if sm2.restores != 1 || n.AppliedIndex() != 100 {
		t.Fatalf("restart: %d restores, applied %d; want the snapshot at 100", sm2.restores, n.AppliedIndex())
	}
	run(t, n)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.WaitApplied(ctx, 101); err != nil {
		t.Fatal(err)
	}
	if _, ok := sm2.get("from-leader"); !ok {
		t.Fatal("entry after the snapshot not re-applied on restart")
	}
}

func TestLeaderIsReadyOnlyAfterApplyingItsTermAndLosingLeadershipFailsWaiters(t *testing.T) {
	s := newScriptedMember(t, t.TempDir())
	n := s.r.n

	// Silence from member 1: node 2 times out and asks for (pre-)votes.
	for i := 0; ; i++ {
		if i == 100 {
			t.Fatal("no pre-vote after 100 ticks")
		}
		s.ticks <- time.Now()
		s.settle()
		if m, ok := s.tr.take(ofType(raftpb.MsgPreVote)); ok {
			s.step(raftpb.Message{Type: raftpb.MsgPreVoteResp, Term: m.Term})
			break
		}
	}
	vote := s.expect(raftpb.MsgVote)
	s.step(raftpb.Message{Type: raftpb.MsgVoteResp, Term: vote.Term})

	l, _ := n.Leadership()
	if !l.IsLeader || l.Ready || l.Term != vote.Term {
		t.Fatalf("after winning the vote: %+v; want leader, not ready (its empty entry is not committed)", l)
	}
	app := s.expect(raftpb.MsgApp)
	last := app.Entries[len(app.Entries)-1]
	s.step(raftpb.Message{Type: raftpb.MsgAppResp, Term: vote.Term, Index: last.Index})
	if l, _ := n.Leadership(); !l.Ready || n.AppliedIndex() != last.Index {
		t.Fatalf("after member 1 acknowledged entry %d: %+v applied %d; want ready", last.Index, l, n.AppliedIndex())
	}

	// A proposal in flight when a newer leader shows up gets ErrLeadershipLost.
	errc := make(chan error, 1)
	go func() { errc <- n.Propose(context.Background(), cmd("put", "lost", "1")) }()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		if _, ok := s.tr.take(func(m raftpb.Message) bool { return m.Type == raftpb.MsgApp && len(m.Entries) > 0 }); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the proposal was not replicated")
		}
	}
	s.step(raftpb.Message{Type: raftpb.MsgHeartbeat, Term: vote.Term + 1})
	select {
	case err := <-errc:
		if !errors.Is(err, ErrLeadershipLost) {
			t.Fatalf("Propose = %v, want ErrLeadershipLost", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Propose still waiting after leadership was lost")
	}
	if l, _ := n.Leadership(); l.IsLeader || l.Ready || l.Leader != 1 {
		t.Fatalf("after a newer leader appeared: %+v", l)
	}
}
