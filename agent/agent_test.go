package agent

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
)

// logRecorder is a slog handler that keeps records for assertions.
type logRecorder struct {
	mu      sync.Mutex
	records []slog.Record
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	r.records = append(r.records, rec)
	r.mu.Unlock()
	return nil
}
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *logRecorder) WithGroup(string) slog.Handler      { return r }

func (r *logRecorder) has(level slog.Level, msg string) bool { return r.count(level, msg) > 0 }

func (r *logRecorder) count(level slog.Level, msg string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, rec := range r.records {
		if rec.Level == level && rec.Message == msg {
			n++
		}
	}
	return n
}

func waitReady(t *testing.T, a *running) {
	t.Helper()
	select {
	case <-a.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("agent never established a session")
	}
}

// nextBackoff waits for the next reconnect timer the agent makes at index
// from or later, skipping heartbeat timers (the fake managers' period is an
// hour), and returns it with the index to continue from.
func nextBackoff(t *testing.T, clk *fakeClock, from int) (*fakeTimer, int) {
	t.Helper()
	for i := from; ; i++ {
		if tm := clk.timer(t, i); tm.d < time.Minute {
			return tm, i + 1
		}
	}
}

func TestSessionReportsDescriptionAndHeartbeatsAtThePeriod(t *testing.T) {
	fn := newFakeNet()
	m := fn.startManager(t, "m1")
	const period = 50 * time.Millisecond
	m.period = period
	a := runAgent(t, Config{Dial: fn.dial, Managers: []string{"m1"}})
	waitReady(t, a)

	req := m.request(0)
	if d := req.Description; d.GetHostname() != "host-1" || d.Engine.GetExecutor() != "sim" ||
		d.Engine.GetLabels()["rack"] != "r1" || d.Resources.GetNanoCPUs() <= 0 || d.Platform.GetOS() == "" {
		t.Errorf("session opened with description %v, want the sim executor's", d)
	}
	sid := m.sessions()[0]
	if got := a.SessionID(); got != sid {
		t.Errorf("SessionID() = %q, want %q", got, sid)
	}
	if n := a.Node(); n.GetID() != "node-1" {
		t.Errorf("Node() = %v, want the record the manager sent", n)
	}

	// Beats come every [0.75, 1.0) x period: 10 of them take at least
	// 9 x 0.75 x period after the first is seen (one may be in flight), and
	// well under a few seconds.
	waitFor(t, "first heartbeat", func() bool { return m.beatsOf(sid) >= 1 })
	b0, start := m.beatsOf(sid), time.Now()
	waitFor(t, "10 more heartbeats", func() bool { return m.beatsOf(sid) >= b0+10 })
	elapsed := time.Since(start)
	if low := time.Duration(9 * 0.75 * float64(period)); elapsed < low {
		t.Errorf("10 heartbeats in %s, want at least %s: the agent beats faster than the period", elapsed, low)
	}
	if high := 40 * period; elapsed > high {
		t.Errorf("10 heartbeats took %s, want well under %s", elapsed, high)
	}
}

func TestHeartbeatWaitsAJitteredFractionOfThePeriod(t *testing.T) {
	for _, tc := range []struct {
		name   string
		period time.Duration // what the manager answers; 0 = no period
		want   time.Duration // the period the agent must use
	}{
		{"period from the manager", 10 * time.Second, 10 * time.Second},
		{"default when the manager sends none", 0, DefaultHeartbeatPeriod},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fn := newFakeNet()
			m := fn.startManager(t, "m1")
			m.period = tc.period
			clk := newFakeClock()
			a := runAgent(t, Config{Dial: fn.dial, Managers: []string{"m1"}, Clock: clk})
			waitReady(t, a)
			sid := a.SessionID()

			var waits []time.Duration
			for i := range 20 {
				// The first heartbeat goes at once; each later one only when
				// the agent's timer fires.
				waitFor(t, "heartbeat", func() bool { return m.beatsOf(sid) == i+1 })
				tm := clk.timer(t, i)
				if got := m.beatsOf(sid); got != i+1 {
					t.Fatalf("%d heartbeats before timer %d fired, want %d", got, i, i+1)
				}
				if tm.d < tc.want*3/4 || tm.d >= tc.want {
					t.Errorf("heartbeat wait %s, want in [%s, %s)", tm.d, tc.want*3/4, tc.want)
				}
				waits = append(waits, tm.d)
				tm.fire(t)
			}
			slices.Sort(waits)
			if waits[0] == waits[len(waits)-1] {
				t.Errorf("every heartbeat wait is %s: no jitter", waits[0])
			}
		})
	}
}

