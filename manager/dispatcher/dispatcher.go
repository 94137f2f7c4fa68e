// Package dispatcher is the leader's service for agents: it holds one session
// per node, keeps nodes READY while they heartbeat and marks them DOWN when
// they stop, streams to each agent the tasks assigned to its node
// (Assignments, see assignments.go) and records the agents' task status
// reports (UpdateTaskStatus, see taskstatus.go).
//
// # Shape
//
// New builds a Dispatcher and starts nothing. Run is a leader-only loop: the
// manager runs it while it leads and cancels its context when it stops
// leading. Session and Heartbeat are the gRPC handlers; outside Run they
// answer Unavailable, and when Run ends every open session ends with
// Unavailable so that agents reconnect to the new leader.
//
// Run's goroutine owns every store write (node and task statuses) and the
// store watch. Handlers share the in-memory session table with it under one
// RWMutex; a heartbeat takes the read lock and stores the node's new expiry
// in an atomic, so it costs no store write and no allocation beyond its
// response. Expiry times live in memory only.
//
// # Timing
//
//   - A heartbeat sets the node's expiry to now + 3 × period, where period is
//     the cluster's spec.dispatcher.heartbeat_period (default 5 s), and
//     returns that period unchanged. Jitter is the agent's job: it should wait
//     a random time in [period×0.8, period] so that agents do not beat in
//     step; 3 periods leave room for two lost heartbeats whatever the jitter.
//     The expiry side has no jitter, so "DOWN after 3 missed periods" holds
//     exactly (to the resolution of the write coalescing below).
//   - When Run starts (a new leader), every node the store says is READY
//     gets expiry = start + grace period (Config.GracePeriod, default
//     DefaultGraceMultiplier × period = 30 s): agents must first notice the
//     old leader is gone, find the new one and register, and a failover must
//     not mark the whole cluster DOWN. A node that does not register within
//     the grace period is marked DOWN.
//
// # Writes
//
// All status writes (READY at registration, DOWN at expiry) are made by
// Run's goroutine, in store batches: registrations that arrive while a write
// is in flight go into the next one (group commit: no added latency when
// idle, few proposals when thousands of agents reconnect after a failover),
// and nodes that expire together are marked DOWN in one batch. DOWN writes
// are at most one per DownFlushInterval, so nodes dying one after another
// cost a proposal per interval, not per node. A registration that changes
// nothing in the node's record (a reconnect to a new leader) writes nothing.
//
// # Session messages
//
// The first message of a session carries its ID, the node's record and
// Config.Managers(). Run watches the store and sends a new message when the
// node's record changes (availability, labels, ...), and when Managers()
// returns a different list; it asks Managers() again whenever a manager
// node's record changes. The session ends with Aborted when a newer session
// of the node replaces it, NotFound when the node is removed, DeadlineExceeded
// when the node is marked DOWN, Unavailable when Run ends.
//
// # Tasks
//
// Run's store watch is the only one: it also carries task changes, which Run
// hands to the Assignments streams of the nodes concerned (a map node ID ->
// stream). Each stream batches them (at most one incremental message per
// AssignmentsBatchWindow, AssignmentsBatchMax changes at most) and sends
// only what the agent cares about: not status changes. Status reports are
// queued in memory and written by Run in one batch per StatusFlushInterval
// for all nodes; a status is durable once flushed.
package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	gogoproto "github.com/gogo/protobuf/proto"
	"github.com/gogo/protobuf/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/api/defaults"
	"github.com/flotilla/flotilla/api/identity"
	"github.com/flotilla/flotilla/manager/store"
)

const (
	// MissedHeartbeats is how many heartbeat periods a node may stay silent
	// before it is marked DOWN.
	MissedHeartbeats = 3
	// DefaultGraceMultiplier sets the default grace period after Run starts,
	// in heartbeat periods, and MinGracePeriod its floor: agents back off up
	// to 8 s between attempts while no manager serves them (a failover, a
	// lost quorum), so a grace shorter than that marks live nodes DOWN with
	// a short heartbeat period.
	DefaultGraceMultiplier = 6
	MinGracePeriod         = 12 * time.Second
	// DownFlushInterval is the least time between two DOWN writes: nodes
	// that expire within it are marked DOWN together, at most that late.
	DownFlushInterval = 100 * time.Millisecond
	// DownMessage is the status message of a node marked DOWN for silence.
	DownMessage = "heartbeat failure"

	// writeAttempts bounds the retries of a status batch that lost a race
	// with another writer of the same nodes (ErrSequenceConflict).
	writeAttempts = 5
)

