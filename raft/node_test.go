package raft

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/storage/wal"
	"go.etcd.io/raft/v3"
)

// kv is the test state machine: a string map. Commands are "op\x00key\x00value"; op "put"
// overwrites, op "create" fails with errExists when the key is there.
type kv struct {
	mu       sync.Mutex
	data     map[string]string
	last     uint64   // last index applied or restored
	applied  []uint64 // indices passed to Apply
	restores int
	orderErr error
}

var errExists = errors.New("key exists")

func newKV() *kv { return &kv{data: map[string]string{}} }

func cmd(op, key, value string) []byte { return []byte(op + "\x00" + key + "\x00" + value) }

func (s *kv) Apply(index uint64, data []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if index <= s.last && s.orderErr == nil {
		s.orderErr = fmt.Errorf("Apply(%d) after index %d", index, s.last)
	}
	s.last = index
	s.applied = append(s.applied, index)
	parts := strings.SplitN(string(data), "\x00", 3)
	if len(parts) != 3 {
		return fmt.Errorf("bad command %q", data)
	}
	if _, ok := s.data[parts[1]]; ok && parts[0] == "create" {
		return fmt.Errorf("create %s: %w", parts[1], errExists)
	}
	s.data[parts[1]] = parts[2]
	return nil
}

type kvSnapshot struct {
	Last uint64
	Data map[string]string
}

func (s *kv) Snapshot() ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return json.Marshal(kvSnapshot{Last: s.last, Data: s.data})
}

func (s *kv) Restore(b []byte) error {
	var snap kvSnapshot
	if err := json.Unmarshal(b, &snap); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.data, s.last = snap.Data, snap.Last
	s.restores++
	return nil
}

func (s *kv) get(k string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.data[k]
	return v, ok
}

func (s *kv) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.data)
}

func (s *kv) check(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.orderErr != nil {
		t.Fatalf("state machine saw entries out of order: %v", s.orderErr)
	}
}

// logBuffer collects a test's log lines; they are printed if the test fails.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func testLogger(t testing.TB) (*slog.Logger, *logBuffer) {
	lb := &logBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("node log:\n%s", lb.String())
		}
	})
	return slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelInfo})), lb
}

func testConfig(t testing.TB, dir string, sm *kv) Config {
	lg, _ := testLogger(t)
	return Config{ID: 1, Dir: dir, Peers: []raft.Peer{{ID: 1}}, StateMachine: sm, Logger: lg}
}

// runner is a node with Run in a goroutine.
type runner struct {
	n      *Node
	cancel context.CancelFunc
	errc   chan error
	once   sync.Once
	err    error
}

func startNode(t testing.TB, cfg Config) *runner {
	t.Helper()
	n, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return run(t, n)
}

func run(t testing.TB, n *Node) *runner {
	ctx, cancel := context.WithCancel(context.Background())
	r := &runner{n: n, cancel: cancel, errc: make(chan error, 1)}
	go func() { r.errc <- n.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop cancels Run and returns what it returned.
func (r *runner) stop(t testing.TB) error {
	r.once.Do(func() {
		r.cancel()
		select {
		case r.err = <-r.errc:
		case <-time.After(20 * time.Second):
			t.Errorf("Run did not return after cancel")
		}
	})
	return r.err
}

// waitLeaderReady waits until the node leads and has applied its log.
func waitLeaderReady(t testing.TB, n *Node) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		l, changed := n.Leadership()
		if l.Ready {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("node did not become a ready leader: %+v", l)
		}
	}
}

func propose(t testing.TB, n *Node, op, k, v string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := n.Propose(ctx, cmd(op, k, v)); err != nil {
		t.Fatalf("Propose %s %s: %v", op, k, err)
	}
}

// proposeAll proposes keys prefix0..prefix(count-1) from `workers` goroutines.
func proposeAll(t testing.TB, n *Node, prefix string, count, workers int, value string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, count)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < count; i += workers {
				if err := n.Propose(ctx, cmd("put", fmt.Sprintf("%s%d", prefix, i), value)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Propose: %v", err)
	}
}

