package containerd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gogo/protobuf/types"

	"github.com/flotilla/flotilla/agent/exec"
	"github.com/flotilla/flotilla/agent/exec/containerd/containerdtest"
	"github.com/flotilla/flotilla/agent/exec/containerd/logging"
	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/api/identity"
)

func TestMain(m *testing.M) {
	// The test binary is the containers' logger, as swarmd is in
	// production (Config.LogBinary).
	if logging.Invoked(os.Args[1:]) {
		os.Exit(logging.Main(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// testImage is the busybox image every test imports (default process: sh).
const testImage = "docker.io/library/busybox:test"

// env is a containerd with the test image imported in namespace ns, and an
// executor using it.
type env struct {
	d        *containerdtest.Daemon
	ns       string
	stateDir string
	e        *Executor
}

// newEnv starts an executor in a new namespace of d (a new daemon if nil).
func newEnv(t testing.TB, d *containerdtest.Daemon, archive string) *env {
	t.Helper()
	ns := "t" + identity.NewID()[:10]
	client := d.Client(t, ns)
	containerdtest.Import(t, client, ns, archive, testImage)
	en := &env{d: d, ns: ns, stateDir: t.TempDir()}
	t.Cleanup(func() { en.clean(t) }) // after the executors are closed
	en.e = en.newExecutor(t, Config{})
	return en
}

// clean removes the tasks the test left in en's namespace, then the
// namespace's parent cgroups (/swarmd/NS in every hierarchy), which runc
// does not remove.
func (en *env) clean(t testing.TB) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e, err := New(ctx, Config{Address: en.d.Address(), Namespace: en.ns, StateDir: en.stateDir, LogBinary: testBinary(t)})
	if err != nil {
		t.Logf("clean namespace %s: %v", en.ns, err)
		return
	}
	defer e.Close()
	ids, err := e.Tasks(ctx)
	if err != nil {
		t.Logf("clean namespace %s: %v", en.ns, err)
	}
	for _, id := range ids {
		if err := e.RemoveTask(ctx, id); err != nil {
			t.Logf("clean namespace %s: remove task %s: %v", en.ns, id, err)
		}
	}
	dirs, _ := filepath.Glob("/sys/fs/cgroup/*/swarmd/" + en.ns)
	dirs = append(dirs, "/sys/fs/cgroup/swarmd/"+en.ns)
	for _, dir := range dirs {
		if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Logf("clean namespace %s: %v", en.ns, err)
		}
	}
}

// newExecutor makes another executor on en's containerd, namespace and
// state dir (an agent restarting), closed at the end of the test.
func (en *env) newExecutor(t testing.TB, cfg Config) *Executor {
	t.Helper()
	cfg.Address = en.d.Address()
	cfg.Namespace = en.ns
	cfg.Hostname = "node-1"
	cfg.StateDir = en.stateDir
	if cfg.LogBinary == "" {
		cfg.LogBinary = testBinary(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	e, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func testBinary(t testing.TB) string {
	p, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// newTask is a task of service "web" running cs (image testImage unless
// set), desired RUNNING, status ASSIGNED.
func newTask(cs *api.ContainerSpec) *api.Task {
	if cs.Image == "" {
		cs.Image = testImage
	}
	t := &api.Task{
		ID:           identity.NewID(),
		ServiceID:    "svc1",
		NodeID:       "node1",
		Slot:         1,
		Spec:         api.TaskSpec{Container: cs},
		DesiredState: api.TaskStateRunning,
	}
	t.ServiceAnnotations.Name = "web"
	t.Status.State = api.TaskStateAssigned
	return t
}

// drive calls exec.Do on task until its state reaches until, Do has
// nothing to do, or ctx ends; it returns the task with its last status.
// Temporary errors are retried at once.
func drive(ctx context.Context, t testing.TB, task *api.Task, ctlr exec.Controller, until api.TaskState) *api.Task {
	t.Helper()
	task = task.Copy()
	for task.Status.State < until {
		st, err := exec.Do(ctx, task, ctlr)
		task.Status = *st
		switch {
		case err == nil:
		case errors.Is(err, exec.ErrTaskNoop):
			return task
		case errors.Is(err, exec.ErrTaskRetry):
			if ctx.Err() != nil {
				t.Fatalf("task %s: %v (state %v, err %q)", task.ID, ctx.Err(), task.Status.State, task.Status.Err)
			}
			time.Sleep(50 * time.Millisecond)
		default:
			t.Fatalf("exec.Do: %v", err)
		}
	}
	return task
}

// run drives a task of cs to a terminal state (RUNNING, then the exit) and
// returns it.
func (en *env) run(t *testing.T, cs *api.ContainerSpec) (*api.Task, *Controller) {
	t.Helper()
	task := newTask(cs)
	ctlr := en.controller(t, task)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	task = drive(ctx, t, task, ctlr, api.TaskStateCompleted)
	return task, ctlr
}

// controller makes task's controller, removed at the end of the test.
func (en *env) controller(t testing.TB, task *api.Task) *Controller {
	t.Helper()
	c, err := en.e.Controller(task)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.Remove(ctx); err != nil {
			t.Errorf("remove task %s: %v", task.ID, err)
		}
	})
	return c.(*Controller)
}

// outDir is a directory of the test, bind-mounted at /out.
func outDir(t *testing.T) (string, api.Mount) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o777); err != nil { // containers run as other users too
		t.Fatal(err)
	}
	return dir, api.Mount{Type: api.MountTypeBind, Source: dir, Target: "/out"}
}

// readFile reads a file a container wrote.
func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// waitFor polls cond every 20 ms until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func duration(d time.Duration) *types.Duration { return types.DurationProto(d) }

func sh(script string) []string { return []string{"sh", "-c", script} }

// exitCode is the exit code in a terminal task's status.
func exitCode(task *api.Task) int32 {
	if task.Status.ContainerStatus == nil {
		return -1
	}
	return task.Status.ContainerStatus.ExitCode
}

// lines splits s into its non-empty lines.
func lines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// taskDirExists reports whether the executor's state dir of task id exists.
func (en *env) taskDirExists(id string) bool {
	_, err := os.Stat(filepath.Join(en.stateDir, "tasks", id))
	return err == nil
}

// logText is the task's log so far, one "stream: line" per line.
func (en *env) logText(t *testing.T, id string) string {
	t.Helper()
	var b strings.Builder
	err := logging.Read(context.Background(), en.e.LogDir(id), logging.ReadOptions{Tail: logging.TailAll}, func(e logging.Entry) error {
		fmt.Fprintf(&b, "%s: %s\n", e.Stream, e.Line)
		return nil
	})
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("read the log of task %s: %v", id, err)
	}
	return b.String()
}