var (
	errNotRunning = status.Error(codes.Unavailable,
		"this manager is not the leader (or is still taking over): connect to the leader")
	errStopped  = status.Error(codes.Unavailable, "this manager is no longer the leader; reconnect")
	errReplaced = status.Error(codes.Aborted, "replaced by a newer session")
	errExpired  = status.Error(codes.DeadlineExceeded,
		"no heartbeat for 3 periods: the node was marked DOWN; open a new session")

	// errNodeGone is returned by status write callbacks for a node no
	// longer in the store.
	errNodeGone = errors.New("node is not in the store")
)

func errNodeRemoved(nodeID string) error {
	return status.Errorf(codes.NotFound, "node %s was removed from the cluster: it must join again", nodeID)
}

func errNotMember(nodeID string) error {
	return status.Errorf(codes.NotFound, "node %s is not a member of this cluster (was it removed?)", nodeID)
}

func errBadSession(id string) error {
	return status.Errorf(codes.NotFound, "session %s is not valid: open a new session", id)
}

// Config is what a Dispatcher needs.
type Config struct {
	// Store is the cluster store (required).
	Store *store.MemoryStore
	// Identify returns the calling node's ID from the request context (the
	// manager fills it from the peer's TLS certificate). An error is returned
	// to the caller as is: it should already be a gRPC status. Required.
	Identify func(ctx context.Context) (nodeID string, err error)
	// Managers lists the managers agents may connect to, leader first. It is
	// called from handler goroutines and must be safe for concurrent use.
	// Nil means none.
	Managers func() []*api.WeightedPeer
	// Leader is the leader's remote API address ("" when unknown). A
	// dispatcher that is not running names it to agents in the
	// api.LeaderTrailer of its refusal, so they go there next. Nil means
	// unknown.
	Leader func() string
	// Clock is the time source; nil means the real clock.
	Clock Clock
	// GracePeriod is how long after Run starts a node the store says is
	// READY may take to register before it is marked DOWN. Zero means
	// DefaultGraceMultiplier heartbeat periods (30 s with the default period).
	GracePeriod time.Duration
	// Logger; nil means slog.Default().
	Logger *slog.Logger

	// StatusFlushInterval is how long task status reports wait in memory
	// before Run writes them, all nodes together, in one store batch: the
	// first report after a flush is written this much later. Zero means
	// DefaultStatusFlushInterval.
	StatusFlushInterval time.Duration
	// AssignmentsBatchWindow is the least time between two incremental
	// messages of an Assignments stream; changes that come in between are
	// sent together when it ends. Zero means DefaultAssignmentsBatchWindow.
	AssignmentsBatchWindow time.Duration
	// AssignmentsBatchMax is the most changes in one incremental message;
	// a stream with that many waiting sends at once. Zero means
	// DefaultAssignmentsBatchMax.
	AssignmentsBatchMax int
}

// Dispatcher serves agents' sessions and heartbeats while Run runs.
type Dispatcher struct {
	cfg   Config
	log   *slog.Logger
	clock Clock
	// epoch is the origin of expiry times (kept as nanoseconds since it, so
	// that an atomic int64 holds them and the real clock's monotonic
	// reading is used).
	epoch time.Time

	period      atomic.Pointer[heartbeatPeriod]
	managersGen atomic.Uint64 // bumped by Run when Managers() changes
	kick        chan struct{} // registrations are waiting for Run

	mu       sync.RWMutex
	running  bool
	sessions map[string]*session   // by session ID: sessions with an open stream
	nodes    map[string]*session   // by node ID: the node's session, or a placeholder
	regs     []*session            // sessions waiting for their READY write
	assigns  map[string]*assignSub // by node ID: the node's Assignments stream
	// assignVersion is the store version of the last change Run handed to
	// the Assignments streams (written under mu's read lock by Run).
	assignVersion atomic.Uint64

	// Task status reports waiting for Run's flush (see taskstatus.go).
	smu      sync.Mutex
	squeue   map[string]queuedStatus // by task ID
	sflushAt time.Time               // when the queue is due, set when it stops being empty
	skick    chan struct{}           // the queue stopped being empty
}

