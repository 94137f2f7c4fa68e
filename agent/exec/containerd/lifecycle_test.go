package containerd

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"

	"github.com/flotilla/flotilla/agent/exec"
	"github.com/flotilla/flotilla/agent/exec/containerd/containerdtest"
	"github.com/flotilla/flotilla/api"
)

// untilFile is a script that runs until /out/NAME exists, then exits with
// code.
func untilFile(name, code string) []string {
	return sh(`touch /out/started; while [ ! -f /out/` + name + ` ]; do sleep 0.05; done; exit ` + code)
}

// TestRestartedAgentAdoptsItsContainers: a new executor on the same
// containerd and state dir (swarmd restarted) finds the task's container,
// does not make another, and reports its real exit, also of a container
// that exited while no executor watched.
func TestRestartedAgentAdoptsItsContainers(t *testing.T) {
	d := containerdtest.StartDaemon(t)
	en := newEnv(t, d, containerdtest.BusyboxImage(t, containerdtest.ImageOptions{}))
	dir, out := outDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	running := newTask(&api.ContainerSpec{Command: untilFile("go", "5"), Mounts: []api.Mount{out}})
	exited := newTask(&api.ContainerSpec{Command: sh("exit 7")})
	c0, _ := en.e.Controller(running)
	running = drive(ctx, t, running, c0, api.TaskStateRunning)
	cc1, _ := en.e.Controller(exited)
	c1 := cc1.(*Controller)
	exited = drive(ctx, t, exited, c1, api.TaskStateRunning)
	waitFor(t, 10*time.Second, "the second container to exit", func() bool {
		_, tk, err := c1.loadTask(ctx)
		if err != nil {
			return false
		}
		st, err := tk.Status(ctx)
		return err == nil && st.Status == "stopped"
	})
	en.e.Close() // the agent stops; its containers do not

	e2 := en.newExecutor(t, Config{})
	en.e = e2 // for the cleanup
	for _, task := range []*api.Task{running, exited} {
		en.controller(t, task)
	}
	for _, task := range []*api.Task{running, exited} {
		c, err := e2.Controller(task)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Prepare(ctx); !errors.Is(err, exec.ErrTaskPrepared) {
			t.Errorf("adopted task: Prepare %v, want ErrTaskPrepared", err)
		}
		if err := c.Start(ctx); !errors.Is(err, exec.ErrTaskStarted) {
			t.Errorf("adopted task: Start %v, want ErrTaskStarted", err)
		}
	}
	c2, _ := e2.Controller(exited)
	if got := drive(ctx, t, exited, c2, api.TaskStateCompleted); got.Status.State != api.TaskStateFailed || exitCode(got) != 7 {
		t.Errorf("task that exited while the agent was down: %v exit %d, want FAILED 7", got.Status.State, exitCode(got))
	}

	c3, _ := e2.Controller(running)
	done := make(chan *api.Task, 1)
	go func() { done <- drive(ctx, t, running, c3, api.TaskStateCompleted) }()
	if err := os.WriteFile(filepath.Join(dir, "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if got := <-done; got.Status.State != api.TaskStateFailed || exitCode(got) != 5 {
		t.Errorf("adopted running task: %v exit %d err %q, want FAILED 5", got.Status.State, exitCode(got), got.Status.Err)
	}
	cs, err := e2.client.Containers(ctx)
	if err != nil || len(cs) != 2 {
		t.Errorf("%d containers (%v), want the 2 tasks' and no more", len(cs), err)
	}
}

// TestContainerdRestartUnderRunningContainer: containerd killed under a
// running container: the container keeps running, calls meanwhile fail as
// temporary, and once containerd is back the executor carries on (the Wait
// under way reports the real exit).
func TestContainerdRestartUnderRunningContainer(t *testing.T) {
	d := containerdtest.StartDaemon(t)
	en := newEnv(t, d, containerdtest.BusyboxImage(t, containerdtest.ImageOptions{}))
	dir, out := outDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	task := newTask(&api.ContainerSpec{Command: untilFile("go", "0"), Mounts: []api.Mount{out}})
	ctlr := en.controller(t, task)
	task = drive(ctx, t, task, ctlr, api.TaskStateRunning)
	pid := task.Status.ContainerStatus.PID

	waited := make(chan *api.Task, 1)
	go func() { waited <- drive(ctx, t, task, ctlr, api.TaskStateCompleted) }()

	// containerd crashes.
	if err := syscall.Kill(d.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-d.Done()
	if err := syscall.Kill(int(pid), 0); err != nil {
		t.Fatalf("container process %d died with containerd: %v", pid, err)
	}
	if _, err := ctlr.ContainerStatus(ctx); !exec.IsTemporary(err) {
		t.Errorf("ContainerStatus while containerd is down: %v, want a temporary error", err)
	}
	other := newTask(&api.ContainerSpec{Command: sh("true")})
	oc, _ := en.e.Controller(other)
	other.Status.State = api.TaskStatePreparing
	st, err := exec.Do(ctx, other, oc)
	if !errors.Is(err, exec.ErrTaskRetry) || st.State != api.TaskStatePreparing || st.Err == "" {
		t.Errorf("Prepare while containerd is down: %v %v %q, want a retry with the error in the status", err, st.State, st.Err)
	}
	if _, err := en.e.Describe(ctx); !exec.IsTemporary(err) {
		t.Errorf("Describe while containerd is down: %v, want a temporary error", err)
	}

	// containerd comes back (same root, state and socket).
	d.Restart(t)
	// The client reconnects on its own (grpc backoff, at most connectTimeout).
	var cs *api.ContainerStatus
	waitFor(t, 2*connectTimeout, "the executor to reach containerd again", func() bool {
		cs, err = ctlr.ContainerStatus(ctx)
		return err == nil
	})
	if cs.PID != pid {
		t.Errorf("after the restart: container status %+v; want PID %d", cs, pid)
	}
	if err := os.WriteFile(filepath.Join(dir, "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-waited:
		if got.Status.State != api.TaskStateCompleted {
			t.Errorf("task after the restart: %v %q, want COMPLETE", got.Status.State, got.Status.Err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the Wait under way did not resume after containerd came back")
	}
}

// TestRemovedTasksLeaveNothingBehind: containers, snapshots, mounts under
// containerd's root and state, and task state dirs, counted before and
// after tasks ran and were removed.
func TestRemovedTasksLeaveNothingBehind(t *testing.T) {
	d := containerdtest.StartDaemon(t)
	en := newEnv(t, d, containerdtest.BusyboxImage(t, containerdtest.ImageOptions{}))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	count := func() (containers, snaps, mounts, dirs int) {
		cs, err := en.e.client.Containers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := en.e.client.SnapshotService(en.e.snapshotter).Walk(ctx, func(context.Context, snapshots.Info) error {
			snaps++
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		ms, err := d.Mounts()
		if err != nil {
			t.Fatal(err)
		}
		entries, _ := os.ReadDir(filepath.Join(en.stateDir, "tasks"))
		return len(cs), snaps, len(ms), len(entries)
	}
	c0, s0, m0, d0 := count()

	var ctlrs []*Controller
	for i, cs := range []*api.ContainerSpec{
		{Command: sh("sleep 1000"), Mounts: []api.Mount{{Type: api.MountTypeTmpfs, Target: "/t"}, {Type: api.MountTypeVolume, Target: "/v"}}},
		{Command: sh("exit 1")},
		{Command: sh("exit 0"), ReadOnly: true},
	} {
		task := newTask(cs)
		c, err := en.e.Controller(task)
		if err != nil {
			t.Fatal(err)
		}
		until := api.TaskStateCompleted
		if i == 0 {
			until = api.TaskStateRunning
		}
		drive(ctx, t, task, c, until)
		ctlrs = append(ctlrs, c.(*Controller))
	}
	if c1, s1, m1, d1 := count(); c1 != c0+3 || s1 != s0+3 || m1 <= m0 || d1 != d0+3 {
		t.Fatalf("while running: containers %d, snapshots %d, mounts %d, task dirs %d (before: %d, %d, %d, %d)", c1, s1, m1, d1, c0, s0, m0, d0)
	}
	for _, c := range ctlrs { // the first still runs: Remove kills it
		if err := c.Remove(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if c2, s2, m2, d2 := count(); c2 != c0 || s2 != s0 || m2 != m0 || d2 != d0 {
		t.Errorf("after Remove: containers %d, snapshots %d, mounts %d, task dirs %d; want %d, %d, %d, %d", c2, s2, m2, d2, c0, s0, m0, d0)
	}
}

// TestOrphansListedAndRemoved: containers of tasks the agent forgot are
// listed by Tasks and removed by RemoveTask.
func TestOrphansListedAndRemoved(t *testing.T) {
	d := containerdtest.StartDaemon(t)
	en := newEnv(t, d, containerdtest.BusyboxImage(t, containerdtest.ImageOptions{}))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	task := newTask(&api.ContainerSpec{Command: sh("sleep 1000")})
	c, _ := en.e.Controller(task)
	drive(ctx, t, task, c, api.TaskStateRunning)
	ids, err := en.e.Tasks(ctx)
	if err != nil || len(ids) != 1 || ids[0] != task.ID {
		t.Fatalf("Tasks: %q, %v; want [%s]", ids, err, task.ID)
	}
	if err := en.e.RemoveTask(ctx, task.ID); err != nil {
		t.Fatal(err)
	}
	if ids, err := en.e.Tasks(ctx); err != nil || len(ids) != 0 {
		t.Errorf("Tasks after RemoveTask: %q, %v", ids, err)
	}
	assertNoContainers(t, en)
}