func TestSessionMessagesUpdateTheNodeRecord(t *testing.T) {
	fn := newFakeNet()
	m := fn.startManager(t, "m1")
	a := runAgent(t, Config{Dial: fn.dial, Managers: []string{"m1"}, Clock: newFakeClock()})
	waitReady(t, a)

	m.send(t, &api.SessionMessage{Node: &api.Node{ID: "node-1", Role: api.NodeRoleManager}})
	waitFor(t, "node record update", func() bool { return a.Node().GetRole() == api.NodeRoleManager })
	n := a.Node()
	n.ID = "changed by the caller"
	if a.Node().GetID() != "node-1" {
		t.Error("Node() returns the agent's own record, want a copy")
	}
}

func TestHeartbeatNotFoundOpensANewSessionAtOnce(t *testing.T) {
	fn := newFakeNet()
	m := fn.startManager(t, "m1")
	var first string
	m.refuseBeat = func(sid string, _ int) error {
		if sid == first {
			return status.Error(codes.NotFound, "session replaced")
		}
		return nil
	}
	first = "m1/s0"
	clk := newFakeClock() // no timer is ever fired: a backoff would stall the test
	a := runAgent(t, Config{Dial: fn.dial, Managers: []string{"m1"}, Clock: clk})

	waitFor(t, "a second session", func() bool { return len(m.sessions()) == 2 })
	second := m.sessions()[1]
	waitFor(t, "a heartbeat on the second session", func() bool { return m.beatsOf(second) == 1 })
	waitFor(t, "the agent to take the new session", func() bool { return a.SessionID() == second })
	for i := range clk.count() {
		if tm := clk.timer(t, i); tm.d < time.Minute {
			t.Errorf("agent waited %s before the new session, want no backoff", tm.d)
		}
	}
}

func TestRepeatedHeartbeatNotFoundBacksOff(t *testing.T) {
	fn := newFakeNet()
	m := fn.startManager(t, "m1")
	m.refuseBeat = func(string, int) error { return status.Error(codes.NotFound, "unknown session") }
	clk := newFakeClock()
	runAgent(t, Config{Dial: fn.dial, Managers: []string{"m1"}, Clock: clk})

	// The first refusal reconnects at once; the new session is refused
	// before any heartbeat went through, so the next reconnect backs off
	// instead of spinning.
	tm, _ := nextBackoff(t, clk, 0)
	if got := m.calls(); got != 2 {
		t.Errorf("%d sessions before the backoff, want 2", got)
	}
	tm.fire(t)
	waitFor(t, "a session after the backoff", func() bool { return m.calls() >= 3 })
}

