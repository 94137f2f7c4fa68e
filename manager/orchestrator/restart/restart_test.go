package restart_test

import (
	"testing"
	"time"

	"github.com/gogo/protobuf/types"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/api/defaults"
	"github.com/flotilla/flotilla/manager/orchestrator"
	"github.com/flotilla/flotilla/manager/orchestrator/orchestratortest"
	"github.com/flotilla/flotilla/manager/orchestrator/restart"
)

type fixture struct {
	*orchestratortest.Env
	r   *restart.Supervisor
	svc *api.Service
}

// setup makes a replicated service with policy p (nil: none set) and one
// running task in slot 1 on node a.
func setup(t *testing.T, spec api.ServiceSpec, p *api.RestartPolicy) (*fixture, *api.Task) {
	e := orchestratortest.New(t)
	e.CreateNode("a")
	spec.Task.Restart = p
	f := &fixture{Env: e, r: restart.New(e.Store, restart.Config{Clock: e.Clock}), svc: e.CreateService(spec)}
	task := orchestrator.NewTask(f.svc, 1, "", e.Clock.Now())
	if orchestrator.IsGlobal(f.svc) {
		task = orchestrator.NewTask(f.svc, 0, "a", e.Clock.Now())
	}
	e.CreateTask(task)
	e.Assign(task.ID, "a")
	return f, task
}

// fail reports the task ended in state s (exit code for COMPLETE/FAILED).
func (f *fixture) fail(id string, s api.TaskState, exit int32) {
	ts, _ := types.TimestampProto(f.Clock.Now())
	f.UpdateTask(id, func(t *api.Task) {
		t.Status = api.TaskStatus{State: s, Timestamp: ts, ContainerStatus: &api.ContainerStatus{ExitCode: exit}}
	})
}

// replacement returns the current task that replaced old, or nil.
func (f *fixture) replacement(t *testing.T, old *api.Task) *api.Task {
	t.Helper()
	var next *api.Task
	for _, task := range f.Current(f.svc.ID) {
		if task.ID == old.ID {
			continue
		}
		if next != nil {
			t.Fatalf("two replacements: %s and %s", next.ID, task.ID)
		}
		next = task
	}
	if next != nil {
		if d := f.Task(old.ID).DesiredState; d != api.TaskStateShutdown {
			t.Fatalf("replaced task desired %v, want SHUTDOWN", d)
		}
		if next.Slot != old.Slot || next.ServiceID != old.ServiceID || next.DesiredState != api.TaskStateRunning {
			t.Fatalf("replacement %+v of %+v", next, old)
		}
	} else if d := f.Task(old.ID).DesiredState; d != api.TaskStateRunning {
		t.Fatalf("unreplaced task desired %v, want RUNNING (its slot stays occupied)", d)
	}
	return next
}

func policy(c api.RestartPolicy_Condition, delay time.Duration, attempts uint64, window time.Duration) *api.RestartPolicy {
	p := &api.RestartPolicy{Condition: c, Delay: types.DurationProto(delay), MaxAttempts: attempts}
	if window > 0 {
		p.Window = types.DurationProto(window)
	}
	return p
}

func TestRestartConditions(t *testing.T) {
	type end struct {
		state api.TaskState
		exit  int32
	}
	var (
		completed = end{api.TaskStateCompleted, 0}
		exited1   = end{api.TaskStateCompleted, 1}
		failed    = end{api.TaskStateFailed, 1}
		rejected  = end{api.TaskStateRejected, 0}
		orphaned  = end{api.TaskStateOrphaned, 0}
		shutdown  = end{api.TaskStateShutdown, 0}
	)
	cases := []struct {
		cond    api.RestartPolicy_Condition
		end     end
		restart bool
	}{
		{api.RestartOnAny, completed, true},
		{api.RestartOnAny, failed, true},
		{api.RestartOnAny, shutdown, true},
		{api.RestartOnFailure, completed, false},
		{api.RestartOnFailure, exited1, true},
		{api.RestartOnFailure, failed, true},
		{api.RestartOnFailure, rejected, true},
		{api.RestartOnFailure, orphaned, true},
		{api.RestartOnFailure, shutdown, true},
		{api.RestartOnNone, failed, false},
		{api.RestartOnNone, completed, false},
	}
	for _, c := range cases {
		t.Run(c.cond.String()+"/"+c.end.state.String(), func(t *testing.T) {
			f, task := setup(t, orchestratortest.Replicated("web", 1), policy(c.cond, 0, 0, 0))
			f.Reconcile(f.r)
			f.fail(task.ID, c.end.state, c.end.exit)
			f.Settle(f.r)
			if got := f.replacement(t, task) != nil; got != c.restart {
				t.Fatalf("restarted = %v, want %v", got, c.restart)
			}
		})
	}
}

