package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/agent/exec"
	"github.com/flotilla/flotilla/agent/exec/sim"
	"github.com/flotilla/flotilla/api"
)

// fakeDispatch is the task side of a fakeManager: it streams assignments
// from a set of tasks the test controls, and records status reports.
// Assignments answers Unimplemented unless serve is set.
type fakeDispatch struct {
	mu      sync.Mutex
	serve   bool
	tasks   map[string]*api.Task                                       // the node's tasks, sent as COMPLETE to each new stream
	streams map[string]chan *api.AssignmentsMessage                    // open assignment streams by session
	reports []*api.UpdateTaskStatusRequest                             // accepted UpdateTaskStatus requests
	history map[string][]*api.UpdateTaskStatusRequest_TaskStatusUpdate // accepted updates per task
	calls   int                                                        // UpdateTaskStatus calls, refused ones included
	// refuseStatus, if set, answers UpdateTaskStatus call n (0-based) of
	// session sessionID with an error.
	refuseStatus func(sessionID string, n int) error
	seq          int
}

func (d *fakeDispatch) init() {
	d.tasks = map[string]*api.Task{}
	d.streams = map[string]chan *api.AssignmentsMessage{}
	d.history = map[string][]*api.UpdateTaskStatusRequest_TaskStatusUpdate{}
}

// serveTasks makes the manager stream assignments of tasks (the initial set).
func (m *fakeManager) serveTasks(tasks ...*api.Task) {
	d := &m.dispatch
	d.mu.Lock()
	defer d.mu.Unlock()
	d.serve = true
	for _, t := range tasks {
		d.tasks[t.ID] = t.Copy()
	}
}

func (m *fakeManager) Assignments(req *api.AssignmentsRequest, stream api.Dispatcher_AssignmentsServer) error {
	d := &m.dispatch
	d.mu.Lock()
	if !d.serve {
		d.mu.Unlock()
		return status.Error(codes.Unimplemented, "no assignments here")
	}
	ch := make(chan *api.AssignmentsMessage, 64)
	d.streams[req.SessionID] = ch
	first := d.completeLocked()
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		if d.streams[req.SessionID] == ch {
			delete(d.streams, req.SessionID)
		}
		d.mu.Unlock()
	}()
	if err := stream.Send(first); err != nil {
		return err
	}
	for {
		select {
		case <-stream.Context().Done():
			return stream.Context().Err()
		case msg := <-ch:
			if err := stream.Send(msg); err != nil {
				return err
			}
		}
	}
}

// completeLocked is a COMPLETE message of the current tasks.
func (d *fakeDispatch) completeLocked() *api.AssignmentsMessage {
	d.seq++
	msg := &api.AssignmentsMessage{Type: api.AssignmentsComplete, ResultsIn: fmt.Sprint(d.seq)}
	ids := make([]string, 0, len(d.tasks))
	for id := range d.tasks {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		msg.Changes = append(msg.Changes, &api.AssignmentChange{
			Action:     api.AssignmentActionUpdate,
			Assignment: &api.Assignment{Item: &api.Assignment_Task{Task: d.tasks[id].Copy()}},
		})
	}
	return msg
}

// push sends msg on every open assignments stream.
func (m *fakeManager) push(t *testing.T, msg *api.AssignmentsMessage) {
	t.Helper()
	d := &m.dispatch
	d.mu.Lock()
	var chs []chan *api.AssignmentsMessage
	for _, ch := range d.streams {
		chs = append(chs, ch)
	}
	d.mu.Unlock()
	if len(chs) == 0 {
		t.Fatal("no open assignments stream to push to")
	}
	for _, ch := range chs {
		select {
		case ch <- msg:
		case <-time.After(10 * time.Second):
			t.Fatal("assignments stream does not take a message")
		}
	}
}