func TestStreamEndReconnectsWithGrowingJitteredBackoff(t *testing.T) {
	fn := newFakeNet()
	m1 := fn.startManager(t, "m1")
	m2 := fn.startManager(t, "m2")
	clk := newFakeClock()
	a := runAgent(t, Config{Dial: fn.dial, Managers: []string{"m1", "m2"}, Clock: clk})
	waitReady(t, a)

	mgrs := []*fakeManager{m1, m2}
	next := 0
	for attempt := range 8 {
		cur, other := mgrs[attempt%2], mgrs[(attempt+1)%2]
		waitFor(t, "session on "+cur.addr, func() bool { return cur.openStreams() == 1 })
		calls := other.calls()
		cur.endSessions()

		var tm *fakeTimer
		tm, next = nextBackoff(t, clk, next)
		window := min(maxBackoff, baseBackoff<<attempt)
		if tm.d < 0 || tm.d >= window {
			t.Errorf("backoff after failure %d = %s, want in [0, %s)", attempt, tm.d, window)
		}
		if got := other.calls(); got != calls {
			t.Fatalf("agent reconnected to %s before its backoff timer fired", other.addr)
		}
		tm.fire(t)
		// Round robin: the next session goes to the other manager.
		waitFor(t, "reconnect to "+other.addr, func() bool { return other.calls() == calls+1 })
	}
}

func TestManagersFromTheSessionAreUsedNext(t *testing.T) {
	fn := newFakeNet()
	m1 := fn.startManager(t, "m1")
	m2 := fn.startManager(t, "m2")
	m1.managers = []*api.WeightedPeer{{NodeID: "n2", Addr: "m2", Weight: 10}}
	var mu sync.Mutex
	var remembered [][]string
	a := runAgent(t, Config{Dial: fn.dial, Managers: []string{"dead", "m1"}, ManagersChanged: func(addrs []string) {
		mu.Lock()
		remembered = append(remembered, addrs)
		mu.Unlock()
	}})

	waitReady(t, a)
	// The node is told the new list (the manager's, then the seeds), once.
	waitFor(t, "the managers to be remembered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(remembered) == 1 && slices.Equal(remembered[0], []string{"m2", "dead", "m1"})
	})
	if got := m1.sessions(); len(got) != 1 {
		t.Fatalf("m1 sessions = %v, want one after skipping the dead address", got)
	}
	m1.endSessions()
	waitFor(t, "session on m2", func() bool { return len(m2.sessions()) == 1 })

	dials := fn.dialed()
	i := slices.Index(dials, "m1")
	if i < 0 || i+1 >= len(dials) || dials[i+1] != "m2" {
		t.Errorf("dialled %v, want m2 (from m1's list) right after m1", dials)
	}
}

// A follower refuses the session naming the leader: the agent goes there
// next, at once.
func TestAgentFollowsTheLeaderHint(t *testing.T) {
	fn := newFakeNet()
	follower := fn.startManager(t, "m1")
	follower.refuseSession = func(int) error { return status.Error(codes.Unavailable, "not the leader") }
	follower.leaderHint = "m3"
	fn.startManager(t, "m2")
	leader := fn.startManager(t, "m3")
	a := runAgent(t, Config{Dial: fn.dial, Managers: []string{"m1", "m2"}})

	waitReady(t, a)
	if got := leader.sessions(); len(got) != 1 {
		t.Fatalf("sessions on the leader: %v, want one", got)
	}
	if dials := fn.dialed(); !slices.Equal(dials[:2], []string{"m1", "m3"}) {
		t.Errorf("dialled %v, want m1 then the leader m3", dials)
	}
}

func TestSessionNotFoundStopsTheAgentAsRemoved(t *testing.T) {
	fn := newFakeNet()
	m := fn.startManager(t, "m1")
	m.refuseSession = func(int) error { return status.Error(codes.NotFound, "node node-1 not found") }
	a := runAgent(t, Config{Dial: fn.dial, Managers: []string{"m1"}})

	if err := a.wait(t); !errors.Is(err, ErrNodeRemoved) {
		t.Fatalf("Run = %v, want an error wrapping ErrNodeRemoved", err)
	}
	select {
	case <-a.Ready():
		t.Error("Ready closed without a session")
	default:
	}
}

