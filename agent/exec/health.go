package exec

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/gogo/protobuf/types"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/clock"
)

// Health checks, with Docker's semantics
// (https://docs.docker.com/reference/dockerfile/#healthcheck):
//
//   - the first check runs one interval after the task started, each next
//     one an interval after the previous one ended;
//   - a check that exits 0 passes; any other exit, a check that could not be
//     run, and one still running after the timeout (it is killed) fail;
//   - the task is starting until a check passes (healthy); it turns
//     unhealthy after Retries consecutive failures;
//   - failures during the start period do not count while the task is still
//     starting, but a pass during it ends it; during the start period the
//     checks of a starting task run every StartInterval instead of Interval.
//
// The executor says what to run (ContainerHealth); HealthTracker is the
// pure schedule and HealthMonitor runs it under a clock. The agent fails a
// task that turns unhealthy (ErrUnhealthy), and the restart policy replaces
// it.

// Docker's health check defaults, for a zero field.
const (
	DefaultHealthInterval      = 30 * time.Second
	DefaultHealthTimeout       = 30 * time.Second
	DefaultHealthRetries       = 3
	DefaultHealthStartInterval = 5 * time.Second
	// MaxHealthOutput is how much of a check's output is kept (its end).
	MaxHealthOutput = 4096
)

// ErrUnhealthy is the cause of the failure of a task whose health check
// failed Retries times in a row.
var ErrUnhealthy = errors.New("container is unhealthy")

// ContainerHealth is an optional Controller capability: a health check run
// inside the task while it runs.
type ContainerHealth interface {
	// HealthCheck returns the task's effective health check, or nil when it
	// has none (none configured, or disabled with Test ["NONE"]). The agent
	// calls it once the task runs, from its own goroutine, concurrently with
	// the Controller's other methods (but never after Close). A Temporary
	// error is retried; any other means the check cannot be set up (it is
	// logged and the task runs unchecked).
	HealthCheck(ctx context.Context) (*HealthCheck, error)
}

// HealthCheck is a task's health check: its schedule and its probe.
// WithDefaults fills in zero fields.
type HealthCheck struct {
	Interval      time.Duration
	Timeout       time.Duration
	StartPeriod   time.Duration
	StartInterval time.Duration
	Retries       int
	// Probe runs the check once, in the task's container, and returns its
	// exit code and (the end of) its output. It must return soon after ctx
	// ends (the check's timeout), having killed what it started. An error
	// means the check could not be run: a Temporary one (the runtime is
	// unreachable) is not counted, any other counts as a failure.
	Probe func(ctx context.Context) (ProbeResult, error)
}

// ProbeResult is the outcome of one run of a health check.
type ProbeResult struct {
	// ExitCode 0 passes, anything else fails.
	ExitCode int
	// Output is the check's stdout and stderr, at most MaxHealthOutput
	// bytes (the last ones).
	Output string
}

// WithDefaults returns h with Docker's defaults for its zero fields.
func (h HealthCheck) WithDefaults() HealthCheck {
	if h.Interval <= 0 {
		h.Interval = DefaultHealthInterval
	}
	if h.Timeout <= 0 {
		h.Timeout = DefaultHealthTimeout
	}
	if h.Retries <= 0 {
		h.Retries = DefaultHealthRetries
	}
	if h.StartInterval <= 0 {
		h.StartInterval = DefaultHealthStartInterval
	}
	if h.StartPeriod < 0 {
		h.StartPeriod = 0
	}
	return h
}

// HealthTracker is the pure state of a health check: when the next check is
// due, and the health the results so far make. Its zero value is not
// usable: see NewHealthTracker.
type HealthTracker struct {
	cfg     HealthCheck
	started time.Time
	state   api.HealthState
	streak  int // consecutive counted failures
	output  string
}

