package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gogo/protobuf/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/test/bufconn"

	"github.com/flotilla/flotilla/agent/exec/sim"
	"github.com/flotilla/flotilla/api"
)

// waitFor polls cond until it holds or a generous deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// fakeNet is an in-memory network of managers reached by name.
type fakeNet struct {
	mu    sync.Mutex
	lis   map[string]*bufconn.Listener
	dials []string
}

func newFakeNet() *fakeNet { return &fakeNet{lis: map[string]*bufconn.Listener{}} }

// dial is a Config.Dial: addresses nobody listens on fail to connect.
func (n *fakeNet) dial(ctx context.Context, addr string) (*grpc.ClientConn, error) {
	n.mu.Lock()
	n.dials = append(n.dials, addr)
	n.mu.Unlock()
	return grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, target string) (net.Conn, error) {
			n.mu.Lock()
			l := n.lis[target]
			n.mu.Unlock()
			if l == nil {
				return nil, fmt.Errorf("connection refused: nothing listens at %s", target)
			}
			return l.DialContext(ctx)
		}))
}

func (n *fakeNet) dialed() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.dials...)
}

// fakeManager is a Dispatcher that records what agents do and misbehaves on
// demand.
type fakeManager struct {
	api.UnimplementedDispatcherServer
	addr string

	mu         sync.Mutex
	requests   []*api.SessionRequest // every Session call
	sessionIDs []string              // sessions opened, in order
	beats      map[string]int        // accepted heartbeats per session
	open       map[string]*fakeStream
	conns      int                 // open connections from agents
	managers   []*api.WeightedPeer // sent in every first message
	period     time.Duration       // in heartbeat answers; 0 sends none
	// refuseSession, if set, answers Session call n (0-based) with an error.
	refuseSession func(n int) error
	// leaderHint, if set, goes with a refusal as api.LeaderTrailer.
	leaderHint string
	// refuseBeat, if set, answers heartbeat n (0-based) of a session with an error.
	refuseBeat func(sessionID string, n int) error

	dispatch fakeDispatch // Assignments and UpdateTaskStatus (fakes_tasks_test.go)
}

type fakeStream struct {
	end  chan struct{}
	push chan *api.SessionMessage
}

func (n *fakeNet) startManager(t *testing.T, addr string) *fakeManager {
	t.Helper()
	m := &fakeManager{addr: addr, beats: map[string]int{}, open: map[string]*fakeStream{}, period: time.Hour}
	m.dispatch.init()
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	api.RegisterDispatcherServer(srv, m)
	go srv.Serve(&countingListener{Listener: lis, m: m})
	t.Cleanup(srv.Stop)
	n.mu.Lock()
	n.lis[addr] = lis
	n.mu.Unlock()
	return m
}

func (m *fakeManager) Session(req *api.SessionRequest, stream api.Dispatcher_SessionServer) error {
	m.mu.Lock()
	n := len(m.requests)
	m.requests = append(m.requests, req)
	refuse, hint := m.refuseSession, m.leaderHint
	m.mu.Unlock()
	if refuse != nil {
		if err := refuse(n); err != nil {
			if hint != "" {
				stream.SetTrailer(metadata.Pairs(api.LeaderTrailer, hint))
			}
			return err
		}
	}
	id := fmt.Sprintf("%s/s%d", m.addr, n)
	fs := &fakeStream{end: make(chan struct{}), push: make(chan *api.SessionMessage)}
	m.mu.Lock()
	m.open[id] = fs
	m.sessionIDs = append(m.sessionIDs, id)
	managers := m.managers
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.open, id)
		m.mu.Unlock()
	}()
	first := &api.SessionMessage{SessionID: id, Node: &api.Node{ID: "node-1"}, Managers: managers}
	if err := stream.Send(first); err != nil {
		return err
	}
	for {
		select {
		case <-stream.Context().Done():
			return stream.Context().Err()
		case <-fs.end:
			return nil
		case msg := <-fs.push:
			if err := stream.Send(msg); err != nil {
				return err
			}
		}
	}
}

func (m *fakeManager) Heartbeat(ctx context.Context, req *api.HeartbeatRequest) (*api.HeartbeatResponse, error) {
	m.mu.Lock()
	n := m.beats[req.SessionID]
	refuse, period := m.refuseBeat, m.period
	m.mu.Unlock()
	if refuse != nil {
		if err := refuse(req.SessionID, n); err != nil {
			return nil, err
		}
	}
	m.mu.Lock()
	m.beats[req.SessionID]++
	m.mu.Unlock()
	resp := &api.HeartbeatResponse{}
	if period > 0 {
		resp.Period = types.DurationProto(period)
	}
	return resp, nil
}

// endSessions ends every open session stream (as a manager that stops
// leading does).
func (m *fakeManager) endSessions() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range m.open {
		close(s.end)
	}
	clear(m.open)
}

