package exec

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/clock"
)

var t0 = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// TestHealthTrackerFollowsDockerSemantics replays check results (when each
// started, pass or fail) and checks the health after each.
func TestHealthTrackerFollowsDockerSemantics(t *testing.T) {
	type check struct {
		at   time.Duration // since the start
		pass bool
		want api.HealthState
	}
	cases := []struct {
		name   string
		cfg    HealthCheck
		checks []check
	}{
		{"pass makes healthy", HealthCheck{Retries: 3}, []check{
			{10 * time.Second, true, api.HealthHealthy},
		}},
		{"unhealthy after Retries failures in a row", HealthCheck{Retries: 3}, []check{
			{10 * time.Second, false, api.HealthStarting},
			{20 * time.Second, false, api.HealthStarting},
			{30 * time.Second, false, api.HealthUnhealthy},
		}},
		{"a pass resets the streak", HealthCheck{Retries: 2}, []check{
			{1 * time.Second, false, api.HealthStarting},
			{2 * time.Second, true, api.HealthHealthy},
			{3 * time.Second, false, api.HealthHealthy},
			{4 * time.Second, true, api.HealthHealthy},
			{5 * time.Second, false, api.HealthHealthy},
			{6 * time.Second, false, api.HealthUnhealthy},
		}},
		{"failures in the start period do not count", HealthCheck{Retries: 1, StartPeriod: 30 * time.Second}, []check{
			{5 * time.Second, false, api.HealthStarting},
			{10 * time.Second, false, api.HealthStarting},
			{29 * time.Second, false, api.HealthStarting},
			{30 * time.Second, false, api.HealthUnhealthy},
		}},
		{"a pass ends the start period", HealthCheck{Retries: 1, StartPeriod: time.Minute}, []check{
			{5 * time.Second, true, api.HealthHealthy},
			{10 * time.Second, false, api.HealthUnhealthy},
		}},
		{"default retries are 3", HealthCheck{}, []check{
			{1 * time.Second, false, api.HealthStarting},
			{2 * time.Second, false, api.HealthStarting},
			{3 * time.Second, false, api.HealthUnhealthy},
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tr := NewHealthTracker(c.cfg, t0, api.HealthNone)
			if tr.State() != api.HealthStarting {
				t.Fatalf("initial state %v, want starting", tr.State())
			}
			for i, ch := range c.checks {
				before := tr.State()
				changed := tr.Record(t0.Add(ch.at), ch.pass, "out")
				if tr.State() != ch.want || changed != (before != ch.want) {
					t.Fatalf("check %d (at %v, pass %v): state %v (changed %v), want %v",
						i, ch.at, ch.pass, tr.State(), changed, ch.want)
				}
			}
		})
	}
}

func TestHealthTrackerSchedule(t *testing.T) {
	tr := NewHealthTracker(HealthCheck{Interval: 10 * time.Second, StartPeriod: 12 * time.Second, StartInterval: 2 * time.Second}, t0, api.HealthNone)
	// Starting, in the start period: every StartInterval.
	if got := tr.Next(t0); !got.Equal(t0.Add(2 * time.Second)) {
		t.Errorf("first check at %v, want start + 2s", got.Sub(t0))
	}
	if got := tr.Next(t0.Add(11 * time.Second)); !got.Equal(t0.Add(13 * time.Second)) {
		t.Errorf("check after 11s at %v, want 13s", got.Sub(t0))
	}
	// After the start period: every Interval.
	if got := tr.Next(t0.Add(12 * time.Second)); !got.Equal(t0.Add(22 * time.Second)) {
		t.Errorf("check after 12s at %v, want 22s", got.Sub(t0))
	}
	// Healthy within the start period: every Interval.
	tr.Record(t0.Add(time.Second), true, "")
	if got := tr.Next(t0.Add(time.Second)); !got.Equal(t0.Add(11 * time.Second)) {
		t.Errorf("healthy: next check at %v, want 11s", got.Sub(t0))
	}
	// Without a start period the start interval never applies.
	tr = NewHealthTracker(HealthCheck{Interval: time.Second}, t0, api.HealthNone)
	if got := tr.Next(t0); !got.Equal(t0.Add(time.Second)) {
		t.Errorf("no start period: first check at %v, want 1s", got.Sub(t0))
	}
}

func TestHealthTrackerKeepsTheHealthItResumesFrom(t *testing.T) {
	tr := NewHealthTracker(HealthCheck{Retries: 1, StartPeriod: time.Hour}, t0, api.HealthHealthy)
	// Healthy already: the start period no longer shields failures.
	if !tr.Record(t0.Add(time.Second), false, "down") || tr.State() != api.HealthUnhealthy || tr.Output() != "down" {
		t.Fatalf("state %v output %q, want unhealthy, down", tr.State(), tr.Output())
	}
}

