package containerd

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla/flotilla/agent/exec"
	"github.com/flotilla/flotilla/agent/exec/containerd/containerdtest"
	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/clock"
)

func TestImageHealthcheckParsedAsDockerWritesIt(t *testing.T) {
	blob := []byte(`{"config":{"Healthcheck":{"Test":["CMD-SHELL","curl -f localhost"],"Interval":2000000000,"Timeout":1000000000,"StartPeriod":3000000000,"StartInterval":500000000,"Retries":4}}}`)
	got, err := parseImageHealthcheck(blob)
	if err != nil {
		t.Fatal(err)
	}
	want := exec.HealthConfig{Test: []string{"CMD-SHELL", "curl -f localhost"}, Interval: 2 * time.Second, Timeout: time.Second,
		StartPeriod: 3 * time.Second, StartInterval: 500 * time.Millisecond, Retries: 4}
	if got == nil || strings.Join(got.Test, "|") != strings.Join(want.Test, "|") || got.Interval != want.Interval ||
		got.Timeout != want.Timeout || got.StartPeriod != want.StartPeriod || got.StartInterval != want.StartInterval || got.Retries != want.Retries {
		t.Errorf("parsed %+v, want %+v", got, want)
	}
	if got, err := parseImageHealthcheck([]byte(`{"config":{"Cmd":["sh"]}}`)); err != nil || got != nil {
		t.Errorf("no healthcheck: %+v, %v; want nil", got, err)
	}
}

func TestTailBufferKeepsTheLastBytes(t *testing.T) {
	b := &tailBuffer{max: 8}
	for _, w := range []string{"abc", "defgh", "ij", "0123456789xyz"} {
		b.Write([]byte(w))
	}
	if got := b.String(); got != "56789xyz" {
		t.Fatalf("%q, want the last 8 bytes", got)
	}
	b = &tailBuffer{max: 8}
	b.Write([]byte("abcdef"))
	b.Write([]byte("ghij"))
	if got := b.String(); got != "cdefghij" {
		t.Fatalf("%q, want cdefghij", got)
	}
}

// healthRun is a task running with its health monitored as the agent does
// (exec.HealthMonitor, real clock), driven by exec.Do with
// exec.StopWhenUnhealthy.
type healthRun struct {
	task    *api.Task
	ctlr    *Controller
	running time.Time // when the task reached RUNNING

	mu        sync.Mutex
	reports   []exec.HealthReport
	at        []time.Time
	unhealthy chan struct{}
	exited    chan *api.Task // the task once Do took it past RUNNING
}

