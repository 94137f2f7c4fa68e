package agent

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/gogo/protobuf/types"

	"github.com/flotilla/flotilla/agent/exec"
	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/clock"
)

// healthTask is a task of node-1 with a health check every interval,
// unhealthy after retries failures.
func healthTask(id string, interval time.Duration, retries int32, env ...string) *api.Task {
	t := newTask(id, env...)
	t.Spec.Container.Healthcheck = &api.HealthConfig{
		Test:     []string{"CMD-SHELL", "true"},
		Interval: types.DurationProto(interval),
		Retries:  retries,
	}
	return t
}

// healthsOf lists the health reported with each status of a task.
func (m *fakeManager) healthsOf(id string) []api.HealthState {
	m.dispatch.mu.Lock()
	defer m.dispatch.mu.Unlock()
	var out []api.HealthState
	for _, u := range m.dispatch.history[id] {
		out = append(out, u.Status.Health)
	}
	return out
}

func TestHealthyTaskReportsItsHealthAndKeepsRunning(t *testing.T) {
	fn := newFakeNet()
	m := fn.startManager(t, "m1")
	m.serveTasks(healthTask("t1", 100*time.Millisecond, 1))
	_, e := taskAgent(t, fn, "")

	waitFor(t, "t1 reported healthy", func() bool {
		st := m.statusOf("t1")
		return st.GetState() == api.TaskStateRunning && st.Health == api.HealthHealthy
	})
	if st := m.statusOf("t1"); st.Err != "" || st.Message != "started" {
		t.Errorf("healthy status %v: want the RUNNING status unchanged but for its health", st)
	}
	checkForward(t, "t1", m.statesOf("t1"))
	m.setDesired(t, "t1", api.TaskStateShutdown)
	st := waitState(t, m, "t1", api.TaskStateShutdown)
	if st.Health != api.HealthHealthy || e.calls("t1", "shutdown") != 1 {
		t.Errorf("shut down: health %v, %d shutdowns; want the last health kept, one shutdown", st.Health, e.calls("t1", "shutdown"))
	}
}

// TestUnhealthyTaskIsFailedAndStopped: the task's checks pass twice, then
// fail; after two failures it is reported unhealthy (with the check's
// output), stopped, and FAILED with the output in its error.
func TestUnhealthyTaskIsFailedAndStopped(t *testing.T) {
	fn := newFakeNet()
	m := fn.startManager(t, "m1")
	m.serveTasks(healthTask("t1", 100*time.Millisecond, 2, "SIM_UNHEALTHY_AFTER=2"))
	_, e := taskAgent(t, fn, "")

	st := waitState(t, m, "t1", api.TaskStateFailed)
	if st.Health != api.HealthUnhealthy || !strings.Contains(st.Err, "container is unhealthy: sim: check 4 fails") {
		t.Errorf("failed status %v: want unhealthy, the error with the last check's output", st)
	}
	if e.calls("t1", "shutdown") != 1 {
		t.Errorf("%d shutdowns, want the unhealthy task stopped once", e.calls("t1", "shutdown"))
	}
	checkForward(t, "t1", m.statesOf("t1"))
	healths := m.healthsOf("t1")
	sawHealthy := false
	for _, h := range healths {
		sawHealthy = sawHealthy || h == api.HealthHealthy
	}
	if !sawHealthy {
		t.Errorf("healths reported %v: want healthy before unhealthy", healths)
	}
}

// fakeHealth is a controller's health capability whose checks pass.
type fakeHealth struct{ interval time.Duration }

func (h fakeHealth) HealthCheck(context.Context) (*exec.HealthCheck, error) {
	return &exec.HealthCheck{Interval: h.interval, Probe: func(context.Context) (exec.ProbeResult, error) {
		return exec.ProbeResult{}, nil
	}}, nil
}

// TestHealthWatchResumesFromTheReportedHealth: the watch of a task a
// restarted agent adopts starts from the health it had reported, so a
// healthy task does not go back to starting.
func TestHealthWatchResumesFromTheReportedHealth(t *testing.T) {
	for _, initial := range []api.HealthState{api.HealthNone, api.HealthHealthy} {
		clk := clock.NewFake(time.Now())
		w := startHealthWatch(context.Background(), fakeHealth{time.Hour}, nil, clk, clk.Now(), initial, slog.Default())
		select {
		case <-w.changed:
		case <-time.After(5 * time.Second):
			t.Fatal("no first report")
		}
		want := initial
		if want == api.HealthNone {
			want = api.HealthStarting
		}
		if got, _ := w.current(); got != want {
			t.Errorf("from %v: first health %v, want %v", initial, got, want)
		}
		w.stop()
	}
}
