package agent

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/agent/taskdb"
	"github.com/flotilla/flotilla/api"
)

// taskAgent runs an agent with a recording sim executor and a task DB in a
// temporary directory (or dbPath) against manager m.
func taskAgent(t *testing.T, fn *fakeNet, dbPath string) (*running, *recordingExecutor) {
	t.Helper()
	if dbPath == "" {
		dbPath = filepath.Join(t.TempDir(), "worker", "tasks.db")
	}
	e := newRecordingExecutor()
	a := runAgent(t, Config{Dial: fn.dial, Managers: []string{"m1"}, Executor: e, TaskDB: dbPath})
	return a, e
}

// checkForward fails if a state went backwards (a state may be sent again).
func checkForward(t *testing.T, id string, states []api.TaskState) {
	t.Helper()
	for i := 1; i < len(states); i++ {
		if states[i] < states[i-1] {
			t.Errorf("task %s reported %v: a state went backwards", id, states)
			return
		}
	}
}

// agentTask is the agent's own record of a task (nil if it has none).
func agentTask(t *testing.T, a *running, id string) *api.Task {
	t.Helper()
	tasks, err := a.Tasks()
	if err != nil {
		t.Fatal(err)
	}
	for _, tk := range tasks {
		if tk.ID == id {
			return tk
		}
	}
	return nil
}

func TestAssignedTaskRunsAndEachStatusIsReported(t *testing.T) {
	fn := newFakeNet()
	m := fn.startManager(t, "m1")
	m.serveTasks(newTask("t1"))
	a, e := taskAgent(t, fn, "")

	st := waitState(t, m, "t1", api.TaskStateRunning)
	states := m.statesOf("t1")
	checkForward(t, "t1", states)
	if states[0] < api.TaskStateAccepted {
		t.Errorf("first state reported %s, want ACCEPTED or later", states[0])
	}
	if n := m.statusBatches(); n > 6 {
		t.Errorf("%d UpdateTaskStatus calls to reach RUNNING, want a few batches (6 transitions at most)", n)
	}
	if st.Timestamp == nil || st.Err != "" {
		t.Errorf("RUNNING status %v, want a timestamp and no error", st)
	}
	if got := m.reportsIn(a.SessionID())["t1"]; got != api.TaskStateRunning {
		t.Errorf("session %s got t1 %s, want RUNNING reported on the current session", a.SessionID(), got)
	}
	if e.calls("t1", "prepare") != 1 || e.calls("t1", "start") != 1 {
		t.Errorf("prepare %d, start %d times, want once each", e.calls("t1", "prepare"), e.calls("t1", "start"))
	}
	if tk := agentTask(t, a, "t1"); tk.GetStatus().State != api.TaskStateRunning {
		t.Errorf("task DB holds t1 as %v, want RUNNING", tk)
	}
}

// TestTransitionsAreReportedWhileTheTaskWaits holds Prepare and Start: the
// state reached before each is reported while it waits.
func TestTransitionsAreReportedWhileTheTaskWaits(t *testing.T) {
	fn := newFakeNet()
	m := fn.startManager(t, "m1")
	m.serveTasks(newTask("t1"))
	e := newRecordingExecutor()
	prepare, start := make(chan struct{}), make(chan struct{})
	e.gates["prepare"], e.gates["start"] = prepare, start
	runAgent(t, Config{Dial: fn.dial, Managers: []string{"m1"}, Executor: e})

	waitState(t, m, "t1", api.TaskStatePreparing)
	close(prepare)
	waitState(t, m, "t1", api.TaskStateStarting)
	close(start)
	waitState(t, m, "t1", api.TaskStateRunning)
	checkForward(t, "t1", m.statesOf("t1"))
}

