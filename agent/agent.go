// Package agent is the worker side of a node: it holds a session with the
// cluster's dispatcher and runs the tasks assigned to the node through an
// exec.Executor.
//
// The session loop, run by Agent.Run, does in order:
//
//  1. pick a manager: the latest list a manager sent (leader first), round
//     robin, then the configured addresses;
//  2. dial it (Config.Dial brings the node's mTLS credentials) and open a
//     Session stream with the executor's description of the node;
//  3. read the first SessionMessage: session ID, the node's record, the
//     managers; Ready closes after the first one;
//  4. heartbeat at once, then every period the dispatcher returns, jittered
//     to [0.75, 1.0) of it, while reading further SessionMessages (node
//     record, managers) from the stream;
//  5. on any failure close the connection and go back to 1, after a
//     backoff with full jitter (see backoff), or at once when a heartbeat
//     says the session is unknown (the manager lost or replaced it).
//
// Within each session the agent also reads the Assignments stream (see
// worker.go): the first message is the complete set of the node's tasks,
// later ones change it. Every assigned task is recorded in the task DB
// (Config.TaskDB) and run by a goroutine of its own that calls exec.Do until
// the task reaches its desired state or a terminal state (taskmanager.go);
// tasks no longer assigned are shut down, removed and forgotten. Each status
// a task reaches is recorded in the task DB and reported to the dispatcher
// with UpdateTaskStatus, in batches (reporter.go). Tasks outlive sessions:
// they run on while the agent reconnects, and the latest statuses are sent
// again to each new session. They also outlive the agent: Run does not stop
// them when it returns, and the next Run resumes them from the task DB.
//
// Run returns nil when its context ends, and an error wrapping
// ErrNodeRemoved when the managers no longer know the node.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/agent/exec"
	"github.com/flotilla/flotilla/agent/taskdb"
	"github.com/flotilla/flotilla/api"
)

// ErrNodeRemoved is wrapped by the error Run returns when a manager refuses
// the session because the node is not in the cluster any more.
var ErrNodeRemoved = errors.New("node was removed from the cluster")

// errSessionInvalid is a heartbeat refused because the dispatcher does not
// know the session (replaced, or lost with a leader change).
var errSessionInvalid = errors.New("the manager does not know this session")

// RPC deadlines, in real time.
const (
	// establishTimeout bounds the wait for the first SessionMessage.
	establishTimeout = 30 * time.Second
	// minHeartbeatTimeout is the least a heartbeat may take before the
	// session is given up; otherwise the period is the limit.
	minHeartbeatTimeout = 5 * time.Second
	// warnAfter is how long the agent retries without a session before it
	// says so at warn level (once per outage).
	warnAfter = time.Minute
)

// Config is what an Agent needs.
type Config struct {
	// Dial opens a connection to a manager at addr (the node package
	// supplies one with mTLS credentials). The agent closes it.
	Dial func(ctx context.Context, addr string) (*grpc.ClientConn, error)
	// Managers to try first (e.g. the join address or the node's own remote
	// API); the list is then refreshed from SessionMessage.managers. At
	// least one is required.
	Managers []string
	// ManagersChanged, if set, is called with the managers' addresses (leader
	// first) whenever a manager sends a list that differs from the last
	// one, so that the node can remember them across restarts. It runs on
	// the agent's Run goroutine: it must not block for long.
	ManagersChanged func(addrs []string)
	// NodeChanged, if set, is called with each node record a manager sends
	// (the node's role, desired role, availability...), so that the node
	// can follow a promotion or demotion. It runs on the agent's Run
	// goroutine: it must not block for long, nor modify the record.
	NodeChanged func(*api.Node)
	// Executor describes the node and runs its tasks.
	Executor exec.Executor
	// TaskDB is the file of the node's task DB, the tasks assigned to it and
	// their last status, so that a restarted agent resumes them (a node
	// uses <state-dir>/worker/tasks.db). Empty keeps them in memory only:
	// for tests and simulated agents.
	TaskDB string
	// Clock drives heartbeat and reconnect waits (default: RealClock).
	Clock Clock
	// Logger (default slog.Default()); it should carry the node.id attribute.
	Logger *slog.Logger
}