// NewHealthTracker tracks a check (defaults filled in) of a task that
// started at started. initial is the health to start from: HealthNone or
// HealthStarting for a task that just started; a restarted agent passes
// what it reported before, so that a healthy task does not go back to
// starting.
func NewHealthTracker(cfg HealthCheck, started time.Time, initial api.HealthState) *HealthTracker {
	if initial == api.HealthNone {
		initial = api.HealthStarting
	}
	return &HealthTracker{cfg: cfg.WithDefaults(), started: started, state: initial}
}

// State is the current health.
func (t *HealthTracker) State() api.HealthState { return t.state }

// Output is the output of the last check that failed (empty once one
// passes).
func (t *HealthTracker) Output() string { return t.output }

// FailingStreak is the number of consecutive failures counted so far.
func (t *HealthTracker) FailingStreak() int { return t.streak }

// inStartPeriod reports whether at is within the start period.
func (t *HealthTracker) inStartPeriod(at time.Time) bool {
	return at.Sub(t.started) < t.cfg.StartPeriod
}

// Next is when the next check is due, the previous one having ended at
// last (the start time for the first check).
func (t *HealthTracker) Next(last time.Time) time.Time {
	if t.state == api.HealthStarting && t.inStartPeriod(last) {
		return last.Add(t.cfg.StartInterval)
	}
	return last.Add(t.cfg.Interval)
}

// Record takes in the result of a check that started at start: pass says it
// passed, output is what it printed (or why it failed). It returns whether
// the health changed.
func (t *HealthTracker) Record(start time.Time, pass bool, output string) bool {
	before := t.state
	if pass {
		t.streak, t.output = 0, ""
		t.state = api.HealthHealthy
		return t.state != before
	}
	t.output = output
	if t.state == api.HealthStarting && t.inStartPeriod(start) {
		return false // does not count
	}
	t.streak++
	if t.streak >= t.cfg.Retries {
		t.state = api.HealthUnhealthy
	}
	return t.state != before
}

// HealthReport is a change of a task's health.
type HealthReport struct {
	State api.HealthState
	// Output is the output of the last failed check (why the task is
	// unhealthy), empty after a pass.
	Output string
}

// HealthMonitor runs a task's health check on its schedule.
type HealthMonitor struct {
	check   HealthCheck
	clock   clock.Clock
	tracker *HealthTracker
	// Report receives the initial health and each change, from Run's
	// goroutine.
	report func(HealthReport)
	// onError receives the probe errors that are not counted (temporary).
	onError func(error)
	// waiting, if set (tests), is told when the next check is due, once its
	// timer is armed.
	waiting func(next time.Time)
}

// NewHealthMonitor returns a monitor of check for a task that started at
// started with health initial (see NewHealthTracker). report receives each
// change; onError (if not nil) the temporary probe errors, which are not
// counted. Nothing runs before Run.
func NewHealthMonitor(check HealthCheck, clk clock.Clock, started time.Time, initial api.HealthState,
	report func(HealthReport), onError func(error)) *HealthMonitor {
	check = check.WithDefaults()
	return &HealthMonitor{
		check:   check,
		clock:   clk,
		tracker: NewHealthTracker(check, started, initial),
		report:  report,
		onError: onError,
	}
}

// Run reports the initial health, then runs the checks until ctx ends or
// the task turns unhealthy (it is not checked further: the agent fails it),
// reporting each change. It returns ctx's error, or nil after unhealthy.
func (m *HealthMonitor) Run(ctx context.Context) error {
	t := m.tracker
	m.report(HealthReport{State: t.State(), Output: t.Output()})
	if t.State() == api.HealthUnhealthy {
		return nil
	}
	last := t.started
	for {
		next := t.Next(last)
		timer := m.clock.TimerAt(next)
		if m.waiting != nil {
			m.waiting(next)
		}
		select {
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		case <-timer.C():
		}
		start := m.clock.Now()
		pass, output, counted := m.probe(ctx, start)
		last = m.clock.Now()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !counted {
			continue
		}
		if t.Record(start, pass, output) {
			m.report(HealthReport{State: t.State(), Output: t.Output()})
			if t.State() == api.HealthUnhealthy {
				return nil
			}
		}
	}
}

