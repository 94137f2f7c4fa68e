package dispatcher_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gogo/protobuf/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/api/defaults"
	"github.com/flotilla/flotilla/api/identity"
	"github.com/flotilla/flotilla/manager/dispatcher"
	"github.com/flotilla/flotilla/manager/store"
	"github.com/flotilla/flotilla/manager/store/storetest"
)

const period = defaults.HeartbeatPeriod

// nodeIDKey carries the caller's node ID in tests, where the manager would
// read it from the peer's certificate.
const nodeIDKey = "node-id"

func identify(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(nodeIDKey); len(v) == 1 && v[0] != "" {
		return v[0], nil
	}
	return "", status.Error(codes.Unauthenticated, "no node ID")
}

func as(nodeID string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), nodeIDKey, nodeID)
}

var start = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

type harness struct {
	store    *store.MemoryStore
	prop     *storetest.Proposer
	clock    *dispatcher.FakeClock
	d        *dispatcher.Dispatcher
	client   api.DispatcherClient
	managers atomic.Pointer[[]*api.WeightedPeer]
	stopRun  context.CancelFunc
	runErr   chan error
}

type options struct {
	realClock bool
	hook      func(s *store.MemoryStore, tr *api.StoreTransaction) []api.StoreAction
	gate      func(tr *api.StoreTransaction)
}

type option func(*options)

func withRealClock() option { return func(o *options) { o.realClock = true } }

// withProposerHook makes the store commit the actions hook returns just
// before a proposal (to make it lose a race deterministically).
func withProposerHook(hook func(s *store.MemoryStore, tr *api.StoreTransaction) []api.StoreAction) option {
	return func(o *options) { o.hook = hook }
}

// withProposerGate calls gate with every transaction before it is
// proposed, outside the proposer's lock: a gate that blocks holds up that
// proposal (and its proposer) while other writers go on.
func withProposerGate(gate func(tr *api.StoreTransaction)) option {
	return func(o *options) { o.gate = gate }
}

// hookProposer is storetest's proposer with a hook and a gate.
type hookProposer struct {
	mu    sync.Mutex
	index uint64
	s     *store.MemoryStore
	hook  func(s *store.MemoryStore, tr *api.StoreTransaction) []api.StoreAction
	gate  func(tr *api.StoreTransaction)
}