// Agent holds a node's session with the dispatcher.
type Agent struct {
	cfg   Config
	clock Clock
	log   *slog.Logger
	ready chan struct{}
	ran   atomic.Bool

	// Owned by the Run goroutine.
	rnd      *rand.Rand
	managers *managerList
	isReady  bool
	worker   *worker // set by Run before the first session

	noAssignments atomic.Bool // a manager did not stream assignments (logged once)

	mu        sync.Mutex // guards the fields below, read by accessors
	sessionID string
	node      *api.Node
	store     taskdb.Store // while Run runs
}

// New makes an agent; it starts nothing.
func New(cfg Config) *Agent {
	if cfg.Clock == nil {
		cfg.Clock = RealClock()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Agent{
		cfg:      cfg,
		clock:    cfg.Clock,
		log:      cfg.Logger.With("module", "agent"),
		ready:    make(chan struct{}),
		rnd:      rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
		managers: newManagerList(cfg.Managers),
	}
}

// Ready is closed once the first session is established.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// SessionID is the current session's ID, "" between sessions.
func (a *Agent) SessionID() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.sessionID
}

// Node is a copy of the last node record a manager sent, nil before the
// first session.
func (a *Agent) Node() *api.Node {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.node == nil {
		return nil
	}
	return a.node.Copy()
}

// Tasks lists the tasks the agent runs, each with the last status it
// observed, as its task DB holds them; nil when Run is not running.
func (a *Agent) Tasks() ([]*api.Task, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.store == nil {
		return nil, nil
	}
	return a.store.List()
}

// Run holds sessions until ctx ends, then returns nil with everything it
// started stopped and its connection closed. It returns an error for
// conditions retrying cannot fix: a bad Config, or the node removed from the
// cluster (wrapping ErrNodeRemoved). Run may be called once.
func (a *Agent) Run(ctx context.Context) error {
	if !a.ran.CompareAndSwap(false, true) {
		return errors.New("agent: Run called twice")
	}
	switch {
	case a.cfg.Dial == nil:
		return errors.New("agent: no Dial function configured")
	case a.cfg.Executor == nil:
		return errors.New("agent: no executor configured")
	case len(a.managers.addrs) == 0:
		return errors.New("agent: no manager address to connect to: give a join address or run as a manager")
	}

	var store taskdb.Store = taskdb.NewMemory()
	if a.cfg.TaskDB != "" {
		db, err := taskdb.Open(a.cfg.TaskDB)
		if err != nil {
			return fmt.Errorf("agent: %w", err)
		}
		store = db
	}
	w := newWorker(a.cfg.Executor, store, a.log)
	if err := w.load(); err != nil {
		store.Close()
		return fmt.Errorf("agent: task DB %s: %w (move the file aside to start with no tasks)", a.cfg.TaskDB, err)
	}
	a.worker = w
	a.mu.Lock()
	a.store = store
	a.mu.Unlock()
	wctx, stopWorker := context.WithCancel(ctx)
	go w.run(wctx)
	defer func() {
		stopWorker()
		<-w.stopped
		a.mu.Lock()
		a.store = nil
		a.mu.Unlock()
		if err := store.Close(); err != nil {
			a.log.Error("close the task DB", "error", err)
		}
	}()

	var (
		attempt      int       // failed attempts since the last long session
		quickRetried bool      // the last reconnect skipped the backoff
		failingSince time.Time // start of the current outage
		warned       bool      // the outage was reported at warn
	)
	failingSince = a.clock.Now()
	for {
		addr := a.managers.pick()
		start := a.clock.Now()
		res := a.session(ctx, addr)
		a.setSessionID("")
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(res.err, ErrNodeRemoved) {
			return res.err
		}

		now := a.clock.Now()
		if res.established {
			failingSince, warned = now, false
			if now.Sub(start) >= backoffResetAfter {
				attempt = 0
			}
		}
		var wait time.Duration
		if res.leader != "" && !quickRetried {
			// Sent to the leader: go there at once (but not twice in a row,
			// should managers disagree about who leads).
			a.managers.prefer(res.leader)
			quickRetried = true
		} else if errors.Is(res.err, errSessionInvalid) && (res.heartbeats > 0 || !quickRetried) {
			quickRetried = true // at once, but not twice in a row for a session that never beat
		} else {
			quickRetried = false
			wait = backoff(attempt, a.rnd)
			attempt++
		}

		code := status.Code(res.err)
		switch {
		case res.established:
			a.log.Info("session lost", "manager", addr, "error", res.err, "retry_in", wait)
		case code == codes.PermissionDenied || code == codes.Unauthenticated:
			a.log.Warn("manager refused the session", "manager", addr, "error", res.err, "retry_in", wait)
		default:
			a.log.Debug("cannot open a session", "manager", addr, "error", res.err, "retry_in", wait)
		}
		if !warned && now.Sub(failingSince) >= warnAfter {
			warned = true
			a.log.Warn("no session with any manager; still trying",
				"for", now.Sub(failingSince).Round(time.Second), "managers", a.managers.all(), "error", res.err)
		}

		if wait > 0 && !a.sleep(ctx, wait) {
			return nil
		}
	}
}