func TestHealthConfigMergeAndCommand(t *testing.T) {
	image := &HealthConfig{Test: []string{"CMD", "check"}, Interval: time.Second, Timeout: 2 * time.Second, Retries: 5, StartInterval: time.Millisecond}
	cases := []struct {
		name    string
		spec    *HealthConfig
		want    *HealthConfig
		enabled bool
	}{
		{"no spec: the image's", nil, image, true},
		{"spec without test: image's test, spec's timings",
			&HealthConfig{Interval: 7 * time.Second},
			&HealthConfig{Test: []string{"CMD", "check"}, Interval: 7 * time.Second, Timeout: 2 * time.Second, Retries: 5, StartInterval: time.Millisecond}, true},
		{"spec test overrides",
			&HealthConfig{Test: []string{"CMD-SHELL", "true"}},
			&HealthConfig{Test: []string{"CMD-SHELL", "true"}, Interval: time.Second, Timeout: 2 * time.Second, Retries: 5, StartInterval: time.Millisecond}, true},
		{"NONE disables", &HealthConfig{Test: []string{"NONE"}},
			&HealthConfig{Test: []string{"NONE"}, Interval: time.Second, Timeout: 2 * time.Second, Retries: 5, StartInterval: time.Millisecond}, false},
	}
	for _, c := range cases {
		got := c.spec.Merge(image)
		if !reflect.DeepEqual(got, c.want) || got.Enabled() != c.enabled {
			t.Errorf("%s: %+v (enabled %v), want %+v (%v)", c.name, got, got.Enabled(), c.want, c.enabled)
		}
	}
	if (*HealthConfig)(nil).Merge(nil) != nil {
		t.Error("no spec and no image: want no check")
	}
	if got := (&HealthConfig{Test: []string{"CMD"}}).Merge(nil); got.Enabled() {
		if _, err := got.Command(); err == nil {
			t.Error(`["CMD"] without a command: want an error`)
		}
	}
	for test, want := range map[string][]string{
		"CMD|ls|-l":         {"ls", "-l"},
		"CMD-SHELL|exit 1":  {"/bin/sh", "-c", "exit 1"},
		"CMD-SHELL|a|b":     nil,
		"SHELL|true":        nil,
		"CMD-SHELL|":        nil,
		"CMD|":              nil,
		"NONE":              nil,
		"CMD|sh|-c|exit 0 ": {"sh", "-c", "exit 0 "},
	} {
		got, err := (&HealthConfig{Test: strings.Split(test, "|")}).Command()
		if !reflect.DeepEqual(got, want) || (err == nil) != (want != nil) {
			t.Errorf("Command of %q = %q, %v; want %q", test, got, err, want)
		}
	}
}

// probeCall is one run of a fake probe: the test answers on reply, or lets
// it hang until its ctx ends.
type probeCall struct {
	ctx   context.Context
	reply chan probeReply
}

type probeReply struct {
	r   ProbeResult
	err error
}

func fakeProbe(calls chan<- probeCall) func(context.Context) (ProbeResult, error) {
	return func(ctx context.Context) (ProbeResult, error) {
		c := probeCall{ctx: ctx, reply: make(chan probeReply, 1)}
		calls <- c
		select {
		case r := <-c.reply:
			return r.r, r.err
		case <-ctx.Done():
			return ProbeResult{}, ctx.Err()
		}
	}
}

// waitNext waits until the monitor has armed the timer of its next check,
// due at want.
func waitNext(t *testing.T, waiting <-chan time.Time, want time.Time) {
	t.Helper()
	select {
	case next := <-waiting:
		if !next.Equal(want) {
			t.Fatalf("next check due at start+%v, want start+%v", next.Sub(t0), want.Sub(t0))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the monitor did not arm the timer of its next check")
	}
}

func nextCall(t *testing.T, calls <-chan probeCall) probeCall {
	t.Helper()
	select {
	case c := <-calls:
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("the probe was not run")
		return probeCall{}
	}
}

func nextReport(t *testing.T, reports <-chan HealthReport) HealthReport {
	t.Helper()
	select {
	case r := <-reports:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("no health report")
		return HealthReport{}
	}
}

// TestHealthMonitorRunsTheScheduleUnderItsClock drives a monitor with a fake
// clock: starting, a pass (healthy), a failure (not enough), a temporary
// error (not counted), a probe that hangs (killed at the timeout, counted):
// unhealthy, and Run returns.
func TestHealthMonitorRunsTheScheduleUnderItsClock(t *testing.T) {
	clk := clock.NewFake(t0)
	calls := make(chan probeCall)
	reports := make(chan HealthReport, 10)
	var temporary []error
	check := HealthCheck{Interval: 10 * time.Second, Timeout: 3 * time.Second, Retries: 2, Probe: fakeProbe(calls)}
	m := NewHealthMonitor(check, clk, t0, api.HealthNone, func(r HealthReport) { reports <- r },
		func(err error) { temporary = append(temporary, err) })
	waiting := make(chan time.Time, 1)
	m.waiting = func(next time.Time) { waiting <- next }
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan error, 1)
	go func() { ran <- m.Run(ctx) }()

	if r := nextReport(t, reports); r.State != api.HealthStarting {
		t.Fatalf("first report %v, want starting", r.State)
	}
	waitNext(t, waiting, t0.Add(10*time.Second))
	clk.Advance(9 * time.Second)
	select {
	case <-calls:
		t.Fatal("probe ran before the interval")
	default:
	}
	clk.Advance(time.Second)
	nextCall(t, calls).reply <- probeReply{r: ProbeResult{ExitCode: 0, Output: "ok"}}
	if r := nextReport(t, reports); r.State != api.HealthHealthy || r.Output != "" {
		t.Fatalf("after a pass: %+v, want healthy", r)
	}

	waitNext(t, waiting, t0.Add(20*time.Second))
	clk.Advance(10 * time.Second)
	nextCall(t, calls).reply <- probeReply{r: ProbeResult{ExitCode: 1, Output: "first failure"}}
	waitNext(t, waiting, t0.Add(30*time.Second))
	clk.Advance(10 * time.Second)
	nextCall(t, calls).reply <- probeReply{err: Temporary(errors.New("runtime unreachable"))}
	waitNext(t, waiting, t0.Add(40*time.Second))
	clk.Advance(10 * time.Second)
	hung := nextCall(t, calls)
	clk.Advance(2 * time.Second)
	select {
	case <-hung.ctx.Done():
		t.Fatal("the probe was cancelled before its timeout")
	default:
	}
	clk.Advance(time.Second)
	r := nextReport(t, reports)
	if r.State != api.HealthUnhealthy || !strings.Contains(r.Output, "timeout (3s)") {
		t.Fatalf("after a failure and a timeout: %+v, want unhealthy with the timeout", r)
	}
	if err := <-ran; err != nil {
		t.Fatalf("Run after unhealthy: %v, want nil", err)
	}
	if len(temporary) != 1 {
		t.Errorf("temporary errors reported: %v, want the one", temporary)
	}
	select {
	case r := <-reports:
		t.Errorf("unexpected report %+v", r)
	default:
	}
}