func requireKeys(t testing.TB, sm *kv, prefix string, count int) {
	t.Helper()
	for i := range count {
		if _, ok := sm.get(fmt.Sprintf("%s%d", prefix, i)); !ok {
			t.Fatalf("key %s%d missing (state has %d keys)", prefix, i, sm.len())
		}
	}
}

// setSegmentSize lowers the WAL's preallocated segment size for one test.
func setSegmentSize(t testing.TB, size int64) {
	old := wal.SegmentSizeBytes
	wal.SegmentSizeBytes = size
	t.Cleanup(func() { wal.SegmentSizeBytes = old })
}

func TestProposalsApplyInOrderAndReturnApplyError(t *testing.T) {
	sm := newKV()
	r := startNode(t, testConfig(t, t.TempDir(), sm))
	waitLeaderReady(t, r.n)

	for i := range 20 {
		propose(t, r.n, "create", fmt.Sprintf("k%d", i), fmt.Sprint(i))
	}
	requireKeys(t, sm, "k", 20)
	sm.check(t)

	err := r.n.Propose(context.Background(), cmd("create", "k3", "again"))
	if !errors.Is(err, errExists) {
		t.Fatalf("Propose of a conflicting create = %v, want the state machine's errExists", err)
	}
	if v, _ := sm.get("k3"); v != "3" {
		t.Fatalf("k3 = %q after a failed create, want 3", v)
	}
	// The failed proposal still consumed a log index and the node goes on.
	propose(t, r.n, "put", "after", "x")
	sm.check(t)
	if got, want := r.n.AppliedIndex(), sm.last; got != want {
		t.Fatalf("AppliedIndex = %d, state machine at %d", got, want)
	}
	if !r.n.IsLeader() || r.n.Leader() != 1 || r.n.Status().Lead != 1 {
		t.Fatalf("single member is not leader: IsLeader=%v Leader=%d Status.Lead=%d", r.n.IsLeader(), r.n.Leader(), r.n.Status().Lead)
	}

	big := make([]byte, DefaultMaxProposalBytes+1)
	if err := r.n.Propose(context.Background(), big); !errors.Is(err, ErrProposalTooLarge) {
		t.Fatalf("Propose(%d bytes) = %v, want ErrProposalTooLarge", len(big), err)
	}

	if err := r.stop(t); err != nil {
		t.Fatalf("Run returned %v, want nil", err)
	}
	if err := r.n.Propose(context.Background(), cmd("put", "late", "x")); !errors.Is(err, ErrStopped) {
		t.Fatalf("Propose after stop = %v, want ErrStopped", err)
	}
}

func TestProposeOnNonLeaderFailsWithErrNotLeader(t *testing.T) {
	sm := newKV()
	cfg := testConfig(t, t.TempDir(), sm)
	cfg.Peers = []raft.Peer{{ID: 1}, {ID: 2}, {ID: 3}} // no transport: never elected
	r := startNode(t, cfg)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.n.WaitApplied(ctx, 3); err != nil { // the three bootstrap conf changes
		t.Fatalf("WaitApplied: %v", err)
	}
	if err := r.n.Propose(ctx, cmd("put", "k", "v")); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("Propose on a follower = %v, want ErrNotLeader", err)
	}
	if r.n.IsLeader() || sm.len() != 0 {
		t.Fatalf("follower leads or applied a proposal")
	}
}