type heartbeatPeriod struct {
	d     time.Duration
	proto *types.Duration // shared by responses; never modified
}

func newPeriod(d time.Duration) *heartbeatPeriod {
	return &heartbeatPeriod{d: d, proto: types.DurationProto(d)}
}

// New returns a Dispatcher. It starts nothing.
func New(cfg Config) *Dispatcher {
	if cfg.Store == nil || cfg.Identify == nil {
		panic("dispatcher: Config.Store and Config.Identify are required")
	}
	if cfg.Clock == nil {
		cfg.Clock = RealClock()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.StatusFlushInterval <= 0 {
		cfg.StatusFlushInterval = DefaultStatusFlushInterval
	}
	if cfg.AssignmentsBatchWindow <= 0 {
		cfg.AssignmentsBatchWindow = DefaultAssignmentsBatchWindow
	}
	if cfg.AssignmentsBatchMax <= 0 {
		cfg.AssignmentsBatchMax = DefaultAssignmentsBatchMax
	}
	d := &Dispatcher{
		cfg:    cfg,
		log:    cfg.Logger.With("module", "dispatcher"),
		clock:  cfg.Clock,
		epoch:  cfg.Clock.Now(),
		kick:   make(chan struct{}, 1),
		squeue: map[string]queuedStatus{},
		skick:  make(chan struct{}, 1),
	}
	d.period.Store(newPeriod(defaults.HeartbeatPeriod))
	return d
}

// since converts a time to the expiry scale.
func (d *Dispatcher) since(t time.Time) int64 { return int64(t.Sub(d.epoch)) }

// at converts back from the expiry scale.
func (d *Dispatcher) at(ns int64) time.Time { return d.epoch.Add(time.Duration(ns)) }

func (d *Dispatcher) managers() []*api.WeightedPeer {
	if d.cfg.Managers == nil {
		return nil
	}
	return d.cfg.Managers()
}

func (d *Dispatcher) signal() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// session is one node's session, or a placeholder for a node the store says
// is READY but that has no session with this dispatcher (yet).
type session struct {
	id     string // "" for a placeholder
	nodeID string
	// expiry is when the node is due to be marked DOWN (see since).
	expiry atomic.Int64
	// dead is set by Run once the node has expired; heartbeats are refused
	// from then on. Guarded by Dispatcher.mu.
	dead bool

	// The rest is nil or empty for placeholders.
	ctx    context.Context
	cancel context.CancelCauseFunc
	addr   string
	desc   *api.NodeDescription
	// registered gets the result of the READY write, once.
	registered chan registration

	mu     sync.Mutex
	latest *api.Node // the node's record as last seen by Run
	notify chan struct{}
}

type registration struct {
	node *api.Node
	err  error
}

// end ends the session's stream with err.
func (s *session) end(err error) {
	if s.cancel != nil {
		s.cancel(err)
	}
}

// push hands the session the node's new record.
func (s *session) push(n *api.Node) {
	if s.notify == nil {
		return
	}
	if n != nil {
		s.mu.Lock()
		s.latest = n
		s.mu.Unlock()
	}
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// removeLocked forgets s if it is still the node's session.
func (d *Dispatcher) removeLocked(s *session) bool {
	if d.sessions[s.id] == s {
		delete(d.sessions, s.id)
	}
	if d.nodes[s.nodeID] != s {
		return false
	}
	delete(d.nodes, s.nodeID)
	return true
}

// Heartbeat extends the calling node's session by 3 heartbeat periods and
// returns the period.
func (d *Dispatcher) Heartbeat(ctx context.Context, req *api.HeartbeatRequest) (*api.HeartbeatResponse, error) {
	nodeID, err := d.cfg.Identify(ctx)
	if err != nil {
		return nil, err
	}
	now := d.clock.Now()
	p := d.period.Load()
	d.mu.RLock()
	defer d.mu.RUnlock()
	if !d.running {
		return nil, errNotRunning
	}
	s := d.sessions[req.SessionID]
	if s == nil || s.nodeID != nodeID || s.dead {
		return nil, errBadSession(req.SessionID)
	}
	s.expiry.Store(d.since(now.Add(MissedHeartbeats * p.d)))
	return &api.HeartbeatResponse{Period: p.proto}, nil
}

// Session registers the calling node, marks it READY (with the address it
// connects from: the peer's IP, empty over a unix socket, and the
// description it sends, if any) and holds its session until it is replaced,
// the node is removed or marked DOWN, the agent goes away, or Run ends. An
// agent that goes away keeps its node READY until its expiry passes.
func (d *Dispatcher) Session(req *api.SessionRequest, stream api.Dispatcher_SessionServer) error {
	ctx := stream.Context()
	nodeID, err := d.cfg.Identify(ctx)
	if err != nil {
		return err
	}
	// Only a running dispatcher (the leader's, which has applied everything
	// committed) may tell a node it is unknown: a follower's store may lag
	// behind a node that just joined.
	d.mu.RLock()
	running := d.running
	d.mu.RUnlock()
	if !running {
		if d.cfg.Leader != nil {
			if addr := d.cfg.Leader(); addr != "" {
				stream.SetTrailer(metadata.Pairs(api.LeaderTrailer, addr))
			}
		}
		return errNotRunning
	}
	var known bool
	d.cfg.Store.View(func(tx store.ReadTx) { known = tx.Get(api.KindNode, nodeID) != nil })
	if !known {
		return errNotMember(nodeID)
	}
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	s := &session{
		id:         identity.NewID(),
		nodeID:     nodeID,
		ctx:        sctx,
		cancel:     cancel,
		addr:       peerHost(ctx),
		desc:       req.Description,
		registered: make(chan registration, 1),
		notify:     make(chan struct{}, 1),
	}
	now := d.clock.Now()
	s.expiry.Store(d.since(now.Add(MissedHeartbeats * d.period.Load().d)))

	d.mu.Lock()
	if !d.running {
		d.mu.Unlock()
		return errNotRunning
	}
	old := d.nodes[nodeID]
	if old != nil {
		d.removeLocked(old)
	}
	d.nodes[nodeID] = s
	d.sessions[s.id] = s
	d.regs = append(d.regs, s)
	d.mu.Unlock()
	if old != nil {
		old.end(errReplaced)
	}
	d.signal()
	defer func() {
		// The stream is gone: the session ID is no longer valid, but the
		// node keeps its expiry and is marked DOWN unless it comes back.
		d.mu.Lock()
		if d.sessions[s.id] == s {
			delete(d.sessions, s.id)
		}
		d.mu.Unlock()
	}()

	var node *api.Node
	select {
	case r := <-s.registered:
		if r.err != nil {
			return r.err
		}
		node = r.node
	case <-sctx.Done():
		return ended(sctx)
	}
	sent, gen := node.Meta.Version, d.managersGen.Load()
	msg := &api.SessionMessage{SessionID: s.id, Node: node, Managers: d.managers()}
	if err := stream.Send(msg); err != nil {
		return err
	}
	for {
		select {
		case <-sctx.Done():
			return ended(sctx)
		case <-s.notify:
		}
		s.mu.Lock()
		n := s.latest
		s.mu.Unlock()
		g := d.managersGen.Load()
		if n != nil && n.Meta.Version > sent {
			node = n
		} else if g == gen {
			continue
		}
		sent, gen = node.Meta.Version, g
		msg := &api.SessionMessage{SessionID: s.id, Node: node, Managers: d.managers()}
		if err := stream.Send(msg); err != nil {
			return err
		}
		d.log.Debug("sent session update", "node.id", nodeID, "node.version", sent)
	}
}

// ended is the status a session's handler returns once its context is done.
func ended(ctx context.Context) error {
	if err := context.Cause(ctx); err != nil {
		if _, ok := status.FromError(err); ok {
			return err
		}
	}
	return status.FromContextError(ctx.Err()).Err()
}

// peerHost is the IP address the caller connects from, or "" if the
// transport has none (unix sockets).
func peerHost(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return ""
	}
	if a, ok := p.Addr.(*net.TCPAddr); ok {
		return a.IP.String()
	}
	host, _, err := net.SplitHostPort(p.Addr.String())
	if err != nil {
		return ""
	}
	return host
}

// Run serves sessions until ctx ends (this manager stops leading) or the
// store fails it. When it returns, every session has ended with Unavailable.
func (d *Dispatcher) Run(ctx context.Context) error {
	var (
		nodes    []*api.Node
		clusters []*api.Cluster
		ferr     error
	)
	w, version, err := d.cfg.Store.ViewAndWatch(func(tx store.ReadTx) {
		nodes, ferr = store.Find[*api.Node](tx, store.All())
		if ferr == nil {
			clusters, ferr = store.Find[*api.Cluster](tx, store.All())
		}
	})
	if err == nil {
		err = ferr
	}
	if err != nil {
		if w != nil {
			w.Close()
		}
		return fmt.Errorf("dispatcher: read the store: %w", err)
	}

	l := &loop{d: d, ctx: ctx, w: w, own: map[string]uint64{}}
	l.setPeriod(clusters)
	now := d.clock.Now()
	grace := d.cfg.GracePeriod
	if grace <= 0 {
		grace = max(DefaultGraceMultiplier*d.period.Load().d, MinGracePeriod)
	}
	l.graceEnd = now.Add(grace)

	d.mu.Lock()
	if d.running {
		d.mu.Unlock()
		w.Close()
		return errors.New("dispatcher: Run is already running")
	}
	d.running = true
	d.nodes = map[string]*session{}
	d.sessions = map[string]*session{}
	d.regs = nil
	d.assigns = map[string]*assignSub{}
	d.assignVersion.Store(version)
	ready := l.resyncLocked(nodes, now)
	d.mu.Unlock()
	d.smu.Lock()
	clear(d.squeue)
	d.smu.Unlock()
	l.checkManagers()
	d.log.Info("dispatcher started", "nodes.ready", ready, "grace", grace,
		"heartbeat.period", d.period.Load().d)

	defer l.stop()
	return l.run()
}

// loop is Run's state; only Run's goroutine touches it.
type loop struct {
	d        *Dispatcher
	ctx      context.Context
	w        *store.Watch
	graceEnd time.Time
	// deadline is when the next expiry scan is due; timer fires then.
	deadline time.Time
	timer    Timer
	timerAt  time.Time
	lastDown time.Time
	managers []*api.WeightedPeer
	// stimer fires when the queued task statuses are due (stimerAt).
	stimer   Timer
	stimerAt time.Time
	// own maps the tasks of committed status flushes to the version they
	// were written from: their changes on the watch are status-only.
	own map[string]uint64
}

func (l *loop) run() error {
	for {
		l.flush()
		l.armStatus()
		var fired, sfired <-chan time.Time
		if l.timer != nil {
			fired = l.timer.C()
		}
		if l.stimer != nil {
			sfired = l.stimer.C()
		}
		select {
		case <-l.ctx.Done():
			return nil
		case c, ok := <-l.w.C:
			if !ok {
				if err := l.rewatch(); err != nil {
					return err
				}
				continue
			}
			l.apply(c)
		case <-l.d.kick:
		case <-l.d.skick:
		case <-fired:
			l.timer = nil
		case <-sfired:
			l.stimer = nil
			l.flushStatuses()
		}
	}
}

// stop ends every session with Unavailable and makes the handlers refuse
// calls until Run runs again.
func (l *loop) stop() {
	d := l.d
	if l.timer != nil {
		l.timer.Stop()
	}
	if l.stimer != nil {
		l.stimer.Stop()
	}
	l.w.Close()
	d.mu.Lock()
	d.running = false
	all := d.nodes
	d.nodes, d.sessions, d.regs, d.assigns = nil, nil, nil, nil
	d.mu.Unlock()
	// Statuses not flushed are lost: the agents report them again to the
	// next leader (see taskstatus.go).
	d.smu.Lock()
	dropped := len(d.squeue)
	clear(d.squeue)
	d.smu.Unlock()
	if dropped > 0 {
		d.log.Info("task statuses not written before the dispatcher stopped", "tasks", dropped)
	}
	for _, s := range all {
		s.end(errStopped)
	}
	d.log.Info("dispatcher stopped", "sessions", len(all))
}

// rewatch starts a new watch after the old one was dropped (it fell behind
// or the store was restored) and reconciles the sessions with the store.
func (l *loop) rewatch() error {
	d := l.d
	d.log.Warn("store watch ended; reading the store again", "err", l.w.Err())
	var (
		nodes    []*api.Node
		clusters []*api.Cluster
		ferr     error
	)
	w, version, err := d.cfg.Store.ViewAndWatch(func(tx store.ReadTx) {
		nodes, ferr = store.Find[*api.Node](tx, store.All())
		if ferr == nil {
			clusters, ferr = store.Find[*api.Cluster](tx, store.All())
		}
	})
	if err == nil {
		err = ferr
	}
	if err != nil {
		if w != nil {
			w.Close()
		}
		return fmt.Errorf("dispatcher: read the store again: %w", err)
	}
	l.w = w
	l.setPeriod(clusters)
	now := d.clock.Now()
	d.mu.Lock()
	l.resyncLocked(nodes, now)
	// The watch may have missed task changes: every Assignments stream
	// starts again from a complete set.
	l.resyncAssignsLocked(version)
	d.mu.Unlock()
	l.checkManagers()
	return nil
}

// resyncLocked reconciles the session table with the store's nodes: sessions
// of nodes no longer there end, sessions get their node's record, and READY
// nodes without a session get a placeholder that expires at the end of the
// grace period (or 3 periods from now, if later). It returns the number of
// READY nodes.
func (l *loop) resyncLocked(nodes []*api.Node, now time.Time) int {
	d := l.d
	present := make(map[string]bool, len(nodes))
	ready := 0
	for _, n := range nodes {
		present[n.ID] = true
		if n.Status.State == api.NodeStatusReady {
			ready++
		}
		l.nodeChangedLocked(n, now)
	}
	for id, s := range d.nodes {
		if !present[id] {
			d.removeLocked(s)
			s.end(errNodeRemoved(id))
		}
	}
	return ready
}

// nodeChangedLocked passes a node's new record to its session, or tracks a
// READY node that has none.
func (l *loop) nodeChangedLocked(n *api.Node, now time.Time) {
	d := l.d
	s := d.nodes[n.ID]
	if s == nil {
		if n.Status.State != api.NodeStatusReady {
			return
		}
		exp := now.Add(MissedHeartbeats * d.period.Load().d)
		if l.graceEnd.After(exp) {
			exp = l.graceEnd
		}
		s = &session{nodeID: n.ID}
		s.expiry.Store(d.since(exp))
		d.nodes[n.ID] = s
		return
	}
	s.push(n)
}

// apply handles one store change.
func (l *loop) apply(c store.Change) {
	d := l.d
	var nodes, managers, tasks bool
	for _, ev := range c.Events {
		switch o := ev.Object.(type) {
		case *api.Task:
			tasks = true
		case *api.Node:
			nodes = true
			if isManager(o) {
				managers = true
			}
			if old, ok := ev.OldObject.(*api.Node); ok && isManager(old) {
				managers = true
			}
		case *api.Cluster:
			if ev.Action != api.WatchActionKindRemove && l.setPeriod([]*api.Cluster{o}) {
				// A shorter period makes new expiries earlier than the
				// scan planned for: scan now.
				l.deadline = time.Time{}
			}
		}
	}
	if nodes {
		now := d.clock.Now()
		var ended []*session
		d.mu.Lock()
		for _, ev := range c.Events {
			n, ok := ev.Object.(*api.Node)
			if !ok {
				continue
			}
			if ev.Action == api.WatchActionKindRemove {
				if s := d.nodes[n.ID]; s != nil {
					d.removeLocked(s)
					ended = append(ended, s)
				}
				continue
			}
			l.nodeChangedLocked(n, now)
		}
		d.mu.Unlock()
		for _, s := range ended {
			s.end(errNodeRemoved(s.nodeID))
			d.log.Debug("node removed: session ended", "node.id", s.nodeID)
		}
	}
	if managers {
		l.checkManagers()
	}
	if tasks {
		l.routeTasks(c)
	} else {
		d.assignVersion.Store(c.Version)
	}
}

func isManager(n *api.Node) bool {
	return n.Role == api.NodeRoleManager || n.ManagerStatus != nil
}

// checkManagers tells every session when the list of managers changed.
func (l *loop) checkManagers() {
	d := l.d
	m := d.managers()
	if samePeers(m, l.managers) {
		return
	}
	l.managers = m
	d.managersGen.Add(1)
	d.mu.RLock()
	for _, s := range d.sessions {
		s.push(nil)
	}
	d.mu.RUnlock()
}

func samePeers(a, b []*api.WeightedPeer) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].NodeID != b[i].NodeID || a[i].Addr != b[i].Addr || a[i].Weight != b[i].Weight {
			return false
		}
	}
	return true
}