func TestRefusedSessionIsLoggedAndBacksOff(t *testing.T) {
	for _, code := range []codes.Code{codes.PermissionDenied, codes.Unauthenticated} {
		t.Run(code.String(), func(t *testing.T) {
			fn := newFakeNet()
			m := fn.startManager(t, "m1")
			m.refuseSession = func(int) error { return status.Error(code, "certificate refused") }
			clk := newFakeClock()
			logs := &logRecorder{}
			a := runAgent(t, Config{Dial: fn.dial, Managers: []string{"m1"}, Clock: clk, Logger: slog.New(logs)})

			tm, _ := nextBackoff(t, clk, 0)
			if !logs.has(slog.LevelWarn, "manager refused the session") {
				t.Error("refusal not logged at warn")
			}
			if a.returned() {
				t.Fatalf("Run returned %v on %s, want it to keep trying", a.err, code)
			}
			tm.fire(t)
			waitFor(t, "a retry after the backoff", func() bool { return m.calls() == 2 })
		})
	}
}

func TestLongOutageIsReportedOnceAtWarn(t *testing.T) {
	fn := newFakeNet()
	clk := newFakeClock()
	logs := &logRecorder{}
	runAgent(t, Config{Dial: fn.dial, Managers: []string{"dead"}, Clock: clk, Logger: slog.New(logs)})
	const msg = "no session with any manager; still trying"

	start := clk.Now()
	next := 0
	for clk.Now().Sub(start) < 3*warnAfter {
		var tm *fakeTimer
		tm, next = nextBackoff(t, clk, next)
		if logs.has(slog.LevelWarn, msg) != (clk.Now().Sub(start) >= warnAfter) {
			t.Fatalf("after %s without a session: warned = %v, want a warning from %s on",
				clk.Now().Sub(start), logs.has(slog.LevelWarn, msg), warnAfter)
		}
		tm.fire(t)
	}
	if n := logs.count(slog.LevelWarn, msg); n != 1 {
		t.Errorf("outage reported %d times at warn, want once", n)
	}
}

func TestRunStopsPromptlyAndLeavesNothingRunning(t *testing.T) {
	t.Run("during a session", func(t *testing.T) {
		fn := newFakeNet()
		m := fn.startManager(t, "m1")
		m.period = 20 * time.Millisecond
		a := runAgent(t, Config{Dial: fn.dial, Managers: []string{"m1"}})
		waitReady(t, a)
		waitFor(t, "heartbeats", func() bool { return m.beatsOf(a.SessionID()) >= 2 })

		if err := a.stop(t); err != nil {
			t.Fatalf("Run = %v after its context ended, want nil", err)
		}
		if left := agentGoroutines(); len(left) > 0 {
			t.Errorf("agent goroutines left after Run returned:\n%s", strings.Join(left, "\n\n"))
		}
		waitFor(t, "the manager to see the stream closed", func() bool { return m.openStreams() == 0 })
		waitFor(t, "the manager to see the connection closed", func() bool { return m.openConns() == 0 })
		if a.SessionID() != "" {
			t.Errorf("SessionID() = %q after Run returned, want empty", a.SessionID())
		}
	})
	t.Run("during a backoff", func(t *testing.T) {
		fn := newFakeNet()
		clk := newFakeClock()
		a := runAgent(t, Config{Dial: fn.dial, Managers: []string{"dead"}, Clock: clk})
		nextBackoff(t, clk, 0)
		if err := a.stop(t); err != nil {
			t.Fatalf("Run = %v after its context ended, want nil", err)
		}
		if left := agentGoroutines(); len(left) > 0 {
			t.Errorf("agent goroutines left after Run returned:\n%s", strings.Join(left, "\n\n"))
		}
	})
}

func TestRunRefusesAnIncompleteConfig(t *testing.T) {
	fn := newFakeNet()
	for name, cfg := range map[string]Config{
		"no managers": {Dial: fn.dial},
		"no dial":     {Managers: []string{"m1"}},
	} {
		t.Run(name, func(t *testing.T) {
			if err := runAgent(t, cfg).wait(t); err == nil {
				t.Error("Run = nil, want a configuration error")
			}
		})
	}
}