func TestNoPolicyRestartsAnyEndAfterTheDefaultDelay(t *testing.T) {
	f, task := setup(t, orchestratortest.Replicated("web", 1), nil)
	f.Reconcile(f.r)
	f.fail(task.ID, api.TaskStateCompleted, 0)
	f.Settle(f.r)
	f.Clock.Advance(defaults.RestartDelay - time.Millisecond)
	f.Settle(f.r)
	if f.replacement(t, task) != nil {
		t.Fatal("replaced before the restart delay")
	}
	f.Clock.Advance(time.Millisecond)
	f.Settle(f.r)
	next := f.replacement(t, task)
	if next == nil {
		t.Fatal("not replaced after the restart delay")
	}
	if next.NodeID != "" || next.Status.State != api.TaskStateNew || next.SpecVersion != f.svc.SpecVersion {
		t.Errorf("replacement %+v, want a new unassigned task", next)
	}
}

func TestDelayCountsFromTheEnd(t *testing.T) {
	f, task := setup(t, orchestratortest.Replicated("web", 1), policy(api.RestartOnAny, 10*time.Second, 0, 0))
	f.Reconcile(f.r)
	f.fail(task.ID, api.TaskStateFailed, 1)
	f.Settle(f.r)
	for _, step := range []time.Duration{3 * time.Second, 6 * time.Second} {
		f.Clock.Advance(step)
		f.Settle(f.r)
		if f.replacement(t, task) != nil {
			t.Fatalf("replaced before the 10 s delay")
		}
	}
	f.Clock.Advance(time.Second)
	f.Settle(f.r)
	if f.replacement(t, task) == nil {
		t.Fatal("not replaced 10 s after it failed")
	}
}

func TestMaxAttemptsWithinWindow(t *testing.T) {
	cases := []struct {
		name     string
		attempts uint64
		window   time.Duration
		// gap between a restart and the next failure (the delay is 1 s)
		gap      time.Duration
		restarts int // restarts before giving up, of 5 failures
	}{
		{"unlimited", 0, 0, time.Second, 5},
		{"two ever", 2, 0, time.Second, 2},
		{"two per minute, failing fast", 2, time.Minute, time.Second, 2},
		{"two per minute, failing slowly", 2, time.Minute, 40 * time.Second, 5},
		{"one per 10 s, failing every 5 s", 1, 10 * time.Second, 4 * time.Second, 1},
		{"one per 10 s, failing every 13 s", 1, 10 * time.Second, 12 * time.Second, 5},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f, task := setup(t, orchestratortest.Replicated("web", 1), policy(api.RestartOnAny, time.Second, c.attempts, c.window))
			f.Reconcile(f.r)
			restarts := 0
			for range 5 {
				f.fail(task.ID, api.TaskStateFailed, 1)
				f.Settle(f.r)
				f.Clock.Advance(time.Second) // the delay
				f.Settle(f.r)
				next := f.replacement(t, task)
				if next == nil {
					break
				}
				restarts++
				f.Assign(next.ID, "a")
				f.Clock.Advance(c.gap)
				task = next
			}
			if restarts != c.restarts {
				t.Fatalf("%d restarts, want %d", restarts, c.restarts)
			}
		})
	}
}