// setPeriod takes the heartbeat period from the cluster object; it reports
// whether the period got shorter.
func (l *loop) setPeriod(clusters []*api.Cluster) bool {
	d := l.d
	p := defaults.HeartbeatPeriod
	if len(clusters) > 0 && clusters[0].Spec.Dispatcher.HeartbeatPeriod != nil {
		if v, err := types.DurationFromProto(clusters[0].Spec.Dispatcher.HeartbeatPeriod); err == nil && v > 0 {
			p = v
		}
	}
	old := d.period.Load().d
	if p == old {
		return false
	}
	d.period.Store(newPeriod(p))
	d.log.Info("heartbeat period changed", "heartbeat.period", p, "was", old)
	return p < old
}

// flush writes what is due: READY for waiting registrations, DOWN for
// expired nodes; then arms the timer for the next expiry.
func (l *loop) flush() {
	d := l.d
	now := d.clock.Now()
	scan := !now.Before(l.deadline)
	var down []*session
	d.mu.Lock()
	regs := d.regs
	d.regs = nil
	if scan {
		// Wake up at least every 3 periods: a period shortened since this
		// scan cannot then make an expiry earlier than the next scan.
		next := now.Add(MissedHeartbeats * d.period.Load().d)
		nowNs := d.since(now)
		for _, s := range d.nodes {
			e := s.expiry.Load()
			if s.dead || e <= nowNs {
				s.dead = true
				down = append(down, s)
				continue
			}
			if t := d.at(e); t.Before(next) {
				next = t
			}
		}
		l.deadline = next
	}
	d.mu.Unlock()
	if len(down) > 0 {
		if soonest := l.lastDown.Add(DownFlushInterval); now.Before(soonest) {
			// Too soon after the last DOWN write: these wait (refusing
			// heartbeats) for the next, so that nodes dying one after
			// another are written together.
			down = nil
			if soonest.Before(l.deadline) {
				l.deadline = soonest
			}
		}
	}
	if len(regs) > 0 || len(down) > 0 {
		if len(down) > 0 {
			l.lastDown = now
		}
		if !l.write(regs, down) {
			// Some DOWN writes failed: try again shortly.
			if retry := now.Add(DownFlushInterval); retry.Before(l.deadline) {
				l.deadline = retry
			}
		}
	}
	l.arm(l.deadline)
}