func TestConcurrentProposalsShareOneFsync(t *testing.T) {
	sm := newKV()
	r := startNode(t, testConfig(t, t.TempDir(), sm))
	waitLeaderReady(t, r.n)

	// Hold the loop while the proposals queue up, as a long fsync would.
	blocked, release := make(chan struct{}), make(chan struct{})
	go func() {
		_ = r.n.inLoop(context.Background(), func() error { close(blocked); <-release; return nil })
	}()
	<-blocked
	const count = 200
	before := r.n.Stats()
	errs := make(chan error, count)
	for i := range count {
		go func() { errs <- r.n.Propose(context.Background(), cmd("put", fmt.Sprintf("c%d", i), "v")) }()
	}
	for deadline := time.Now().Add(10 * time.Second); len(r.n.propc) < count; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d proposals queued", len(r.n.propc), count)
		}
	}
	close(release)
	for range count {
		if err := <-errs; err != nil {
			t.Fatalf("Propose: %v", err)
		}
	}
	after := r.n.Stats()
	requireKeys(t, sm, "c", count)
	if got := after.Proposals - before.Proposals; got != count {
		t.Fatalf("Stats.Proposals grew by %d, want %d", got, count)
	}
	if syncs := after.WALSyncs - before.WALSyncs; syncs != 1 {
		t.Fatalf("%d queued proposals took %d WAL fsyncs, want 1", count, syncs)
	}
	t.Logf("%d proposals: %d Readys, %d fsync", count, after.Readys-before.Readys, after.WALSyncs-before.WALSyncs)
}

func TestRestartReappliesCommittedLogBeforeLeadershipIsReady(t *testing.T) {
	dir := t.TempDir()
	sm := newKV()
	r := startNode(t, testConfig(t, dir, sm))
	waitLeaderReady(t, r.n)
	proposeAll(t, r.n, "r", 50, 4, "v")
	applied := r.n.AppliedIndex()
	if err := r.stop(t); err != nil {
		t.Fatalf("Run: %v", err)
	}

	for round := range 2 {
		sm2 := newKV()
		n, err := New(testConfig(t, dir, sm2))
		if err != nil {
			t.Fatalf("restart %d: New: %v", round, err)
		}
		if n.AppliedIndex() != 0 || sm2.len() != 0 {
			t.Fatalf("New applied entries before Run (no snapshot exists)")
		}
		r2 := run(t, n)
		waitLeaderReady(t, n)
		// Ready implies the whole log committed before the restart is applied.
		requireKeys(t, sm2, "r", 50)
		if n.AppliedIndex() <= applied {
			t.Fatalf("AppliedIndex %d after restart, want > %d (old log plus the new leader's entry)", n.AppliedIndex(), applied)
		}
		sm2.check(t)
		propose(t, n, "put", fmt.Sprintf("after%d", round), "v")
		applied = n.AppliedIndex()
		if err := r2.stop(t); err != nil {
			t.Fatalf("Run: %v", err)
		}
	}
}

func TestSnapshotCompactsLogAndRestartStartsFromIt(t *testing.T) {
	setSegmentSize(t, 16<<10)
	dir := t.TempDir()
	sm := newKV()
	cfg := testConfig(t, dir, sm)
	cfg.SnapshotInterval, cfg.LogEntriesForSlowFollowers = 50, 10
	r := startNode(t, cfg)
	waitLeaderReady(t, r.n)
	value := strings.Repeat("x", 256)
	proposeAll(t, r.n, "s", 400, 8, value)

	snaps, err := snapFiles(filepath.Join(dir, snapSubdir))
	if err != nil || len(snaps) != keepSnapshots {
		t.Fatalf("snapshot files = %v (%v), want %d", snaps, err, keepSnapshots)
	}
	names, err := walNames(filepath.Join(dir, walSubdir))
	if err != nil {
		t.Fatal(err)
	}
	if names[0] == "0000000000000000-0000000000000000.wal" {
		t.Fatalf("the first WAL segment was not released after compaction: %v", names)
	}
	first, _ := r.n.ms.FirstIndex()
	if want := snaps[len(snaps)-1].index - cfg.LogEntriesForSlowFollowers + 1; first != want {
		t.Fatalf("memory storage first index = %d, want %d (snapshot - LogEntriesForSlowFollowers + 1)", first, want)
	}
	if err := r.stop(t); err != nil {
		t.Fatalf("Run: %v", err)
	}

	// Restart: the state comes from the newest snapshot, then the log tail after it.
	newest := snaps[len(snaps)-1].index
	sm2 := newKV()
	cfg2 := cfg
	cfg2.StateMachine = sm2
	n, err := New(cfg2)
	if err != nil {
		t.Fatalf("New after compaction: %v", err)
	}
	if sm2.restores != 1 || n.AppliedIndex() != newest {
		t.Fatalf("after New: %d restores, AppliedIndex %d; want 1 restore at snapshot %d", sm2.restores, n.AppliedIndex(), newest)
	}
	run(t, n)
	waitLeaderReady(t, n)
	requireKeys(t, sm2, "s", 400)
	sm2.check(t)
	sm2.mu.Lock()
	defer sm2.mu.Unlock()
	if len(sm2.applied) == 0 || sm2.applied[0] <= newest {
		t.Fatalf("re-applied entries %v, want only entries after snapshot %d", sm2.applied, newest)
	}
}