// send sends msg on every open session stream.
func (m *fakeManager) send(t *testing.T, msg *api.SessionMessage) {
	m.mu.Lock()
	var streams []*fakeStream
	for _, s := range m.open {
		streams = append(streams, s)
	}
	m.mu.Unlock()
	for _, s := range streams {
		select {
		case s.push <- msg:
		case <-time.After(10 * time.Second):
			t.Fatal("session stream does not take a message")
		}
	}
}

func (m *fakeManager) sessions() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.sessionIDs...)
}

func (m *fakeManager) request(i int) *api.SessionRequest {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.requests[i]
}

func (m *fakeManager) calls() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.requests)
}

func (m *fakeManager) beatsOf(sessionID string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.beats[sessionID]
}

// countingListener counts a manager's open connections.
type countingListener struct {
	net.Listener
	m *fakeManager
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.m.mu.Lock()
	l.m.conns++
	l.m.mu.Unlock()
	return &countedConn{Conn: c, m: l.m}, nil
}

type countedConn struct {
	net.Conn
	m    *fakeManager
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() {
		c.m.mu.Lock()
		c.m.conns--
		c.m.mu.Unlock()
	})
	return c.Conn.Close()
}

func (m *fakeManager) openConns() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.conns
}

func (m *fakeManager) openStreams() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.open)
}

// fakeClock is a Clock whose timers fire only when a test fires them.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer // every timer made, in order
}

type fakeTimer struct {
	clock    *fakeClock
	d        time.Duration
	deadline time.Time
	ch       chan time.Time
	done     bool // fired or stopped
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Unix(1_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{clock: c, d: d, deadline: c.now.Add(d), ch: make(chan time.Time, 1)}
	c.timers = append(c.timers, t)
	return t
}

func (t *fakeTimer) C() <-chan time.Time { return t.ch }

func (t *fakeTimer) Stop() bool {
	t.clock.mu.Lock()
	defer t.clock.mu.Unlock()
	was := !t.done
	t.done = true
	return was
}

// fire moves the clock to the timer's deadline and fires it.
func (t *fakeTimer) fire(tb testing.TB) {
	tb.Helper()
	t.clock.mu.Lock()
	defer t.clock.mu.Unlock()
	if t.done {
		tb.Fatalf("firing a timer (%s) that was stopped or fired", t.d)
	}
	t.done = true
	if t.deadline.After(t.clock.now) {
		t.clock.now = t.deadline
	}
	t.ch <- t.clock.now
}

// timer waits for the i-th timer (0-based) the agent makes.
func (c *fakeClock) timer(t *testing.T, i int) *fakeTimer {
	t.Helper()
	var ft *fakeTimer
	waitFor(t, fmt.Sprintf("timer %d", i), func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		if len(c.timers) > i {
			ft = c.timers[i]
			return true
		}
		return false
	})
	return ft
}

func (c *fakeClock) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// running is an agent whose Run goes on in the background.
type running struct {
	*Agent
	cancel context.CancelFunc
	done   chan struct{} // closed when Run returned
	err    error         // Run's result, once done
}

// runAgent runs an agent until the test ends (or stop). Its logs go to the
// test log unless cfg has a logger.
func runAgent(t *testing.T, cfg Config) *running {
	t.Helper()
	if cfg.Executor == nil {
		cfg.Executor = sim.New("host-1", map[string]string{"rack": "r1"})
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Agent: New(cfg), cancel: cancel, done: make(chan struct{})}
	go func() {
		r.err = r.Run(ctx)
		close(r.done)
	}()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// wait waits for Run to return by itself and gives its result.
func (r *running) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-r.done:
		return r.err
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
		return nil
	}
}

// stop ends Run's context and gives Run's result; Run must return promptly.
func (r *running) stop(t *testing.T) error {
	t.Helper()
	r.cancel()
	select {
	case <-r.done:
		return r.err
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
		return nil
	}
}

// returned reports whether Run has returned.
func (r *running) returned() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// agentGoroutines lists the stacks of goroutines still in agent code: the
// session loop, the task runner, task steps, the task DB. Goroutines on
// their way out (bbolt ends a batch's goroutine after its callers have
// their results) get up to 2s to finish.
func agentGoroutines() []string {
	deadline := time.Now().Add(2 * time.Second)
	for {
		left := agentGoroutinesNow()
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func agentGoroutinesNow() []string {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	var left []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, code := range []string{
			"flotilla/agent.(*Agent)", "flotilla/agent.(*worker)", "flotilla/agent.(*taskManager)",
			"flotilla/agent.(*reporter)", "flotilla/agent/exec", "flotilla/agent/taskdb", "go.etcd.io/bbolt",
		} {
			if strings.Contains(g, code) {
				left = append(left, g)
				break
			}
		}
	}
	return left
}