// sleep waits d on the agent's clock; false if ctx ended first.
func (a *Agent) sleep(ctx context.Context, d time.Duration) bool {
	t := a.clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C():
		return true
	case <-ctx.Done():
		return false
	}
}

func (a *Agent) setSessionID(id string) {
	a.mu.Lock()
	a.sessionID = id
	a.mu.Unlock()
}

// apply takes in a SessionMessage (run by the Run goroutine only).
func (a *Agent) apply(m *api.SessionMessage) {
	if m.Node != nil {
		a.mu.Lock()
		a.node = m.Node
		a.mu.Unlock()
		if a.cfg.NodeChanged != nil {
			a.cfg.NodeChanged(m.Node)
		}
	}
	before := a.managers.all()
	a.managers.update(m.Managers)
	if after := a.managers.all(); a.cfg.ManagersChanged != nil && len(m.Managers) > 0 && !slices.Equal(before, after) {
		a.cfg.ManagersChanged(after)
	}
}

// sessionResult is how one session went.
type sessionResult struct {
	established bool // the first SessionMessage arrived
	heartbeats  int  // heartbeats the dispatcher accepted
	// leader is where a manager that could not serve the session said the
	// leader is (api.LeaderTrailer).
	leader string
	err    error
}

// session holds one session with the manager at addr until it fails or ctx
// ends. It returns with its goroutine finished and the connection closed.
func (a *Agent) session(ctx context.Context, addr string) (res sessionResult) {
	desc, err := a.cfg.Executor.Describe(ctx)
	if err != nil {
		res.err = fmt.Errorf("describe the node: %w", err)
		return res
	}
	conn, err := a.cfg.Dial(ctx, addr)
	if err != nil {
		res.err = fmt.Errorf("dial manager %s: %w", addr, err)
		return res
	}
	defer conn.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	client := api.NewDispatcherClient(conn)

	stream, err := client.Session(sctx, &api.SessionRequest{Description: desc})
	if err != nil {
		res.err = sessionError(addr, err)
		return res
	}
	expired := time.AfterFunc(establishTimeout, cancel)
	first, err := stream.Recv()
	if !expired.Stop() && ctx.Err() == nil {
		res.err = fmt.Errorf("manager %s opened no session within %s", addr, establishTimeout)
		return res
	}
	if err != nil {
		if v := stream.Trailer().Get(api.LeaderTrailer); len(v) > 0 && v[0] != addr {
			res.leader = v[0]
		}
		res.err = sessionError(addr, err)
		return res
	}
	if first.SessionID == "" {
		res.err = fmt.Errorf("manager %s opened a session without an ID", addr)
		return res
	}
	res.established = true
	sessionID := first.SessionID
	a.apply(first)
	a.setSessionID(sessionID)
	if !a.isReady {
		a.isReady = true
		close(a.ready)
	}
	a.log.Info("session established", "manager", addr, "session.id", sessionID)

	// The stream's later messages come through msgs so that this goroutine
	// stays the only one to apply them.
	msgs := make(chan *api.SessionMessage)
	recvErr := make(chan error, 1)
	recvDone := make(chan struct{})
	go func() {
		defer close(recvDone)
		for {
			m, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case msgs <- m:
			case <-sctx.Done():
				return
			}
		}
	}()
	defer func() {
		cancel()
		<-recvDone
	}()

	// The assignments stream, read by its own goroutine; it hands the
	// messages to the worker.
	asgErr := make(chan error, 1)
	asgDone := make(chan struct{})
	go func() {
		defer close(asgDone)
		if err := a.assignments(sctx, client, addr, sessionID); err != nil && sctx.Err() == nil {
			asgErr <- err
		}
	}()
	defer func() {
		cancel()
		<-asgDone
		a.worker.rep.clearSession(sessionID)
	}()

	// Task logs, on the same connection (logs.go).
	logsDone := make(chan struct{})
	go func() {
		defer close(logsDone)
		a.logSubscriptions(sctx, conn, addr)
	}()
	defer func() {
		cancel()
		<-logsDone
	}()

	period := DefaultHeartbeatPeriod
	now := make(chan time.Time)
	close(now)
	var due <-chan time.Time = now // the first heartbeat goes at once
	var timer Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			res.err = ctx.Err()
			return res
		case m := <-msgs:
			a.apply(m)
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				res.err = fmt.Errorf("manager %s ended the session", addr)
			} else {
				res.err = fmt.Errorf("session stream from manager %s: %w", addr, err)
			}
			return res
		case err := <-asgErr:
			res.err = err
			return res
		case <-due:
			next, err := a.heartbeat(sctx, client, addr, sessionID, period)
			if err != nil {
				res.err = err
				return res
			}
			res.heartbeats++
			period = next
			timer = a.clock.NewTimer(heartbeatWait(period, a.rnd))
			due = timer.C()
		}
	}
}