func TestHealthMonitorStopsWithItsContext(t *testing.T) {
	clk := clock.NewFake(t0)
	calls := make(chan probeCall)
	m := NewHealthMonitor(HealthCheck{Interval: time.Second, Probe: fakeProbe(calls)}, clk, t0, api.HealthNone,
		func(HealthReport) {}, nil)
	waiting := make(chan time.Time, 1)
	m.waiting = func(next time.Time) { waiting <- next }
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- m.Run(ctx) }()
	waitNext(t, waiting, t0.Add(time.Second))
	clk.Advance(time.Second)
	c := nextCall(t, calls)
	cancel()
	<-c.ctx.Done()
	if err := <-ran; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v, want context.Canceled", err)
	}
}

func TestTailOutputKeepsTheEnd(t *testing.T) {
	long := strings.Repeat("a", MaxHealthOutput) + "END"
	got := TailOutput([]byte(long))
	if len(got) != MaxHealthOutput || !strings.HasSuffix(got, "END") {
		t.Fatalf("len %d, suffix %q", len(got), got[len(got)-3:])
	}
}

// stoppableController is a running task: Wait blocks until Shutdown (then
// it returns exit 143) or its ctx ends; the calls are recorded.
type stoppableController struct {
	fakeController
	stopped chan struct{}
	waiting chan struct{} // receives each call of Wait, if set
}

func (c *stoppableController) Wait(ctx context.Context) error {
	c.call("wait")
	if c.waiting != nil {
		c.waiting <- struct{}{}
	}
	select {
	case <-c.stopped:
		return &ExitError{Code: 143}
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *stoppableController) Shutdown(context.Context) error {
	c.call("shutdown")
	close(c.stopped)
	return nil
}

func TestUnhealthyTaskIsStoppedAndFailed(t *testing.T) {
	c := &stoppableController{stopped: make(chan struct{}), waiting: make(chan struct{}, 2)}
	unhealthy := make(chan struct{})
	ctlr := StopWhenUnhealthy(c, unhealthy, func() error { return fmt.Errorf("%w: boom", ErrUnhealthy) })
	done := make(chan *api.TaskStatus, 1)
	go func() {
		st, err := Do(context.Background(), task(api.TaskStateRunning, api.TaskStateRunning), ctlr)
		if err != nil {
			t.Errorf("Do: %v", err)
		}
		done <- st
	}()
	<-c.waiting
	close(unhealthy)
	st := <-done
	if st.State != api.TaskStateFailed || st.Err != "task exited with code 143: container is unhealthy: boom" ||
		st.ContainerStatus.GetExitCode() != 143 {
		t.Fatalf("status %v: want FAILED, exit 143, the unhealthy cause", st)
	}
	if want := []string{"wait", "shutdown", "wait"}; !slices.Equal(c.calls, want) {
		t.Errorf("calls %v, want %v (one at a time)", c.calls, want)
	}
	// Already unhealthy when Wait is called: stopped at once.
	c = &stoppableController{stopped: make(chan struct{})}
	st, _ = Do(context.Background(), task(api.TaskStateRunning, api.TaskStateRunning),
		StopWhenUnhealthy(c, unhealthy, func() error { return ErrUnhealthy }))
	if st.State != api.TaskStateFailed || !strings.Contains(st.Err, "container is unhealthy") || !slices.Equal(c.calls, []string{"shutdown", "wait"}) {
		t.Errorf("status %v, calls %v", st, c.calls)
	}
}
