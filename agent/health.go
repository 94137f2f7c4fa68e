package agent

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/gogo/protobuf/types"

	"github.com/flotilla/flotilla/agent/exec"
	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/clock"
)

// Health checks. While a task runs (RUNNING, desired state up to COMPLETE)
// and its controller has a health check (exec.ContainerHealth), the task
// manager keeps a healthWatch: a goroutine running the check on its
// schedule (exec.HealthMonitor). Each change of health is recorded and
// reported like any status (TaskStatus.Health, same state). When the task
// turns unhealthy, exec.Do's Wait (through exec.StopWhenUnhealthy) stops the
// container gracefully and returns an exit whose cause is exec.ErrUnhealthy
// with the check's output: the task is FAILED, and the manager's restart
// supervisor replaces it per its restart policy.
//
// The watch lives across the steps of the running task (a Wait retried
// after containerd went away does not restart the schedule) and ends when
// the task leaves RUNNING, its desired state moves past COMPLETE, or the
// task manager returns. A restarted agent starts the schedule again from
// the health it had reported (a healthy task stays healthy).

// healthWatch runs one task's health check.
type healthWatch struct {
	log       *slog.Logger
	changed   chan struct{} // the health changed (capacity 1)
	unhealthy chan struct{} // closed once the task is unhealthy
	cancel    context.CancelFunc
	done      chan struct{} // closed when the goroutine returned

	mu     sync.Mutex
	state  api.HealthState
	output string
}

// healthCheckRetryMax bounds the wait between attempts to set up a check
// whose controller returned a temporary error.
const healthCheckRetryMax = 30 * time.Second

// startHealthWatch sets up and runs hc's check for a task that started at
// started with health initial, until stop.
func startHealthWatch(ctx context.Context, hc exec.ContainerHealth, check *exec.HealthCheck, clk clock.Clock, started time.Time,
	initial api.HealthState, log *slog.Logger) *healthWatch {
	ctx, cancel := context.WithCancel(ctx)
	w := &healthWatch{
		log:       log,
		changed:   make(chan struct{}, 1),
		unhealthy: make(chan struct{}),
		cancel:    cancel,
		done:      make(chan struct{}),
		state:     initial,
	}
	go func() {
		defer close(w.done)
		if check == nil {
			if check = w.setUp(ctx, hc); check == nil {
				return
			}
		}
		m := exec.NewHealthMonitor(*check, clk, started, initial, w.set, func(err error) {
			w.log.Debug("health check not run (not counted)", "error", err)
		})
		_ = m.Run(ctx)
	}()
	return w
}

// setUp gets the task's check, retrying temporary errors; nil if there is
// none, it cannot be set up, or ctx ended.
func (w *healthWatch) setUp(ctx context.Context, hc exec.ContainerHealth) *exec.HealthCheck {
	for attempt := 0; ; attempt++ {
		check, err := hc.HealthCheck(ctx)
		switch {
		case err == nil:
			return check
		case ctx.Err() != nil:
			return nil
		case !exec.IsTemporary(err):
			w.log.Warn("health check cannot be set up: the task runs unchecked", "error", err)
			return nil
		}
		wait := min(healthCheckRetryMax, retryWait(attempt))
		w.log.Debug("health check: set-up to be retried", "error", err, "retry_in", wait)
		if !sleepReal(ctx, wait, nil) {
			return nil
		}
	}
}

// set takes a report of the monitor.
func (w *healthWatch) set(r exec.HealthReport) {
	w.mu.Lock()
	w.state, w.output = r.State, strings.TrimSpace(r.Output)
	w.mu.Unlock()
	if r.State == api.HealthUnhealthy {
		close(w.unhealthy) // the monitor stops after unhealthy: once only
	}
	notify(w.changed)
}

// current is the latest health and the output of the last failed check.
func (w *healthWatch) current() (api.HealthState, string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.state, w.output
}

// stop ends the checks and waits for them.
func (w *healthWatch) stop() {
	w.cancel()
	<-w.done
}

// unhealthyError is the cause of the failure of an unhealthy task.
func (w *healthWatch) unhealthyError() error {
	_, out := w.current()
	if out == "" {
		return exec.ErrUnhealthy
	}
	return fmt.Errorf("%w: %s", exec.ErrUnhealthy, out)
}

// watchHealth starts or stops the task's health watch for a step of task
// (a copy of the task manager's), and returns the controller exec.Do is
// to drive.
func (tm *taskManager) watchHealth(ctx context.Context, task *api.Task) exec.Controller {
	running := task.Status.State == api.TaskStateRunning && task.DesiredState <= api.TaskStateCompleted
	hc, ok := tm.ctlr.(exec.ContainerHealth)
	if !running || !ok {
		tm.stopHealth()
		return tm.ctlr
	}
	if tm.health == nil && !tm.healthNone {
		// Most tasks have no check: asking once here spares them a watch
		// and a wrapped Wait (a goroutine each; 100,000 tasks on a node
		// simulator). A temporary error leaves it to the watch to retry.
		check, err := hc.HealthCheck(ctx)
		if err == nil && check == nil {
			tm.healthNone = true
			return tm.ctlr
		}
		if err != nil && !exec.IsTemporary(err) {
			tm.log.Warn("health check cannot be set up: the task runs unchecked", "error", err)
			tm.healthNone = true
			return tm.ctlr
		}
		started := time.Now()
		if ts := task.Status.Timestamp; ts != nil {
			if t, err := types.TimestampFromProto(ts); err == nil && t.Before(started) {
				started = t
			}
		}
		tm.health = startHealthWatch(ctx, hc, check, clock.Real(), started, task.Status.Health, tm.log)
	}
	if tm.healthNone {
		return tm.ctlr
	}
	return exec.StopWhenUnhealthy(tm.ctlr, tm.health.unhealthy, tm.health.unhealthyError)
}

// healthChanged signals a change of health; nil (never) without a watch.
func (tm *taskManager) healthChanged() <-chan struct{} {
	if tm.health == nil {
		return nil
	}
	return tm.health.changed
}

// recordHealth records the watch's latest health in the task's status
// (same state), with the check's output in the message when unhealthy.
func (tm *taskManager) recordHealth() {
	state, out := tm.health.current()
	if state == tm.task.Status.Health {
		return
	}
	st := tm.task.Status.Copy()
	st.Health = state
	if state == api.HealthUnhealthy {
		st.Message = exec.ErrUnhealthy.Error()
		if out != "" {
			st.Message += ": " + out
		}
		tm.log.Info("task is unhealthy: stopping it", "output", out)
	}
	tm.record(st)
}

// withHealth sets st's health to the watch's latest (a status exec.Do made
// from the task's before the step), and ends the watch once the task no
// longer runs.
func (tm *taskManager) withHealth(st *api.TaskStatus) {
	if tm.health == nil {
		return
	}
	st.Health, _ = tm.health.current()
	if st.State != api.TaskStateRunning {
		tm.stopHealth()
	}
}

// stopHealth ends the task's health watch, if any.
func (tm *taskManager) stopHealth() {
	if tm.health != nil {
		tm.health.stop()
		tm.health = nil
	}
}