// incremental builds an INCREMENTAL message that applies to the last one.
func (m *fakeManager) incremental(changes ...*api.AssignmentChange) *api.AssignmentsMessage {
	d := &m.dispatch
	d.mu.Lock()
	defer d.mu.Unlock()
	d.seq++
	return &api.AssignmentsMessage{Type: api.AssignmentsIncremental, AppliesTo: fmt.Sprint(d.seq - 1), ResultsIn: fmt.Sprint(d.seq), Changes: changes}
}

// update changes tasks in the set and pushes them as an increment.
func (m *fakeManager) update(t *testing.T, tasks ...*api.Task) {
	t.Helper()
	var changes []*api.AssignmentChange
	m.dispatch.mu.Lock()
	for _, tk := range tasks {
		m.dispatch.tasks[tk.ID] = tk.Copy()
		changes = append(changes, &api.AssignmentChange{
			Action:     api.AssignmentActionUpdate,
			Assignment: &api.Assignment{Item: &api.Assignment_Task{Task: tk.Copy()}},
		})
	}
	m.dispatch.mu.Unlock()
	m.push(t, m.incremental(changes...))
}

// remove takes tasks out of the set and pushes REMOVE changes.
func (m *fakeManager) remove(t *testing.T, ids ...string) {
	t.Helper()
	var changes []*api.AssignmentChange
	m.dispatch.mu.Lock()
	for _, id := range ids {
		delete(m.dispatch.tasks, id)
		changes = append(changes, &api.AssignmentChange{
			Action:     api.AssignmentActionRemove,
			Assignment: &api.Assignment{Item: &api.Assignment_Task{Task: &api.Task{ID: id}}},
		})
	}
	m.dispatch.mu.Unlock()
	m.push(t, m.incremental(changes...))
}

// setDesired changes a task's desired state and pushes it.
func (m *fakeManager) setDesired(t *testing.T, id string, state api.TaskState) {
	t.Helper()
	m.dispatch.mu.Lock()
	tk := m.dispatch.tasks[id].Copy()
	m.dispatch.mu.Unlock()
	tk.DesiredState = state
	m.update(t, tk)
}

// openAssignments is the number of open assignments streams.
func (m *fakeManager) openAssignments() int {
	m.dispatch.mu.Lock()
	defer m.dispatch.mu.Unlock()
	return len(m.dispatch.streams)
}