// A long step's progress (a pull) reaches the manager as the message of the
// PREPARING status, and the states still only move forward.
func TestPrepareProgressIsReported(t *testing.T) {
	fn := newFakeNet()
	m := fn.startManager(t, "m1")
	m.serveTasks(newTask("t1"))
	e := newRecordingExecutor()
	prepare := make(chan struct{})
	e.gates["prepare"] = prepare
	runAgent(t, Config{Dial: fn.dial, Managers: []string{"m1"}, Executor: e})

	deadline := time.Now().Add(10 * time.Second)
	for {
		st := m.statusOf("t1")
		if st != nil && st.State == api.TaskStatePreparing && st.Message == "pulling image busybox: 1 of 2 layers" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no progress reported: last status %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(prepare)
	waitState(t, m, "t1", api.TaskStateRunning)
	checkForward(t, "t1", m.statesOf("t1"))
}

func TestDesiredShutdownInterruptsAStepUnderWay(t *testing.T) {
	fn := newFakeNet()
	m := fn.startManager(t, "m1")
	m.serveTasks(newTask("t1"))
	e := newRecordingExecutor()
	e.gates["prepare"] = make(chan struct{}) // never opens
	runAgent(t, Config{Dial: fn.dial, Managers: []string{"m1"}, Executor: e})
	waitState(t, m, "t1", api.TaskStatePreparing)

	m.setDesired(t, "t1", api.TaskStateShutdown)
	waitState(t, m, "t1", api.TaskStateShutdown)
	if e.calls("t1", "prepare") != 0 || e.calls("t1", "shutdown") != 1 {
		t.Errorf("prepare %d, shutdown %d calls; want the held Prepare abandoned and the task shut down",
			e.calls("t1", "prepare"), e.calls("t1", "shutdown"))
	}
	checkForward(t, "t1", m.statesOf("t1"))
}

func TestTemporaryFailuresAreRetried(t *testing.T) {
	fn := newFakeNet()
	m := fn.startManager(t, "m1")
	m.serveTasks(newTask("t1"))
	e := newRecordingExecutor()
	e.flaky["prepare"] = new(atomic.Int32)
	e.flaky["prepare"].Store(3)
	runAgent(t, Config{Dial: fn.dial, Managers: []string{"m1"}, Executor: e})

	st := waitState(t, m, "t1", api.TaskStateRunning)
	if st.Err != "" || e.flaky["prepare"].Load() >= 0 {
		t.Errorf("RUNNING with err %q after %d failures left, want the error cleared after 3 retries", st.Err, e.flaky["prepare"].Load())
	}
	checkForward(t, "t1", m.statesOf("t1"))
}

func TestManagerWithoutAssignmentsKeepsTheSession(t *testing.T) {
	fn := newFakeNet()
	m := fn.startManager(t, "m1") // Assignments: Unimplemented
	m.period = 20 * time.Millisecond
	logs := &logRecorder{}
	a := runAgent(t, Config{Dial: fn.dial, Managers: []string{"m1"}, Logger: slog.New(logs)})
	waitReady(t, a)
	sid := a.SessionID()
	waitFor(t, "heartbeats", func() bool { return m.beatsOf(sid) >= 5 })
	if len(m.sessions()) != 1 {
		t.Errorf("sessions %v, want the first one kept", m.sessions())
	}
	const msg = "the manager does not assign tasks (an older version?); no task runs here until one does"
	if n := logs.count(slog.LevelInfo, msg); n != 1 {
		t.Errorf("logged %d times that the manager assigns no tasks, want once", n)
	}
}

func TestDesiredShutdownStopsTheTask(t *testing.T) {
	fn := newFakeNet()
	m := fn.startManager(t, "m1")
	m.serveTasks(newTask("t1"), newTask("t2"))
	a, e := taskAgent(t, fn, "")
	waitState(t, m, "t1", api.TaskStateRunning)
	waitState(t, m, "t2", api.TaskStateRunning)

	m.setDesired(t, "t1", api.TaskStateShutdown)
	st := waitState(t, m, "t1", api.TaskStateShutdown)
	if st.Err != "" || e.calls("t1", "shutdown") != 1 {
		t.Errorf("SHUTDOWN status %v after %d Shutdown calls, want no error after one", st, e.calls("t1", "shutdown"))
	}
	if e.calls("t2", "shutdown") != 0 || m.statusOf("t2").State != api.TaskStateRunning {
		t.Error("t2 was touched by t1's shutdown")
	}
	// Shut down is not removed: the task stays, as history.
	if tk := agentTask(t, a, "t1"); tk.GetStatus().State != api.TaskStateShutdown || tk.DesiredState != api.TaskStateShutdown {
		t.Errorf("task DB holds t1 as %v, want SHUTDOWN with desired SHUTDOWN", tk)
	}
	if e.calls("t1", "remove") != 0 {
		t.Error("a task shut down was removed while still assigned")
	}
	checkForward(t, "t1", m.statesOf("t1"))
}

func TestRemovedTaskIsShutDownAndForgotten(t *testing.T) {
	fn := newFakeNet()
	m := fn.startManager(t, "m1")
	m.serveTasks(newTask("t1"), newTask("t2"))
	a, e := taskAgent(t, fn, "")
	waitState(t, m, "t1", api.TaskStateRunning)
	waitState(t, m, "t2", api.TaskStateRunning)

	m.remove(t, "t1")
	waitState(t, m, "t1", api.TaskStateShutdown)
	waitFor(t, "t1 forgotten", func() bool { return agentTask(t, a, "t1") == nil })
	if e.calls("t1", "shutdown") != 1 || e.calls("t1", "remove") != 1 || e.calls("t1", "close") != 1 {
		t.Errorf("t1: shutdown %d, remove %d, close %d calls, want one each",
			e.calls("t1", "shutdown"), e.calls("t1", "remove"), e.calls("t1", "close"))
	}
	if agentTask(t, a, "t2") == nil || e.calls("t2", "shutdown") != 0 {
		t.Error("t2 was touched by t1's removal")
	}
}

func TestCompleteSetWithoutATaskShutsItDown(t *testing.T) {
	fn := newFakeNet()
	m := fn.startManager(t, "m1")
	m.serveTasks(newTask("t1"), newTask("t2"))
	a, e := taskAgent(t, fn, "")
	waitState(t, m, "t1", api.TaskStateRunning)
	waitState(t, m, "t2", api.TaskStateRunning)

	m.dispatch.mu.Lock()
	delete(m.dispatch.tasks, "t2")
	complete := m.dispatch.completeLocked()
	m.dispatch.mu.Unlock()
	m.push(t, complete)

	waitState(t, m, "t2", api.TaskStateShutdown)
	waitFor(t, "t2 forgotten", func() bool { return agentTask(t, a, "t2") == nil })
	if e.calls("t2", "remove") != 1 {
		t.Errorf("t2 removed %d times, want once", e.calls("t2", "remove"))
	}
	if e.controllers("t1") != 1 || e.calls("t1", "shutdown") != 0 || m.statusOf("t1").State != api.TaskStateRunning {
		t.Error("t1, still in the complete set, was restarted or stopped")
	}
}

func TestRemovingAnExitedTaskReportsNoShutdown(t *testing.T) {
	fn := newFakeNet()
	m := fn.startManager(t, "m1")
	m.serveTasks(newTask("t1", "SIM_EXIT=1"))
	a, e := taskAgent(t, fn, "")
	waitState(t, m, "t1", api.TaskStateFailed)

	m.remove(t, "t1")
	waitFor(t, "t1 forgotten", func() bool { return agentTask(t, a, "t1") == nil })
	if e.calls("t1", "remove") != 1 {
		t.Errorf("t1 removed %d times, want once", e.calls("t1", "remove"))
	}
	if st := m.statusOf("t1"); st.State != api.TaskStateFailed {
		t.Errorf("last status of t1 %s, want FAILED to stay", st.State)
	}
}

func TestSimExitCodeEndsTheTask(t *testing.T) {
	for _, tc := range []struct {
		env   string
		state api.TaskState
		code  int32
		err   string
	}{
		{"SIM_EXIT=3", api.TaskStateFailed, 3, "exited with code 3"},
		{"SIM_EXIT=0", api.TaskStateCompleted, 0, ""},
		{"SIM_EXIT=oops", api.TaskStateRejected, 0, "SIM_EXIT"},
	} {
		t.Run(tc.env, func(t *testing.T) {
			fn := newFakeNet()
			m := fn.startManager(t, "m1")
			m.serveTasks(newTask("t1", tc.env))
			taskAgent(t, fn, "")
			st := waitState(t, m, "t1", tc.state)
			if st.ContainerStatus.GetExitCode() != tc.code || !strings.Contains(st.Err, tc.err) || (tc.err == "") != (st.Err == "") {
				t.Errorf("status %v, want exit code %d and error %q", st, tc.code, tc.err)
			}
			checkForward(t, "t1", m.statesOf("t1"))
		})
	}
}

func TestRestartedAgentResumesItsTasks(t *testing.T) {
	db := filepath.Join(t.TempDir(), "worker", "tasks.db")
	fn := newFakeNet()
	m := fn.startManager(t, "m1")
	m.serveTasks(newTask("t1"), newTask("t2"))
	a, e := taskAgent(t, fn, db)
	waitState(t, m, "t1", api.TaskStateRunning)
	waitState(t, m, "t2", api.TaskStateRunning)
	if err := a.stop(t); err != nil {
		t.Fatal(err)
	}
	if e.calls("t1", "shutdown")+e.calls("t1", "terminate") != 0 {
		t.Fatal("stopping the agent stopped its tasks")
	}

	// The manager meanwhile forgot t2.
	m.dispatch.mu.Lock()
	delete(m.dispatch.tasks, "t2")
	m.dispatch.mu.Unlock()
	a2, e2 := taskAgent(t, fn, db)
	waitReady(t, a2)
	sid := a2.SessionID()
	waitFor(t, "t1 reported RUNNING on the new session", func() bool {
		return m.reportsIn(sid)["t1"] == api.TaskStateRunning
	})
	if e2.calls("t1", "prepare") != 0 || e2.calls("t1", "start") != 0 || e2.calls("t1", "wait") == 0 {
		t.Errorf("resumed t1: prepare %d, start %d, wait %d calls; want it waited for, not prepared or started again",
			e2.calls("t1", "prepare"), e2.calls("t1", "start"), e2.calls("t1", "wait"))
	}
	waitFor(t, "t2, no longer assigned, shut down", func() bool { return m.reportsIn(sid)["t2"] == api.TaskStateShutdown })
	waitFor(t, "t2 forgotten", func() bool { return agentTask(t, a2, "t2") == nil })
	checkForward(t, "t1", m.statesOf("t1"))
}

func TestStatusesAreSentAgainToANewSession(t *testing.T) {
	fn := newFakeNet()
	m := fn.startManager(t, "m1")
	m.serveTasks(newTask("t1"), newTask("t2"))
	// The first session's reports fail: they must reach the next one.
	m.dispatch.refuseStatus = func(sessionID string, _ int) error {
		if sessionID == "m1/s0" {
			return status.Error(codes.Unavailable, "leader changing")
		}
		return nil
	}
	a, e := taskAgent(t, fn, "")
	waitReady(t, a)
	waitFor(t, "t1 and t2 running", func() bool {
		return e.calls("t1", "wait") > 0 && e.calls("t2", "wait") > 0
	})
	if m.statusBatches() != 0 {
		t.Fatal("statuses accepted on a session that refuses them")
	}

	m.endSessions()
	waitFor(t, "both RUNNING on the second session", func() bool {
		r := m.reportsIn("m1/s1")
		return r["t1"] == api.TaskStateRunning && r["t2"] == api.TaskStateRunning
	})
	// And once more on a third session, though nothing is pending.
	m.endSessions()
	waitFor(t, "both RUNNING again on the third session", func() bool {
		r := m.reportsIn("m1/s2")
		return r["t1"] == api.TaskStateRunning && r["t2"] == api.TaskStateRunning
	})
	if e.controllers("t1") != 1 || e.calls("t1", "start") != 1 {
		t.Error("reconnecting restarted the tasks")
	}
}

func TestOutOfSequenceAssignmentsOpenANewSession(t *testing.T) {
	fn := newFakeNet()
	m := fn.startManager(t, "m1")
	m.serveTasks(newTask("t1"))
	a, _ := taskAgent(t, fn, "")
	waitState(t, m, "t1", api.TaskStateRunning)
	first := a.SessionID()

	m.push(t, &api.AssignmentsMessage{Type: api.AssignmentsIncremental, AppliesTo: "lost", ResultsIn: "x"})
	waitFor(t, "a new session", func() bool { return a.SessionID() != "" && a.SessionID() != first })
	waitFor(t, "a new assignments stream", func() bool { return m.openAssignments() == 1 })
	if st := m.statusOf("t1"); st.State != api.TaskStateRunning {
		t.Errorf("t1 %s after the new session, want still RUNNING", st.State)
	}
}

func TestThousandTasksRunWithFewStatusBatches(t *testing.T) {
	const n = 1000
	fn := newFakeNet()
	m := fn.startManager(t, "m1")
	var tasks []*api.Task
	for i := range n {
		tasks = append(tasks, newTask(fmt.Sprintf("t%04d", i)))
	}
	m.serveTasks(tasks...)
	a, _ := taskAgent(t, fn, "")

	waitFor(t, "every task reported RUNNING", func() bool {
		for _, tk := range tasks {
			if m.statusOf(tk.ID).GetState() != api.TaskStateRunning {
				return false
			}
		}
		return true
	})
	batches := m.statusBatches()
	t.Logf("%d tasks RUNNING after %d UpdateTaskStatus batches", n, batches)
	// Each task passes 5 states; per-task reports would be 5,000 calls.
	if batches > 100 {
		t.Errorf("%d batches for %d tasks, want them coalesced (at most 100)", batches, n)
	}
	for _, tk := range tasks[:10] {
		checkForward(t, tk.ID, m.statesOf(tk.ID))
	}
	all, err := a.Tasks()
	if err != nil || len(all) != n {
		t.Fatalf("task DB holds %d tasks (%v), want %d", len(all), err, n)
	}

	if err := a.stop(t); err != nil {
		t.Fatal(err)
	}
	if left := agentGoroutines(); len(left) > 0 {
		t.Errorf("%d agent goroutines left after Run returned, first:\n%s", len(left), left[0])
	}
}

func TestRunStopsWithTasksRunningAndLeavesNothingRunning(t *testing.T) {
	db := filepath.Join(t.TempDir(), "tasks.db")
	fn := newFakeNet()
	m := fn.startManager(t, "m1")
	m.serveTasks(newTask("t1"), newTask("t2", "SIM_EXIT=2"))
	a, e := taskAgent(t, fn, db)
	waitState(t, m, "t1", api.TaskStateRunning)
	waitState(t, m, "t2", api.TaskStateFailed)

	if err := a.stop(t); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	if left := agentGoroutines(); len(left) > 0 {
		t.Errorf("agent goroutines left after Run returned:\n%s", strings.Join(left, "\n\n"))
	}
	if e.calls("t1", "close") != 1 || e.calls("t1", "shutdown") != 0 {
		t.Errorf("t1: close %d, shutdown %d calls; want the controller closed and the task left running", e.calls("t1", "close"), e.calls("t1", "shutdown"))
	}
	// The DB was closed: it opens again, with both tasks.
	s, err := taskdb.Open(db)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	all, _ := s.List()
	var got []string
	for _, tk := range all {
		got = append(got, fmt.Sprintf("%s=%s", tk.ID, tk.Status.State))
	}
	if want := []string{"t1=RUNNING", "t2=FAILED"}; !slices.Equal(got, want) {
		t.Errorf("task DB after stop = %v, want %v", got, want)
	}
}

func TestRunFailsOnATaskDBInUse(t *testing.T) {
	db := filepath.Join(t.TempDir(), "tasks.db")
	s, err := taskdb.Open(db)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fn := newFakeNet()
	fn.startManager(t, "m1")
	a := runAgent(t, Config{Dial: fn.dial, Managers: []string{"m1"}, TaskDB: db})
	if err := a.wait(t); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("Run = %v, want the task DB reported in use", err)
	}
}