func TestWaitAppliedAndLeadershipWatch(t *testing.T) {
	sm := newKV()
	n, err := New(testConfig(t, t.TempDir(), sm))
	if err != nil {
		t.Fatal(err)
	}
	l, changed := n.Leadership()
	if l.IsLeader || l.Ready {
		t.Fatalf("leader before Run: %+v", l)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := n.WaitApplied(ctx, 1); !errors.Is(err, context.Canceled) {
		t.Fatalf("WaitApplied with a cancelled ctx = %v", err)
	}
	if err := n.Propose(ctx, cmd("put", "cancelled", "1")); !errors.Is(err, context.Canceled) {
		t.Fatalf("Propose with a cancelled ctx = %v", err)
	}
	r := run(t, n)
	select {
	case <-changed:
	case <-time.After(20 * time.Second):
		t.Fatal("leadership change not signalled")
	}
	waitLeaderReady(t, n)
	propose(t, n, "put", "a", "1")
	if err := n.WaitApplied(context.Background(), n.CommittedIndex()); err != nil {
		t.Fatalf("WaitApplied(committed): %v", err)
	}
	if _, ok := sm.get("cancelled"); ok {
		t.Fatal("a proposal cancelled before it reached raft was applied")
	}
	_ = r.stop(t)
	if l := n.leadership.Load(); l.IsLeader || l.Ready {
		t.Fatalf("still leader after Run returned: %+v", l)
	}
	if err := n.WaitApplied(context.Background(), n.AppliedIndex()+1); !errors.Is(err, ErrStopped) {
		t.Fatalf("WaitApplied after stop = %v, want ErrStopped", err)
	}
	if st := n.Status(); st.ID != 1 {
		t.Fatalf("Status after stop: %+v", st)
	}
}

func TestEnvelopeRoundTrip(t *testing.T) {
	for _, payload := range [][]byte{nil, {}, []byte("x"), bytes.Repeat([]byte{0xff}, 1000)} {
		p, id, got, err := decodeEnvelope(encodeEnvelope(7, 1<<63+5, payload))
		if err != nil || p != 7 || id != 1<<63+5 || !bytes.Equal(got, payload) {
			t.Fatalf("round trip of %d bytes: %d %d %d bytes %v", len(payload), p, id, len(got), err)
		}
	}
	for _, bad := range [][]byte{nil, {2, 1, 1}, {1}, {1, 0x80}} {
		if _, _, _, err := decodeEnvelope(bad); !errors.Is(err, errBadEnvelope) {
			t.Fatalf("decodeEnvelope(%x) = %v, want errBadEnvelope", bad, err)
		}
	}
}

func TestNewRejectsAnotherMembersLog(t *testing.T) {
	dir := t.TempDir()
	r := startNode(t, testConfig(t, dir, newKV()))
	waitLeaderReady(t, r.n)
	_ = r.stop(t)
	cfg := testConfig(t, dir, newKV())
	cfg.ID = 2
	if _, err := New(cfg); err == nil {
		t.Fatal("New with raft ID 2 opened the log of member 1")
	}
	// And a log in use by a running node is refused too.
	r = startNode(t, testConfig(t, dir, newKV()))
	waitLeaderReady(t, r.n)
	if _, err := New(testConfig(t, dir, newKV())); err == nil {
		t.Fatal("New opened a log that a running node holds")
	}
}