func (m *fakeManager) UpdateTaskStatus(ctx context.Context, req *api.UpdateTaskStatusRequest) (*api.UpdateTaskStatusResponse, error) {
	d := &m.dispatch
	d.mu.Lock()
	n := d.calls
	d.calls++
	refuse := d.refuseStatus
	d.mu.Unlock()
	if refuse != nil {
		if err := refuse(req.SessionID, n); err != nil {
			return nil, err
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.reports = append(d.reports, req)
	for _, u := range req.Updates {
		d.history[u.TaskID] = append(d.history[u.TaskID], u)
	}
	return &api.UpdateTaskStatusResponse{}, nil
}

// statusOf is the last status reported for a task, nil if none.
func (m *fakeManager) statusOf(id string) *api.TaskStatus {
	m.dispatch.mu.Lock()
	defer m.dispatch.mu.Unlock()
	h := m.dispatch.history[id]
	if len(h) == 0 {
		return nil
	}
	return h[len(h)-1].Status
}

// statesOf lists the states reported for a task, in order.
func (m *fakeManager) statesOf(id string) []api.TaskState {
	m.dispatch.mu.Lock()
	defer m.dispatch.mu.Unlock()
	var states []api.TaskState
	for _, u := range m.dispatch.history[id] {
		states = append(states, u.Status.State)
	}
	return states
}

// statusBatches is the number of UpdateTaskStatus requests accepted.
func (m *fakeManager) statusBatches() int {
	m.dispatch.mu.Lock()
	defer m.dispatch.mu.Unlock()
	return len(m.dispatch.reports)
}

// reportsIn lists the task IDs reported in session sessionID's accepted
// requests, with their states.
func (m *fakeManager) reportsIn(sessionID string) map[string]api.TaskState {
	m.dispatch.mu.Lock()
	defer m.dispatch.mu.Unlock()
	out := map[string]api.TaskState{}
	for _, r := range m.dispatch.reports {
		if r.SessionID == sessionID {
			for _, u := range r.Updates {
				out[u.TaskID] = u.Status.State
			}
		}
	}
	return out
}

// waitState waits until the manager has been told task id is in state.
func waitState(t *testing.T, m *fakeManager, id string, state api.TaskState) *api.TaskStatus {
	t.Helper()
	var st *api.TaskStatus
	waitFor(t, fmt.Sprintf("task %s reported %s", id, state), func() bool {
		st = m.statusOf(id)
		return st.GetState() == state
	})
	return st
}

// newTask is a task of node-1 assigned and to run.
func newTask(id string, env ...string) *api.Task {
	return &api.Task{
		ID:           id,
		ServiceID:    "svc",
		NodeID:       "node-1",
		DesiredState: api.TaskStateRunning,
		Spec:         api.TaskSpec{Container: &api.ContainerSpec{Image: "busybox", Env: env}},
		Status:       api.TaskStatus{State: api.TaskStateAssigned, Message: "scheduler assigned task to node"},
	}
}

// recordingExecutor is the sim executor, keeping the controllers it makes
// so tests can see what the agent did with each task. A gate, if set for a
// step ("prepare", "start"), holds that step until the test closes it.
type recordingExecutor struct {
	*sim.Executor
	mu    sync.Mutex
	ctlrs map[string][]*sim.Controller
	gates map[string]chan struct{}
	// flaky, if set for a step, fails that step with a temporary error
	// that many times (over all tasks) before it goes through.
	flaky map[string]*atomic.Int32
}

func newRecordingExecutor() *recordingExecutor {
	return &recordingExecutor{
		Executor: sim.New("host-1", map[string]string{"rack": "r1"}),
		ctlrs:    map[string][]*sim.Controller{},
		gates:    map[string]chan struct{}{},
		flaky:    map[string]*atomic.Int32{},
	}
}

func (e *recordingExecutor) Controller(t *api.Task) (exec.Controller, error) {
	c, err := e.Executor.Controller(t)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	sc := c.(*sim.Controller)
	e.ctlrs[t.ID] = append(e.ctlrs[t.ID], sc)
	return &gatedController{Controller: sc, gates: e.gates, flaky: e.flaky}, nil
}

// calls sums the calls of a method over the controllers made for a task.
func (e *recordingExecutor) calls(id, method string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, c := range e.ctlrs[id] {
		n += c.Calls(method)
	}
	return n
}

// controllers is the number of controllers made for a task.
func (e *recordingExecutor) controllers(id string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.ctlrs[id])
}

type gatedController struct {
	*sim.Controller
	gates map[string]chan struct{} // read-only once the agent runs
	flaky map[string]*atomic.Int32 // read-only once the agent runs

	mu       sync.Mutex
	progress func(string) // exec.Progresser
}

func (c *gatedController) Progress(fn func(string)) {
	c.mu.Lock()
	c.progress = fn
	c.mu.Unlock()
}

// errRegistry is the temporary failure of flaky steps.
var errRegistry = errors.New("registry unreachable")

func (c *gatedController) wait(ctx context.Context, step string) error {
	if n := c.flaky[step]; n != nil && n.Add(-1) >= 0 {
		return exec.Temporary(errRegistry)
	}
	if g := c.gates[step]; g != nil {
		select {
		case <-g:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func (c *gatedController) Prepare(ctx context.Context) error {
	c.mu.Lock()
	progress := c.progress
	c.mu.Unlock()
	if progress != nil {
		progress("pulling image busybox: 1 of 2 layers")
	}
	if err := c.wait(ctx, "prepare"); err != nil {
		return err
	}
	return c.Controller.Prepare(ctx)
}

func (c *gatedController) Start(ctx context.Context) error {
	if err := c.wait(ctx, "start"); err != nil {
		return err
	}
	return c.Controller.Start(ctx)
}