// cleaningExecutor is a recording executor that also keeps tasks of its own
// (exec.TaskCleaner), as a containerd namespace may hold containers of tasks
// a lost task DB forgot.
type cleaningExecutor struct {
	*recordingExecutor
	mu      sync.Mutex
	kept    []string
	removed []string
}

func (e *cleaningExecutor) Tasks(context.Context) ([]string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.kept), nil
}

func (e *cleaningExecutor) RemoveTask(_ context.Context, id string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.removed = append(e.removed, id)
	return nil
}

// At start, the agent removes what the executor keeps for tasks its task DB
// does not know, and leaves the others to their task managers.
func TestOrphansAreRemovedAtStart(t *testing.T) {
	fn := newFakeNet()
	m := fn.startManager(t, "m1")
	m.serveTasks(newTask("t1"))
	db := filepath.Join(t.TempDir(), "worker", "tasks.db")
	a, _ := taskAgent(t, fn, db)
	waitState(t, m, "t1", api.TaskStateRunning)
	a.stop(t)

	e := &cleaningExecutor{recordingExecutor: newRecordingExecutor(), kept: []string{"ghost", "t1"}}
	runAgent(t, Config{Dial: fn.dial, Managers: []string{"m1"}, Executor: e, TaskDB: db})
	deadline := time.Now().Add(10 * time.Second)
	for {
		e.mu.Lock()
		removed := slices.Clone(e.removed)
		e.mu.Unlock()
		if len(removed) > 0 {
			if !slices.Equal(removed, []string{"ghost"}) {
				t.Fatalf("removed %v, want only the orphan ghost", removed)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the orphan was not removed")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