func (l *loop) arm(at time.Time) {
	if l.timer != nil {
		if l.timerAt.Equal(at) {
			return
		}
		l.timer.Stop()
	}
	l.timer, l.timerAt = l.d.clock.TimerAt(at), at
}

// statusWrite is one node's status change in a batch.
type statusWrite struct {
	s    *session
	down bool
	// Set by the write callback (on each attempt).
	wasReady bool
	changed  bool
	done     bool // committed, or needed no write
	skipped  bool // no longer wanted: the session was replaced or ended
	err      error
}

// stillWanted says whether the write still applies: the session is still
// the node's, and alive (READY) or expired (DOWN).
func (l *loop) stillWanted(w *statusWrite) bool {
	d := l.d
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.nodes[w.s.nodeID] != w.s {
		return false
	}
	if w.down {
		return w.s.dead
	}
	return w.s.ctx.Err() == nil
}

func (l *loop) update(w *statusWrite, tx store.Tx) error {
	n := store.Get[*api.Node](tx, w.s.nodeID)
	if n == nil {
		return errNodeGone
	}
	w.wasReady = n.Status.State == api.NodeStatusReady
	if w.down {
		if !w.wasReady {
			return nil
		}
		n.Status.State = api.NodeStatusDown
		n.Status.Message = DownMessage
		w.changed = true
		return tx.Update(n)
	}
	st := api.NodeStatus{State: api.NodeStatusReady, Addr: w.s.addr}
	desc := n.Description
	if w.s.desc != nil {
		desc = w.s.desc.Copy()
		// The agent does not know what the CA recorded about its
		// certificate: keep it.
		if desc.TLSInfo == nil && n.Description != nil {
			desc.TLSInfo = n.Description.TLSInfo
		}
	}
	if n.Status == st && gogoproto.Equal(desc, n.Description) {
		return nil
	}
	n.Status, n.Description = st, desc
	w.changed = true
	return tx.Update(n)
}