// probe runs the check once with its timeout. counted is false for a
// result that does not count (a temporary error, or ctx ended).
func (m *HealthMonitor) probe(ctx context.Context, start time.Time) (pass bool, output string, counted bool) {
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The timeout runs on the monitor's clock (a fake one in tests), armed
	// before the probe starts.
	timer := m.clock.TimerAt(start.Add(m.check.Timeout))
	defer timer.Stop()
	type result struct {
		r   ProbeResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		r, err := m.check.Probe(pctx)
		done <- result{r, err}
	}()
	var res result
	timedOut := false
	select {
	case res = <-done:
	case <-timer.C():
		timedOut = true
		cancel()
		res = <-done // the probe kills what it started
	case <-ctx.Done():
		cancel()
		<-done
		return false, "", false
	}
	switch {
	case timedOut:
		return false, fmt.Sprintf("health check exceeded its timeout (%v)", m.check.Timeout), true
	case res.err != nil && IsTemporary(res.err):
		if m.onError != nil {
			m.onError(res.err)
		}
		return false, "", false
	case res.err != nil:
		return false, res.err.Error(), true
	}
	return res.r.ExitCode == 0, res.r.Output, true
}

// HealthConfig is a health check as a service spec or an image config
// (Docker's config.Healthcheck) gives it: zero fields inherit (see Merge)
// or take Docker's defaults.
type HealthConfig struct {
	// Test is ["NONE"] (disabled), ["CMD", args...], ["CMD-SHELL", command]
	// or empty (inherit the image's).
	Test          []string
	Interval      time.Duration
	Timeout       time.Duration
	StartPeriod   time.Duration
	StartInterval time.Duration
	Retries       int
}

// HealthConfigFromSpec converts a spec's health check; nil for none.
func HealthConfigFromSpec(h *api.HealthConfig) *HealthConfig {
	if h == nil {
		return nil
	}
	return &HealthConfig{
		Test:        append([]string(nil), h.Test...),
		Interval:    durationOf(h.Interval),
		Timeout:     durationOf(h.Timeout),
		StartPeriod: durationOf(h.StartPeriod),
		Retries:     int(h.Retries),
	}
}

// Merge returns h over base as Docker merges a container's health check
// with its image's: no h is base; an h without a Test takes base's; each
// zero field of h takes base's. Neither is modified.
func (h *HealthConfig) Merge(base *HealthConfig) *HealthConfig {
	if h == nil {
		if base == nil {
			return nil
		}
		c := *base
		c.Test = append([]string(nil), base.Test...)
		return &c
	}
	c := *h
	c.Test = append([]string(nil), h.Test...)
	if base == nil {
		return &c
	}
	if len(c.Test) == 0 {
		c.Test = append([]string(nil), base.Test...)
	}
	for _, f := range []struct{ dst, src *time.Duration }{
		{&c.Interval, &base.Interval}, {&c.Timeout, &base.Timeout},
		{&c.StartPeriod, &base.StartPeriod}, {&c.StartInterval, &base.StartInterval},
	} {
		if *f.dst == 0 {
			*f.dst = *f.src
		}
	}
	if c.Retries == 0 {
		c.Retries = base.Retries
	}
	return &c
}

// Enabled reports whether h runs a check: it has a Test, other than
// ["NONE"].
func (h *HealthConfig) Enabled() bool {
	return h != nil && len(h.Test) > 0 && h.Test[0] != "NONE"
}