// assignments reads the session's Assignments stream and has the worker
// apply each message, until the stream fails or ctx ends. Statuses go to
// this session once its first message is applied (so that tasks it no
// longer has are forgotten first). A manager that does not stream
// assignments (Unimplemented: an older version) leaves the session as it
// is, with no tasks.
func (a *Agent) assignments(ctx context.Context, client api.DispatcherClient, addr, sessionID string) error {
	stream, err := client.Assignments(ctx, &api.AssignmentsRequest{SessionID: sessionID})
	var m *api.AssignmentsMessage
	if err == nil {
		m, err = stream.Recv()
	}
	if status.Code(err) == codes.Unimplemented {
		if a.noAssignments.CompareAndSwap(false, true) {
			a.log.Info("the manager does not assign tasks (an older version?); no task runs here until one does",
				"manager", addr, "error", status.Convert(err).Message())
		}
		a.worker.rep.setSession(client, sessionID)
		<-ctx.Done()
		return nil
	}
	var resultsIn string // of the last message applied
	for first := true; ; first = false {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("manager %s ended the assignments stream", addr)
		}
		if status.Code(err) == codes.NotFound {
			return fmt.Errorf("%w (manager %s: %s)", errSessionInvalid, addr, status.Convert(err).Message())
		}
		if err != nil {
			return fmt.Errorf("assignments stream from manager %s: %w", addr, err)
		}
		if m.Type == api.AssignmentsIncremental && m.AppliesTo != "" && resultsIn != "" && m.AppliesTo != resultsIn {
			// A message was lost: start again from a complete set.
			return fmt.Errorf("manager %s sent assignments out of sequence (applies to %q, last applied %q)", addr, m.AppliesTo, resultsIn)
		}
		if err := a.worker.assign(ctx, m); err != nil {
			return err
		}
		resultsIn = m.ResultsIn
		if first {
			a.worker.rep.setSession(client, sessionID)
		}
		m, err = stream.Recv()
	}
}

// heartbeat sends one heartbeat and returns the period until the next.
func (a *Agent) heartbeat(ctx context.Context, client api.DispatcherClient, addr, sessionID string, period time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, max(period, minHeartbeatTimeout))
	defer cancel()
	resp, err := client.Heartbeat(ctx, &api.HeartbeatRequest{SessionID: sessionID})
	if status.Code(err) == codes.NotFound {
		return 0, fmt.Errorf("%w (manager %s: %s)", errSessionInvalid, addr, status.Convert(err).Message())
	}
	if err != nil {
		return 0, fmt.Errorf("heartbeat to manager %s: %w", addr, err)
	}
	if p := resp.GetPeriod(); p != nil {
		if d := time.Duration(p.Seconds)*time.Second + time.Duration(p.Nanos); d > 0 {
			return d, nil
		}
	}
	return DefaultHeartbeatPeriod, nil
}

// sessionError explains why a manager did not open a session.
func sessionError(addr string, err error) error {
	if status.Code(err) == codes.NotFound {
		return fmt.Errorf("%w: manager %s does not know this node (%s); it cannot rejoin with its current identity: "+
			"stop swarmd, move its state dir aside and join again with a join token",
			ErrNodeRemoved, addr, status.Convert(err).Message())
	}
	return fmt.Errorf("open a session with manager %s: %w", addr, err)
}