func TestSpecUpdateResetsAttempts(t *testing.T) {
	f, task := setup(t, orchestratortest.Replicated("web", 1), policy(api.RestartOnAny, 0, 1, 0))
	f.Reconcile(f.r)
	f.fail(task.ID, api.TaskStateFailed, 1)
	f.Settle(f.r)
	next := f.replacement(t, task)
	f.Assign(next.ID, "a")
	f.fail(next.ID, api.TaskStateFailed, 1)
	f.Settle(f.r)
	if f.replacement(t, next) != nil {
		t.Fatal("restarted past MaxAttempts")
	}
	// The user fixes the image: the orchestrator replaces the dead task
	// with one of the new spec, which gets its own attempts.
	f.UpdateService(f.svc.ID, func(s *api.ServiceSpec) { s.Task.Container.Image = "busybox:1.37" })
	fixed := orchestrator.NewTask(f.Service(f.svc.ID), 1, "", f.Clock.Now())
	f.UpdateTask(next.ID, func(t *api.Task) { t.DesiredState = api.TaskStateShutdown })
	f.CreateTask(fixed)
	f.Assign(fixed.ID, "a")
	f.fail(fixed.ID, api.TaskStateFailed, 1)
	f.Settle(f.r)
	if f.replacement(t, fixed) == nil {
		t.Fatal("a task of the new spec was not restarted")
	}
}

func TestFailureBeforeLeaderChange(t *testing.T) {
	cases := []struct {
		name string
		ago  time.Duration // the task failed this long before the supervisor starts
		wait time.Duration // then it is replaced after this
	}{
		{"delay partly passed", 2 * time.Second, 3 * time.Second},
		{"delay passed", time.Minute, 0},
		{"timestamp ahead of the clock", -time.Hour, 5 * time.Second},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f, task := setup(t, orchestratortest.Replicated("web", 1), nil)
			ts, _ := types.TimestampProto(f.Clock.Now().Add(-c.ago))
			f.UpdateTask(task.ID, func(t *api.Task) { t.Status = api.TaskStatus{State: api.TaskStateFailed, Timestamp: ts} })
			f.Reconcile(f.r)
			f.Settle(f.r)
			if c.wait > 0 {
				f.Clock.Advance(c.wait - time.Millisecond)
				f.Settle(f.r)
				if f.replacement(t, task) != nil {
					t.Fatal("replaced too early")
				}
				f.Clock.Advance(time.Millisecond)
				f.Settle(f.r)
			}
			if f.replacement(t, task) == nil {
				t.Fatal("not replaced")
			}
		})
	}
}

func TestStoppedDuringTheDelayIsNotRestarted(t *testing.T) {
	f, task := setup(t, orchestratortest.Replicated("web", 1), nil)
	f.Reconcile(f.r)
	f.fail(task.ID, api.TaskStateFailed, 1)
	f.Settle(f.r)
	// Scaled down meanwhile.
	f.UpdateTask(task.ID, func(t *api.Task) { t.DesiredState = api.TaskStateRemove })
	f.Settle(f.r)
	f.Clock.Advance(time.Minute)
	f.Settle(f.r)
	if n := len(f.Tasks(f.svc.ID)); n != 1 {
		t.Fatalf("%d tasks, want the removed one only", n)
	}
}

func TestGlobalTaskRestartsOnItsNode(t *testing.T) {
	f, task := setup(t, orchestratortest.Global("agent"), policy(api.RestartOnAny, 0, 0, 0))
	f.Reconcile(f.r)
	f.fail(task.ID, api.TaskStateFailed, 1)
	f.Settle(f.r)
	next := f.replacement(t, task)
	if next == nil || next.NodeID != "a" || next.Slot != 0 {
		t.Fatalf("replacement %+v, want one on node a", next)
	}
}

func TestRunRestartsAfterTheDelay(t *testing.T) {
	f, task := setup(t, orchestratortest.Replicated("web", 1), nil)
	f.Start(f.r.Run)
	f.fail(task.ID, api.TaskStateFailed, 1)
	f.Eventually("the restart timer", func() bool { return f.Clock.Timers() == 1 })
	f.Clock.Advance(defaults.RestartDelay)
	f.Eventually("the replacement", func() bool {
		return len(f.Current(f.svc.ID)) == 2 || f.Task(task.ID).DesiredState != api.TaskStateRunning
	})
	if f.replacement(t, task) == nil {
		t.Fatal("not replaced")
	}
}