func (p *hookProposer) Propose(_ context.Context, data []byte) error {
	var tr api.StoreTransaction
	if err := tr.Unmarshal(data); err != nil {
		return err
	}
	if p.gate != nil {
		p.gate(&tr)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.hook == nil {
		p.index++
		return p.s.Apply(p.index, data)
	}
	if pre := p.hook(p.s, &tr); pre != nil {
		b, err := (&api.StoreTransaction{Actions: pre}).Marshal()
		if err != nil {
			return err
		}
		p.index++
		if err := p.s.Apply(p.index, b); err != nil {
			return err
		}
	}
	p.index++
	return p.s.Apply(p.index, data)
}

// newHarness serves a dispatcher over real gRPC on loopback TCP, with a
// store holding the cluster object. Run is not started.
func newHarness(t testing.TB, opts ...option) *harness {
	t.Helper()
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	var (
		s *store.MemoryStore
		p *storetest.Proposer
	)
	if o.hook != nil || o.gate != nil {
		hp := &hookProposer{hook: o.hook, gate: o.gate}
		s = store.New(hp)
		hp.s = s
	} else {
		s, p = storetest.New()
	}
	err := s.Update(context.Background(), func(tx store.Tx) error {
		if err := tx.Create(&api.Node{ID: "barrier"}); err != nil {
			return err
		}
		return tx.Create(&api.Cluster{ID: identity.NewID(), Spec: defaults.ClusterSpec()})
	})
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{store: s, prop: p, clock: dispatcher.NewFakeClock(start)}
	h.managers.Store(&[]*api.WeightedPeer{{NodeID: "m1", Addr: "10.0.0.1:4242", Weight: 1}})
	cfg := dispatcher.Config{
		Store:    s,
		Identify: identify,
		Managers: func() []*api.WeightedPeer { return *h.managers.Load() },
		Leader:   func() string { return "10.0.0.9:4242" },
		Clock:    h.clock,
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if o.realClock {
		cfg.Clock = nil
	}
	h.d = dispatcher.New(cfg)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	api.RegisterDispatcherServer(srv, h.d)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	h.client = api.NewDispatcherClient(conn)
	return h
}

// run starts Run and waits until it serves.
func (h *harness) run(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	h.stopRun = cancel
	h.runErr = make(chan error, 1)
	go func() { h.runErr <- h.d.Run(ctx) }()
	t.Cleanup(func() { h.stop(t) })
	waitFor(t, "dispatcher to run", func() bool {
		_, err := h.client.Heartbeat(as("probe"), &api.HeartbeatRequest{SessionID: "none"})
		return status.Code(err) == codes.NotFound
	})
}

// stop ends Run and checks it returned nil.
func (h *harness) stop(t testing.TB) {
	t.Helper()
	if h.stopRun == nil {
		return
	}
	h.stopRun()
	h.stopRun = nil
	select {
	case err := <-h.runErr:
		if err != nil {
			t.Errorf("Run returned %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}

func (h *harness) addNode(t testing.TB, id string, st api.NodeStatus_State) {
	t.Helper()
	err := h.store.Update(context.Background(), func(tx store.Tx) error {
		return tx.Create(&api.Node{ID: id, Status: api.NodeStatus{State: st}})
	})
	if err != nil {
		t.Fatal(err)
	}
}

func (h *harness) node(t testing.TB, id string) *api.Node {
	t.Helper()
	var n *api.Node
	h.store.View(func(tx store.ReadTx) { n = store.Get[*api.Node](tx, id) })
	if n == nil {
		t.Fatalf("node %s is not in the store", id)
	}
	return n
}

func (h *harness) state(t testing.TB, id string) api.NodeStatus_State {
	t.Helper()
	return h.node(t, id).Status.State
}

// proposals counts the store's proposals so far. Call it once the store
// shows the effect of the last write (the View that saw it orders the count).
func (h *harness) proposals() int {
	h.store.View(func(store.ReadTx) {})
	return h.prop.Proposals
}

type session struct {
	id     string
	stream api.Dispatcher_SessionClient
	first  *api.SessionMessage
	cancel context.CancelFunc
}

// open opens a session for nodeID and returns it with its first message.
func (h *harness) open(t testing.TB, nodeID string, desc *api.NodeDescription) *session {
	t.Helper()
	ctx, cancel := context.WithCancel(as(nodeID))
	t.Cleanup(cancel)
	stream, err := h.client.Session(ctx, &api.SessionRequest{Description: desc})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := stream.Recv()
	if err != nil {
		t.Fatalf("session of %s: first message: %v", nodeID, err)
	}
	return &session{id: msg.SessionID, stream: stream, first: msg, cancel: cancel}
}

func (h *harness) heartbeat(nodeID, sessionID string) (time.Duration, error) {
	resp, err := h.client.Heartbeat(as(nodeID), &api.HeartbeatRequest{SessionID: sessionID})
	if err != nil {
		return 0, err
	}
	return types.DurationFromProto(resp.Period)
}

// barrier returns once Run has gone through its loop after every clock
// change made so far: a registration is written by Run, after the scan for
// expired nodes that the same pass makes. It uses a node of its own (made by
// newHarness), whose record changes only the first time (one store write).
func (h *harness) barrier(t testing.TB) {
	t.Helper()
	s := h.open(t, "barrier", nil)
	s.cancel()
}

// waitFor polls cond until it holds or a deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func wantCode(t testing.TB, err error, code codes.Code, msgPart string) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != code || !strings.Contains(st.Message(), msgPart) {
		t.Fatalf("got %v %q, want %v containing %q", st.Code(), st.Message(), code, msgPart)
	}
}

// ended waits for the session's stream to end and returns its error.
func (s *session) ended(t testing.TB) error {
	t.Helper()
	for {
		_, err := s.stream.Recv()
		if err != nil {
			return err
		}
	}
}

func TestRegisterMakesNodeReadyWithDescriptionAndAddr(t *testing.T) {
	h := newHarness(t)
	err := h.store.Update(context.Background(), func(tx store.Tx) error {
		return tx.Create(&api.Node{ID: "n1",
			Description: &api.NodeDescription{Hostname: "old", TLSInfo: &api.NodeTLSInfo{TrustRoot: []byte("root")}},
			Status:      api.NodeStatus{State: api.NodeStatusDown, Message: dispatcher.DownMessage}})
	})
	if err != nil {
		t.Fatal(err)
	}
	h.run(t)
	desc := &api.NodeDescription{Hostname: "host1", Platform: &api.Platform{OS: "linux", Architecture: "amd64"}}
	s := h.open(t, "n1", desc)

	if s.id == "" {
		t.Fatal("first message has no session ID")
	}
	if s.first.Node == nil || s.first.Node.ID != "n1" || s.first.Node.Status.State != api.NodeStatusReady {
		t.Fatalf("first message's node: %+v", s.first.Node)
	}
	if len(s.first.Managers) != 1 || s.first.Managers[0].NodeID != "m1" || s.first.Managers[0].Addr != "10.0.0.1:4242" {
		t.Fatalf("first message's managers: %v", s.first.Managers)
	}
	n := h.node(t, "n1")
	if n.Status.State != api.NodeStatusReady || n.Status.Message != "" || n.Status.Addr != "127.0.0.1" {
		t.Fatalf("node status after register: %+v", n.Status)
	}
	if n.Description.Hostname != "host1" || n.Description.Platform.OS != "linux" {
		t.Fatalf("node description after register: %+v", n.Description)
	}
	if n.Description.TLSInfo == nil || string(n.Description.TLSInfo.TrustRoot) != "root" {
		t.Fatalf("register dropped the TLS info the CA recorded: %+v", n.Description)
	}
	if got := s.first.Node.Meta.Version; got != n.Meta.Version {
		t.Fatalf("first message carries node version %d, store has %d", got, n.Meta.Version)
	}
	if p, err := h.heartbeat("n1", s.id); err != nil || p != period {
		t.Fatalf("heartbeat: %v, %v; want %v", p, err, period)
	}
}

func TestUnknownNodeIsRefused(t *testing.T) {
	h := newHarness(t)
	h.run(t)
	stream, err := h.client.Session(as("ghost"), &api.SessionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	wantCode(t, err, codes.NotFound, "node ghost is not a member of this cluster (was it removed?)")

	// Identify's error goes back as it is.
	stream, err = h.client.Session(context.Background(), &api.SessionRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	wantCode(t, err, codes.Unauthenticated, "no node ID")
}

func TestHeartbeatsKeepNodeReadyAndSilenceMarksItDown(t *testing.T) {
	h := newHarness(t)
	h.addNode(t, "n1", api.NodeStatusUnknown)
	h.run(t)
	s := h.open(t, "n1", nil)

	for i := 0; i < 20; i++ {
		h.clock.Advance(period)
		p, err := h.heartbeat("n1", s.id)
		if err != nil || p != period {
			t.Fatalf("heartbeat %d: %v, %v", i, p, err)
		}
	}
	h.barrier(t)
	if st := h.state(t, "n1"); st != api.NodeStatusReady {
		t.Fatalf("after 20 periods of heartbeats: %v", st)
	}

	// Silence: 2.9 periods are tolerated...
	h.clock.Advance(29 * period / 10)
	h.barrier(t)
	if st := h.state(t, "n1"); st != api.NodeStatusReady {
		t.Fatalf("after 2.9 silent periods: %v, want READY", st)
	}
	// ...3 are not.
	h.clock.Advance(period / 10)
	waitFor(t, "n1 DOWN", func() bool { return h.state(t, "n1") == api.NodeStatusDown })
	if msg := h.node(t, "n1").Status.Message; msg != dispatcher.DownMessage {
		t.Fatalf("DOWN message %q", msg)
	}
	wantCode(t, s.ended(t), codes.DeadlineExceeded, "marked DOWN")
	_, err := h.heartbeat("n1", s.id)
	wantCode(t, err, codes.NotFound, "session "+s.id+" is not valid: open a new session")
}

func TestNodesExpiringTogetherAreMarkedDownInOneTransaction(t *testing.T) {
	h := newHarness(t)
	const n = 50
	for i := 0; i < n; i++ {
		h.addNode(t, fmt.Sprintf("n%02d", i), api.NodeStatusUnknown)
	}
	h.run(t)
	sessions := make([]*session, n)
	for i := range sessions {
		sessions[i] = h.open(t, fmt.Sprintf("n%02d", i), nil)
	}
	before := h.proposals()

	h.clock.Advance(dispatcher.MissedHeartbeats * period)
	waitFor(t, "every node DOWN", func() bool {
		for i := 0; i < n; i++ {
			if h.state(t, fmt.Sprintf("n%02d", i)) != api.NodeStatusDown {
				return false
			}
		}
		return true
	})
	if got := h.proposals() - before; got != 1 {
		t.Fatalf("%d nodes expiring together took %d store proposals, want 1", n, got)
	}
	for _, s := range sessions {
		wantCode(t, s.ended(t), codes.DeadlineExceeded, "marked DOWN")
	}
}

func TestNodesDyingOneAfterAnotherAreCoalesced(t *testing.T) {
	h := newHarness(t)
	for i := 0; i < 3; i++ {
		h.addNode(t, fmt.Sprintf("n%d", i), api.NodeStatusUnknown)
	}
	h.run(t)
	h.open(t, "n0", nil)
	h.clock.Advance(10 * time.Millisecond)
	h.open(t, "n1", nil)
	h.clock.Advance(10 * time.Millisecond)
	h.open(t, "n2", nil)
	before := h.proposals()

	// n0 expires first and is written at once; n1 and n2 expire within the
	// next DownFlushInterval and are written together when it ends.
	h.clock.Advance(dispatcher.MissedHeartbeats*period - 20*time.Millisecond)
	waitFor(t, "n0 DOWN", func() bool { return h.state(t, "n0") == api.NodeStatusDown })
	h.clock.Advance(20 * time.Millisecond)
	h.barrier(t)
	if h.state(t, "n1") != api.NodeStatusReady || h.state(t, "n2") != api.NodeStatusReady {
		t.Fatal("n1/n2 written DOWN before the flush interval ended")
	}
	h.clock.Advance(dispatcher.DownFlushInterval)
	waitFor(t, "n1, n2 DOWN", func() bool {
		return h.state(t, "n1") == api.NodeStatusDown && h.state(t, "n2") == api.NodeStatusDown
	})
	// n0's write, the barrier node's READY write, n1+n2's write.
	if got := h.proposals() - before; got != 3 {
		t.Fatalf("%d proposals, want 3", got)
	}
}

func TestNodeRegisteringAgainAfterDownIsReady(t *testing.T) {
	h := newHarness(t)
	h.addNode(t, "n1", api.NodeStatusUnknown)
	h.run(t)
	s := h.open(t, "n1", nil)
	h.clock.Advance(dispatcher.MissedHeartbeats * period)
	waitFor(t, "n1 DOWN", func() bool { return h.state(t, "n1") == api.NodeStatusDown })
	s.ended(t)

	s2 := h.open(t, "n1", nil)
	if s2.first.Node.Status.State != api.NodeStatusReady || h.state(t, "n1") != api.NodeStatusReady {
		t.Fatalf("re-registered node: %v", h.node(t, "n1").Status)
	}
	if s2.id == s.id {
		t.Fatal("new session reused the old session ID")
	}
	if _, err := h.heartbeat("n1", s2.id); err != nil {
		t.Fatal(err)
	}
}

func TestAgentGoneLeavesNodeReadyUntilItExpires(t *testing.T) {
	h := newHarness(t)
	h.addNode(t, "n1", api.NodeStatusUnknown)
	h.run(t)
	s := h.open(t, "n1", nil)
	s.cancel()
	waitFor(t, "the session ID to be dropped", func() bool {
		_, err := h.heartbeat("n1", s.id)
		return status.Code(err) == codes.NotFound
	})
	h.clock.Advance(dispatcher.MissedHeartbeats*period - time.Millisecond)
	h.barrier(t)
	if st := h.state(t, "n1"); st != api.NodeStatusReady {
		t.Fatalf("node whose stream closed is %v before 3 periods", st)
	}
	h.clock.Advance(time.Millisecond)
	waitFor(t, "n1 DOWN", func() bool { return h.state(t, "n1") == api.NodeStatusDown })
}

func TestDownWriteLosingARaceIsRetried(t *testing.T) {
	var raced atomic.Bool
	h := newHarness(t, withProposerHook(func(s *store.MemoryStore, tr *api.StoreTransaction) []api.StoreAction {
		for _, a := range tr.Actions {
			n := a.Target.GetNode()
			if n == nil || n.ID != "n1" || n.Status.State != api.NodeStatusDown || !raced.CompareAndSwap(false, true) {
				continue
			}
			// An operator labels the node just before the DOWN write lands.
			var cur *api.Node
			s.View(func(tx store.ReadTx) { cur = store.Get[*api.Node](tx, "n1") })
			cur.Spec.Annotations.Labels = map[string]string{"zone": "a"}
			return []api.StoreAction{{Kind: api.StoreActionKindUpdate, Target: api.NewObject(cur)}}
		}
		return nil
	}))
	h.addNode(t, "n1", api.NodeStatusUnknown)
	h.addNode(t, "n2", api.NodeStatusUnknown)
	h.run(t)
	h.open(t, "n1", nil)
	h.open(t, "n2", nil)
	h.clock.Advance(dispatcher.MissedHeartbeats * period)
	waitFor(t, "n1 and n2 DOWN", func() bool {
		return h.state(t, "n1") == api.NodeStatusDown && h.state(t, "n2") == api.NodeStatusDown
	})
	if !raced.Load() {
		t.Fatal("the hook did not run")
	}
	if h.node(t, "n1").Spec.Annotations.Labels["zone"] != "a" {
		t.Fatal("the operator's change was lost")
	}
}

func TestStoreRestoreReconcilesSessions(t *testing.T) {
	h := newHarness(t)
	h.addNode(t, "n2", api.NodeStatusUnknown)
	snap, err := h.store.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	h.addNode(t, "n1", api.NodeStatusUnknown)
	h.run(t)
	s1 := h.open(t, "n1", nil)
	s2 := h.open(t, "n2", nil)
	if err := h.store.Restore(snap); err != nil {
		t.Fatal(err)
	}
	wantCode(t, s1.ended(t), codes.NotFound, "node n1 was removed from the cluster")
	if _, err := h.heartbeat("n2", s2.id); err != nil {
		t.Fatalf("n2's session after the restore: %v", err)
	}
}

func TestNewSessionReplacesOldOne(t *testing.T) {
	h := newHarness(t)
	h.addNode(t, "n1", api.NodeStatusUnknown)
	h.run(t)
	s1 := h.open(t, "n1", nil)
	s2 := h.open(t, "n1", nil)

	wantCode(t, s1.ended(t), codes.Aborted, "replaced by a newer session")
	_, err := h.heartbeat("n1", s1.id)
	wantCode(t, err, codes.NotFound, "session "+s1.id+" is not valid")
	if _, err := h.heartbeat("n1", s2.id); err != nil {
		t.Fatalf("heartbeat on the new session: %v", err)
	}
	// Another node cannot use n1's session.
	h.addNode(t, "n2", api.NodeStatusUnknown)
	_, err = h.heartbeat("n2", s2.id)
	wantCode(t, err, codes.NotFound, "is not valid")
}

func TestRemovedNodeSessionEnds(t *testing.T) {
	h := newHarness(t)
	h.addNode(t, "n1", api.NodeStatusUnknown)
	h.run(t)
	s := h.open(t, "n1", nil)
	err := h.store.Update(context.Background(), func(tx store.Tx) error { return tx.Delete(api.KindNode, "n1") })
	if err != nil {
		t.Fatal(err)
	}
	wantCode(t, s.ended(t), codes.NotFound, "node n1 was removed from the cluster")
	_, err = h.heartbeat("n1", s.id)
	wantCode(t, err, codes.NotFound, "is not valid")
}

func TestNodeUpdateIsSentOnSession(t *testing.T) {
	h := newHarness(t)
	h.addNode(t, "n1", api.NodeStatusUnknown)
	h.run(t)
	s := h.open(t, "n1", nil)
	err := h.store.Update(context.Background(), func(tx store.Tx) error {
		n := store.Get[*api.Node](tx, "n1")
		n.Spec.Availability = api.NodeAvailabilityDrain
		n.Spec.Annotations.Labels = map[string]string{"zone": "a"}
		return tx.Update(n)
	})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := s.stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if msg.SessionID != s.id || msg.Node.Spec.Availability != api.NodeAvailabilityDrain ||
		msg.Node.Spec.Annotations.Labels["zone"] != "a" || len(msg.Managers) != 1 {
		t.Fatalf("update message: %+v", msg)
	}
	if msg.Node.Meta.Version <= s.first.Node.Meta.Version {
		t.Fatalf("update carries version %d, first message had %d", msg.Node.Meta.Version, s.first.Node.Meta.Version)
	}
}

func TestManagersChangeIsSentOnSession(t *testing.T) {
	h := newHarness(t)
	h.addNode(t, "n1", api.NodeStatusUnknown)
	h.run(t)
	s := h.open(t, "n1", nil)
	h.managers.Store(&[]*api.WeightedPeer{
		{NodeID: "m2", Addr: "10.0.0.2:4242", Weight: 1},
		{NodeID: "m1", Addr: "10.0.0.1:4242", Weight: 1},
	})
	// A change to a manager node makes the dispatcher look again.
	err := h.store.Update(context.Background(), func(tx store.Tx) error {
		return tx.Create(&api.Node{ID: "m2", Role: api.NodeRoleManager})
	})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := s.stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(msg.Managers) != 2 || msg.Managers[0].NodeID != "m2" || msg.Node.ID != "n1" {
		t.Fatalf("managers update: %+v", msg)
	}
}

func TestHeartbeatPeriodFollowsClusterSpec(t *testing.T) {
	h := newHarness(t)
	h.addNode(t, "n1", api.NodeStatusUnknown)
	h.run(t)
	s := h.open(t, "n1", nil)
	if p, err := h.heartbeat("n1", s.id); err != nil || p != period {
		t.Fatalf("heartbeat: %v %v", p, err)
	}
	const short = 2 * time.Second
	err := h.store.Update(context.Background(), func(tx store.Tx) error {
		cs, err := store.Find[*api.Cluster](tx, store.All())
		if err != nil {
			return err
		}
		cs[0].Spec.Dispatcher.HeartbeatPeriod = types.DurationProto(short)
		return tx.Update(cs[0])
	})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the new period in heartbeat responses", func() bool {
		p, err := h.heartbeat("n1", s.id)
		return err == nil && p == short
	})
	// The node's expiry now follows the short period.
	h.clock.Advance(dispatcher.MissedHeartbeats*short - time.Millisecond)
	h.barrier(t)
	if st := h.state(t, "n1"); st != api.NodeStatusReady {
		t.Fatalf("before 3 short periods: %v", st)
	}
	h.clock.Advance(time.Millisecond)
	waitFor(t, "n1 DOWN after 3 short periods", func() bool { return h.state(t, "n1") == api.NodeStatusDown })
}

func TestNewLeaderGivesReadyNodesAGracePeriod(t *testing.T) {
	h := newHarness(t) // default grace: DefaultGraceMultiplier periods
	grace := dispatcher.DefaultGraceMultiplier * period
	for _, id := range []string{"live", "gone1", "gone2", "gone3"} {
		h.addNode(t, id, api.NodeStatusReady)
	}
	h.addNode(t, "down", api.NodeStatusDown)
	h.run(t)
	s := h.open(t, "live", nil)

	// Well past the usual 3 periods, short of the grace period: nothing
	// is marked DOWN, and the live node heartbeats as usual.
	for elapsed := time.Duration(0); elapsed+period < grace; elapsed += period {
		h.clock.Advance(period)
		if _, err := h.heartbeat("live", s.id); err != nil {
			t.Fatal(err)
		}
	}
	h.clock.Set(start.Add(grace - time.Millisecond))
	h.barrier(t)
	before := h.proposals()
	for _, id := range []string{"live", "gone1", "gone2", "gone3"} {
		if st := h.state(t, id); st != api.NodeStatusReady {
			t.Fatalf("%s is %v before the grace period ended", id, st)
		}
	}

	h.clock.Set(start.Add(grace))
	waitFor(t, "silent nodes DOWN after the grace period", func() bool {
		return h.state(t, "gone1") == api.NodeStatusDown && h.state(t, "gone2") == api.NodeStatusDown &&
			h.state(t, "gone3") == api.NodeStatusDown
	})
	if got := h.proposals() - before; got != 1 {
		t.Fatalf("grace expiry took %d proposals, want 1", got)
	}
	if st := h.state(t, "live"); st != api.NodeStatusReady {
		t.Fatalf("heartbeating node is %v", st)
	}
	if msg := h.node(t, "down").Status.Message; msg != "" {
		t.Fatalf("node already DOWN was written again: %q", msg)
	}
}

func TestRunStopEndsSessionsUnavailable(t *testing.T) {
	h := newHarness(t)
	h.addNode(t, "n1", api.NodeStatusUnknown)

	// Before Run: Unavailable.
	_, err := h.heartbeat("n1", "x")
	wantCode(t, err, codes.Unavailable, "not the leader")

	h.run(t)
	s := h.open(t, "n1", nil)
	h.stop(t)
	wantCode(t, s.ended(t), codes.Unavailable, "this manager is no longer the leader; reconnect")
	_, err = h.heartbeat("n1", s.id)
	wantCode(t, err, codes.Unavailable, "not the leader")
	stream, err := h.client.Session(as("n1"), &api.SessionRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	wantCode(t, err, codes.Unavailable, "not the leader")
	if hint := stream.Trailer().Get(api.LeaderTrailer); len(hint) != 1 || hint[0] != "10.0.0.9:4242" {
		t.Fatalf("refusal names the leader as %v, want 10.0.0.9:4242", hint)
	}
	// A node this (not leading) manager does not know is not told it was
	// removed: the leader decides that.
	if stream, err = h.client.Session(as("stranger"), &api.SessionRequest{}); err == nil {
		_, err = stream.Recv()
	}
	wantCode(t, err, codes.Unavailable, "not the leader")
	if st := h.state(t, "n1"); st != api.NodeStatusReady {
		t.Fatalf("stopping the dispatcher changed the node: %v", st)
	}

	// Leading again: the old session is gone, a new one works.
	h.run(t)
	_, err = h.heartbeat("n1", s.id)
	wantCode(t, err, codes.NotFound, "is not valid")
	s2 := h.open(t, "n1", nil)
	if _, err := h.heartbeat("n1", s2.id); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkHeartbeats measures one heartbeat with 1000 registered sessions:
// the handler alone (direct, and from many goroutines at once), and the whole
// RPC over loopback gRPC.
func BenchmarkHeartbeats(b *testing.B) {
	const nodes = 1000
	h := newHarness(b)
	for i := 0; i < nodes; i++ {
		h.addNode(b, fmt.Sprintf("n%04d", i), api.NodeStatusUnknown)
	}
	h.run(b)
	ids := make([]string, nodes)
	for i := range ids {
		ids[i] = h.open(b, fmt.Sprintf("n%04d", i), nil).id
	}
	ctxs := make([]context.Context, nodes)
	for i := range ctxs {
		ctxs[i] = metadata.NewIncomingContext(context.Background(),
			metadata.Pairs(nodeIDKey, fmt.Sprintf("n%04d", i)))
	}
	report := func(b *testing.B) {
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/heartbeat")
	}

	b.Run("direct", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, err := h.d.Heartbeat(ctxs[i], &api.HeartbeatRequest{SessionID: ids[i]}); err != nil {
				b.Fatal(err)
			}
			i = (i + 1) % nodes
		}
		report(b)
	})
	b.Run("direct-parallel", func(b *testing.B) {
		b.ReportAllocs()
		var next atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			i := int(next.Add(97)) % nodes
			for pb.Next() {
				if _, err := h.d.Heartbeat(ctxs[i], &api.HeartbeatRequest{SessionID: ids[i]}); err != nil {
					b.Error(err)
					return
				}
				i = (i + 1) % nodes
			}
		})
		report(b)
	})
	b.Run("grpc", func(b *testing.B) {
		b.ReportAllocs()
		out := make([]context.Context, nodes)
		for i := range out {
			out[i] = as(fmt.Sprintf("n%04d", i))
		}
		i := 0
		for b.Loop() {
			if _, err := h.client.Heartbeat(out[i], &api.HeartbeatRequest{SessionID: ids[i]}); err != nil {
				b.Fatal(err)
			}
			i = (i + 1) % nodes
		}
		report(b)
	})
}