// write makes the status writes in as few proposals as the store allows,
// retrying those that lost a race with another writer, then hands the
// sessions their outcome. It reports whether every DOWN write was made.
func (l *loop) write(regs, down []*session) bool {
	d := l.d
	pending := make([]*statusWrite, 0, len(regs)+len(down))
	for _, s := range regs {
		pending = append(pending, &statusWrite{s: s})
	}
	for _, s := range down {
		pending = append(pending, &statusWrite{s: s, down: true})
	}
	all := pending
	var err error
	for attempt := 0; attempt < writeAttempts && len(pending) > 0; attempt++ {
		// ok are the Update calls that succeeded, in order: the batch
		// commits a prefix of them (committed). Those that changed nothing
		// are done whether or not they are in it.
		var ok []*statusWrite
		var committed int
		committed, err = d.cfg.Store.Batch(l.ctx, func(b *store.Batch) error {
			for _, w := range pending {
				if !l.stillWanted(w) {
					w.done, w.skipped = true, true
					continue
				}
				w.changed = false
				uerr := b.Update(func(tx store.Tx) error { return l.update(w, tx) })
				switch {
				case uerr == nil:
					ok = append(ok, w)
				case errors.Is(uerr, errNodeGone):
					w.done, w.err = true, errNodeGone
				default:
					return uerr // a proposal failed
				}
			}
			return nil
		})
		for i, w := range ok {
			if i < committed || !w.changed {
				w.done = true
			}
		}
		next := pending[:0]
		for _, w := range pending {
			if !w.done {
				next = append(next, w)
			}
		}
		pending = next
		if err == nil || !errors.Is(err, store.ErrSequenceConflict) {
			break
		}
		d.log.Debug("node status batch conflicted with another write; retrying", "err", err)
	}
	if err != nil && l.ctx.Err() == nil {
		d.log.Warn("cannot write node status", "err", err, "nodes", len(pending))
	}
	l.finish(all, err)
	for _, w := range pending {
		if w.down {
			return false
		}
	}
	return true
}

