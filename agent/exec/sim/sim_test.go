package sim

import (
	"context"
	"runtime"
	"slices"
	"testing"

	"github.com/flotilla/flotilla/agent/exec"
	"github.com/flotilla/flotilla/api"
)

func TestDescribeReportsHostAsSimEngine(t *testing.T) {
	labels := map[string]string{"zone": "a"}
	e := New("sim-1", labels)
	labels["zone"] = "changed after New"

	d, err := e.Describe(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if d.Hostname != "sim-1" {
		t.Errorf("hostname = %q, want sim-1", d.Hostname)
	}
	if d.Platform.GetOS() != runtime.GOOS || d.Platform.GetArchitecture() != runtime.GOARCH {
		t.Errorf("platform = %+v, want %s/%s", d.Platform, runtime.GOOS, runtime.GOARCH)
	}
	if want := int64(runtime.NumCPU()) * 1e9; d.Resources.GetNanoCPUs() != want {
		t.Errorf("nano CPUs = %d, want %d", d.Resources.GetNanoCPUs(), want)
	}
	if d.Resources.GetMemoryBytes() <= 0 {
		t.Errorf("memory = %d, want the host's total", d.Resources.GetMemoryBytes())
	}
	if d.Engine.GetExecutor() != "sim" {
		t.Errorf("engine executor = %q, want sim", d.Engine.GetExecutor())
	}
	if got := d.Engine.GetLabels()["zone"]; got != "a" {
		t.Errorf("engine label zone = %q, want a (labels are copied by New)", got)
	}

	// Each description is the caller's to keep: changing one does not leak
	// into the next.
	d.Engine.Labels["zone"] = "mutated"
	d2, _ := e.Describe(context.Background())
	if got := d2.Engine.GetLabels()["zone"]; got != "a" {
		t.Errorf("second Describe label zone = %q, want a", got)
	}
}

func TestDescribeWithoutLabels(t *testing.T) {
	d, err := New("sim-2", nil).Describe(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if d.Engine.GetExecutor() != "sim" || len(d.Engine.GetLabels()) != 0 {
		t.Errorf("engine = %+v, want executor sim and no labels", d.Engine)
	}
}

// drive loops exec.Do as the agent does until it has nothing to do at once,
// and returns the states passed through.
func drive(t *testing.T, ctx context.Context, tk *api.Task, c exec.Controller) []api.TaskState {
	t.Helper()
	var states []api.TaskState
	for range 20 {
		st, err := exec.Do(ctx, tk, c)
		if st.State != tk.Status.State {
			states = append(states, st.State)
		}
		tk.Status = *st
		if err != nil {
			return states
		}
	}
	t.Fatalf("Do never settled: %v", states)
	return nil
}

func simTask(env ...string) *api.Task {
	return &api.Task{
		ID:           "t1",
		DesiredState: api.TaskStateRunning,
		Status:       api.TaskStatus{State: api.TaskStateAssigned},
		Spec:         api.TaskSpec{Container: &api.ContainerSpec{Image: "busybox", Env: env}},
	}
}

func TestSimTaskRunsUntilShutDown(t *testing.T) {
	e := New("sim-1", nil)
	tk := simTask()
	c, err := e.Controller(tk)
	if err != nil {
		t.Fatal(err)
	}

	// Wait blocks while the task runs: Do returns only when ctx ends.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	states := drive(t, ctx, tk, c)
	want := []api.TaskState{api.TaskStateAccepted, api.TaskStatePreparing, api.TaskStateReady, api.TaskStateStarting, api.TaskStateRunning}
	if !slices.Equal(states, want) {
		t.Fatalf("states = %v, want %v", states, want)
	}
	if tk.Status.State != api.TaskStateRunning {
		t.Fatalf("task %s after Wait was cancelled, want it still RUNNING", tk.Status.State)
	}

	waited := make(chan error, 1)
	go func() { waited <- c.Wait(context.Background()) }()
	if err := c.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err != nil {
		t.Errorf("Wait after Shutdown = %v, want nil", err)
	}
	if err := c.Terminate(context.Background()); err != nil {
		t.Errorf("Terminate after Shutdown = %v, want nil (idempotent)", err)
	}

	tk.DesiredState = api.TaskStateShutdown
	if states := drive(t, context.Background(), tk, c); !slices.Equal(states, []api.TaskState{api.TaskStateShutdown}) {
		t.Errorf("states after desired SHUTDOWN = %v, want [SHUTDOWN]", states)
	}
	sc := c.(*Controller)
	for name, n := range map[string]int{"prepare": 1, "start": 1, "shutdown": 2, "terminate": 1} {
		if got := sc.Calls(name); got != n {
			t.Errorf("%s called %d times, want %d", name, got, n)
		}
	}
}

func TestSimExitCode(t *testing.T) {
	for _, tc := range []struct {
		name string
		task *api.Task
		want api.TaskState
		code int32
	}{
		{"env non-zero", simTask("A=1", "SIM_EXIT=3"), api.TaskStateFailed, 3},
		{"env zero", simTask("SIM_EXIT=0"), api.TaskStateCompleted, 0},
		{"last env wins", simTask("SIM_EXIT=1", "SIM_EXIT=0"), api.TaskStateCompleted, 0},
		{"label", func() *api.Task {
			tk := simTask()
			tk.Spec.Container.Labels = map[string]string{"SIM_EXIT": "42"}
			return tk
		}(), api.TaskStateFailed, 42},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New("sim-1", nil).Controller(tc.task)
			if err != nil {
				t.Fatal(err)
			}
			drive(t, context.Background(), tc.task, c)
			st := tc.task.Status
			if st.State != tc.want || st.ContainerStatus.GetExitCode() != tc.code {
				t.Errorf("task ended %s with container status %v, want %s with exit code %d", st.State, st.ContainerStatus, tc.want, tc.code)
			}
		})
	}
}

func TestSimRefusesABadExitCode(t *testing.T) {
	for _, v := range []string{"x", "-1", "256"} {
		if _, err := New("sim-1", nil).Controller(simTask("SIM_EXIT=" + v)); err == nil {
			t.Errorf("SIM_EXIT=%s: Controller = nil error, want a refusal", v)
		}
	}
}