// Command is the command line the check runs: CMD's arguments, or
// CMD-SHELL's command under /bin/sh -c. An error for a malformed Test.
func (h *HealthConfig) Command() ([]string, error) {
	if !h.Enabled() {
		return nil, errors.New("the health check is disabled")
	}
	switch h.Test[0] {
	case "CMD":
		if len(h.Test) < 2 || h.Test[1] == "" {
			return nil, errors.New(`health check ["CMD", ...] has no command`)
		}
		return append([]string(nil), h.Test[1:]...), nil
	case "CMD-SHELL":
		if len(h.Test) != 2 || h.Test[1] == "" {
			return nil, fmt.Errorf(`health check ["CMD-SHELL", command] wants one command, got %q`, h.Test[1:])
		}
		return []string{"/bin/sh", "-c", h.Test[1]}, nil
	}
	return nil, fmt.Errorf(`health check test %q: want ["NONE"], ["CMD", args...] or ["CMD-SHELL", command]`, h.Test)
}

// Check is the check of h (timings as h has them, zero for defaults) run
// by probe.
func (h *HealthConfig) Check(probe func(context.Context) (ProbeResult, error)) *HealthCheck {
	return &HealthCheck{
		Interval:      h.Interval,
		Timeout:       h.Timeout,
		StartPeriod:   h.StartPeriod,
		StartInterval: h.StartInterval,
		Retries:       h.Retries,
		Probe:         probe,
	}
}

func durationOf(d *types.Duration) time.Duration {
	if d == nil {
		return 0
	}
	v, err := types.DurationFromProto(d)
	if err != nil {
		return 0
	}
	return v
}

// TailOutput keeps the last MaxHealthOutput bytes of b, as a string.
func TailOutput(b []byte) string {
	if len(b) > MaxHealthOutput {
		b = b[len(b)-MaxHealthOutput:]
	}
	return string(b)
}

// StopWhenUnhealthy returns ctlr with a Wait that also returns when
// unhealthy is closed (the task's health check made it unhealthy): it
// shuts the task down (Terminate if that fails) and returns an *ExitError
// with the task's exit code and cause() (an error wrapping ErrUnhealthy),
// so Do fails the task. ctlr's methods are still called one at a time: its
// Wait is cancelled before Shutdown. The result also has ctlr's
// ContainerStatuser capability.
func StopWhenUnhealthy(ctlr Controller, unhealthy <-chan struct{}, cause func() error) Controller {
	return unhealthyWaiter{Controller: ctlr, unhealthy: unhealthy, cause: cause}
}

type unhealthyWaiter struct {
	Controller
	unhealthy <-chan struct{}
	cause     func() error
}

func (c unhealthyWaiter) ContainerStatus(ctx context.Context) (*api.ContainerStatus, error) {
	if cs, ok := c.Controller.(ContainerStatuser); ok {
		return cs.ContainerStatus(ctx)
	}
	return nil, nil
}

func (c unhealthyWaiter) PortStatus(ctx context.Context) (*api.PortStatus, error) {
	if ps, ok := c.Controller.(PortStatuser); ok {
		return ps.PortStatus(ctx)
	}
	return nil, nil
}

func (c unhealthyWaiter) Wait(ctx context.Context) error {
	select {
	case <-c.unhealthy:
		return c.stop(ctx)
	default:
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	res := make(chan error, 1)
	go func() { res <- c.Controller.Wait(wctx) }()
	select {
	case err := <-res:
		return err
	case <-c.unhealthy:
		cancel()
		if err := <-res; ctx.Err() != nil || !errors.Is(err, context.Canceled) {
			return err // it exited meanwhile, or ctx ended
		}
		return c.stop(ctx)
	}
}

func (c unhealthyWaiter) stop(ctx context.Context) error {
	if err := c.Controller.Shutdown(ctx); err != nil {
		if ctx.Err() != nil || IsTemporary(err) {
			return err // Do retries: Wait comes back here
		}
		if kerr := c.Controller.Terminate(ctx); kerr != nil {
			if ctx.Err() != nil {
				return kerr
			}
			// Never report the task stopped while it may still run.
			return Temporary(fmt.Errorf("stop the unhealthy task: %v; kill: %w", err, kerr))
		}
	}
	code := 0
	err := c.Controller.Wait(ctx)
	var exit *ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		code = exit.Code
	default:
		return err
	}
	return &ExitError{Code: code, Cause: c.cause()}
}