// runWithHealth starts a task of cs and its health check; the check must
// exist.
func (en *env) runWithHealth(t *testing.T, cs *api.ContainerSpec) *healthRun {
	t.Helper()
	task := newTask(cs)
	ctlr := en.controller(t, task)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	task = drive(ctx, t, task, ctlr, api.TaskStateRunning)
	if task.Status.State != api.TaskStateRunning {
		t.Fatalf("task %v: %q", task.Status.State, task.Status.Err)
	}
	hr := &healthRun{task: task, ctlr: ctlr, running: time.Now(), unhealthy: make(chan struct{}), exited: make(chan *api.Task, 1)}
	check, err := ctlr.HealthCheck(ctx)
	if err != nil || check == nil {
		t.Fatalf("HealthCheck: %v, %v; want a check", check, err)
	}
	m := exec.NewHealthMonitor(*check, clock.Real(), hr.running, api.HealthNone, func(r exec.HealthReport) {
		hr.mu.Lock()
		hr.reports = append(hr.reports, r)
		hr.at = append(hr.at, time.Now())
		hr.mu.Unlock()
		if r.State == api.HealthUnhealthy {
			close(hr.unhealthy)
		}
	}, nil)
	go m.Run(ctx)
	go func() {
		cause := func() error {
			hr.mu.Lock()
			defer hr.mu.Unlock()
			return errors.New(exec.ErrUnhealthy.Error() + ": " + strings.TrimSpace(hr.reports[len(hr.reports)-1].Output))
		}
		w := exec.StopWhenUnhealthy(ctlr, hr.unhealthy, cause)
		for {
			st, err := exec.Do(ctx, task, w)
			task.Status = *st
			if err == nil || !errors.Is(err, exec.ErrTaskRetry) || ctx.Err() != nil {
				hr.exited <- task
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	return hr
}

// waitHealth waits for report state and returns it and when it came.
func (hr *healthRun) waitHealth(t *testing.T, state api.HealthState, timeout time.Duration) (exec.HealthReport, time.Time) {
	t.Helper()
	var r exec.HealthReport
	var at time.Time
	waitFor(t, timeout, "health "+state.String(), func() bool {
		hr.mu.Lock()
		defer hr.mu.Unlock()
		for i, rep := range hr.reports {
			if rep.State == state {
				r, at = rep, hr.at[i]
				return true
			}
		}
		return false
	})
	return r, at
}

func (hr *healthRun) states() []api.HealthState {
	hr.mu.Lock()
	defer hr.mu.Unlock()
	var out []api.HealthState
	for _, r := range hr.reports {
		out = append(out, r.State)
	}
	return out
}

func healthCmd(cmd string, interval, timeout time.Duration, retries int32) *api.HealthConfig {
	return &api.HealthConfig{Test: []string{"CMD-SHELL", cmd}, Interval: duration(interval), Timeout: duration(timeout), Retries: retries}
}

// TestHealthChecks runs health checks in real containers; each subtest has
// a namespace of its own.
func TestHealthChecks(t *testing.T) {
	d := containerdtest.StartDaemon(t)
	plain := containerdtest.BusyboxImage(t, containerdtest.ImageOptions{})
	withCheck := containerdtest.BusyboxImage(t, containerdtest.ImageOptions{
		Env: []string{"CHECKVAR=from-image"},
		Healthcheck: &containerdtest.Healthcheck{
			Test:     []string{"CMD-SHELL", "echo image check $CHECKVAR; id -u"},
			Interval: 300 * time.Millisecond, Timeout: 5 * time.Second, Retries: 2,
		},
	})
	// Runs until SIGTERM.
	sleep := sh("trap 'exit 143' TERM; sleep 3600 & wait")

	t.Run("PassingCheckMakesTheTaskHealthy", func(t *testing.T) {
		t.Parallel()
		en := newEnv(t, d, plain)
		hr := en.runWithHealth(t, &api.ContainerSpec{Command: sleep, User: "1000", Dir: "/tmp", Env: []string{"V=1"},
			Healthcheck: healthCmd(`test "$(id -u) $PWD $V" = "1000 /tmp 1" && echo fine`, time.Second, 10*time.Second, 3)})
		_, at := hr.waitHealth(t, api.HealthHealthy, 15*time.Second)
		t.Logf("interval 1s: healthy %v after the task reached RUNNING", at.Sub(hr.running).Round(time.Millisecond))
		if got := hr.states(); got[0] != api.HealthStarting {
			t.Errorf("health reports %v: want starting first", got)
		}
	})

	t.Run("FailingCheckMakesTheTaskUnhealthyAndFailsIt", func(t *testing.T) {
		t.Parallel()
		en := newEnv(t, d, plain)
		hr := en.runWithHealth(t, &api.ContainerSpec{Command: sleep,
			Healthcheck: healthCmd(`echo no /tmp/ok >&2; test -f /tmp/ok`, 200*time.Millisecond, 5*time.Second, 3)})
		r, at := hr.waitHealth(t, api.HealthUnhealthy, 15*time.Second)
		if !strings.Contains(r.Output, "no /tmp/ok") {
			t.Errorf("unhealthy output %q: want the check's stderr", r.Output)
		}
		// Three failures, 200 ms apart at least.
		if d := at.Sub(hr.running); d < 600*time.Millisecond {
			t.Errorf("unhealthy after %v: want 3 checks at a 200ms interval first", d)
		}
		select {
		case task := <-hr.exited:
			if task.Status.State != api.TaskStateFailed || !strings.Contains(task.Status.Err, "container is unhealthy: no /tmp/ok") {
				t.Errorf("task %v, err %q: want FAILED, unhealthy with the output", task.Status.State, task.Status.Err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the unhealthy task was not stopped")
		}
	})

	t.Run("ImageHealthcheckAppliesUnlessTheServiceSaysNone", func(t *testing.T) {
		t.Parallel()
		en := newEnv(t, d, withCheck)
		hr := en.runWithHealth(t, &api.ContainerSpec{Command: sleep})
		hr.waitHealth(t, api.HealthHealthy, 15*time.Second)
		out, err := hr.probeOnce(t)
		if err != nil || out.ExitCode != 0 || out.Output != "image check from-image\n0\n" {
			t.Errorf("image check: %+v, %v; want its output, in the container's env, as root", out, err)
		}

		// NONE disables the image's check.
		task := newTask(&api.ContainerSpec{Command: sleep, Healthcheck: &api.HealthConfig{Test: []string{"NONE"}}})
		c := en.controller(t, task)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		drive(ctx, t, task, c, api.TaskStateRunning)
		if check, err := c.HealthCheck(ctx); check != nil || err != nil {
			t.Errorf("NONE: check %+v, %v; want none", check, err)
		}

		// Timings without a command: the image's command, the service's timings.
		task = newTask(&api.ContainerSpec{Command: sleep, Healthcheck: &api.HealthConfig{Retries: 7}})
		c = en.controller(t, task)
		drive(ctx, t, task, c, api.TaskStateRunning)
		check, err := c.HealthCheck(ctx)
		if err != nil || check == nil || check.Retries != 7 || check.Interval != 300*time.Millisecond {
			t.Fatalf("merged check %+v, %v; want the image's interval, retries 7", check, err)
		}
	})

	t.Run("NoCheckWithoutSpecOrImage", func(t *testing.T) {
		t.Parallel()
		en := newEnv(t, d, plain)
		task := newTask(&api.ContainerSpec{Command: sleep})
		c := en.controller(t, task)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		drive(ctx, t, task, c, api.TaskStateRunning)
		if check, err := c.HealthCheck(ctx); check != nil || err != nil {
			t.Errorf("check %+v, %v; want none", check, err)
		}
	})

	t.Run("HangingCheckIsKilledAtItsTimeout", func(t *testing.T) {
		t.Parallel()
		en := newEnv(t, d, plain)
		hr := en.runWithHealth(t, &api.ContainerSpec{Command: sleep,
			Healthcheck: &api.HealthConfig{Test: []string{"CMD", "sleep", "30"}, Interval: duration(100 * time.Millisecond),
				Timeout: duration(500 * time.Millisecond), Retries: 1}})
		r, at := hr.waitHealth(t, api.HealthUnhealthy, 15*time.Second)
		if !strings.Contains(r.Output, "exceeded its timeout (500ms)") {
			t.Errorf("output %q: want the timeout", r.Output)
		}
		if d := at.Sub(hr.running); d > 5*time.Second {
			t.Errorf("unhealthy after %v: the check was not cut at 500ms", d)
		}
		if task := <-hr.exited; task.Status.State != api.TaskStateFailed {
			t.Errorf("task %v: want FAILED", task.Status.State)
		}
	})

	t.Run("ProbeCost", func(t *testing.T) {
		t.Parallel()
		en := newEnv(t, d, plain)
		task := newTask(&api.ContainerSpec{Command: sleep, Healthcheck: healthCmd("true", time.Hour, 0, 0)})
		c := en.controller(t, task)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		drive(ctx, t, task, c, api.TaskStateRunning)
		check, err := c.HealthCheck(ctx)
		if err != nil || check == nil {
			t.Fatal(check, err)
		}
		_, tk, err := c.loadTask(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var before []uint32
		waitFor(t, 10*time.Second, "the task's two processes", func() bool {
			ps, err := tk.Pids(ctx)
			before = nil
			for _, p := range ps {
				before = append(before, p.Pid)
			}
			return err == nil && len(ps) == 2
		})
		const n = 20
		t0 := time.Now()
		for i := 0; i < n; i++ {
			r, err := check.Probe(ctx)
			if err != nil || r.ExitCode != 0 {
				t.Fatalf("probe %d: %+v, %v", i, r, err)
			}
		}
		t.Logf("one check (exec of /bin/sh -c true, wait, delete): %v on average over %d", (time.Since(t0) / n).Round(100*time.Microsecond), n)
		// A check that hangs is killed when its ctx ends.
		pctx, pcancel := context.WithTimeout(ctx, 300*time.Millisecond)
		t1 := time.Now()
		_, err = c.probe(pctx, []string{"sleep", "30"})
		pcancel()
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(t1) > 5*time.Second {
			t.Errorf("hanging check: %v after %v; want the deadline, soon", err, time.Since(t1))
		}
		// Every check's process is gone: only the container's own run.
		pids, err := tk.Pids(ctx)
		if err != nil || len(pids) != len(before) {
			t.Errorf("processes in the container after the checks: %v, %v; want only the task's %v", pids, err, before)
		}
		if left, _ := os.ReadDir(en.e.fifoDir()); len(left) != 0 {
			t.Errorf("FIFO directories left: %d", len(left))
		}
	})
}

// probeOnce runs the task's check once more.
func (hr *healthRun) probeOnce(t *testing.T) (exec.ProbeResult, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	check, err := hr.ctlr.HealthCheck(ctx)
	if err != nil {
		return exec.ProbeResult{}, err
	}
	return check.Probe(ctx)
}