// finish hands registrations their result and ends the sessions of nodes
// marked DOWN or gone.
func (l *loop) finish(all []*statusWrite, err error) {
	d := l.d
	var registered, ended, refused []*statusWrite
	d.mu.Lock()
	for _, w := range all {
		switch {
		case w.skipped:
		case !w.done && w.down:
			// Stays dead in the table: the next scan tries again.
		case !w.done:
			// The entry keeps the node's expiry; the agent retries.
			w.err = status.Errorf(codes.Unavailable, "cannot record the node's status: %v; retry", err)
			refused = append(refused, w)
		case errors.Is(w.err, errNodeGone):
			d.removeLocked(w.s)
			if w.down {
				ended = append(ended, w)
			} else {
				w.err = errNotMember(w.s.nodeID)
				refused = append(refused, w)
			}
		case w.down:
			if d.removeLocked(w.s) {
				ended = append(ended, w)
			}
		default:
			registered = append(registered, w)
		}
	}
	d.mu.Unlock()

	for _, w := range refused {
		w.s.registered <- registration{err: w.err}
	}
	for _, w := range ended {
		if w.err != nil {
			w.s.end(errNodeRemoved(w.s.nodeID))
			continue
		}
		w.s.end(errExpired)
		if w.changed {
			d.log.Info("node is DOWN: no heartbeat", "node.id", w.s.nodeID,
				"missed", MissedHeartbeats, "heartbeat.period", d.period.Load().d)
		}
	}
	if len(registered) == 0 {
		return
	}
	d.cfg.Store.View(func(tx store.ReadTx) {
		for _, w := range registered {
			n := store.Get[*api.Node](tx, w.s.nodeID)
			if n == nil {
				w.s.registered <- registration{err: errNotMember(w.s.nodeID)}
				continue
			}
			w.s.registered <- registration{node: n}
			if !w.wasReady {
				d.log.Info("node is READY", "node.id", w.s.nodeID, "addr", w.s.addr)
			} else {
				d.log.Debug("node registered a new session", "node.id", w.s.nodeID,
					"addr", w.s.addr, "changed", w.changed)
			}
		}
	})
}
