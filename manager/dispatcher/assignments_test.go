package dispatcher_test

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gogo/protobuf/types"
	"google.golang.org/grpc/codes"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/manager/dispatcher"
	"github.com/flotilla/flotilla/manager/store"
)

const (
	window   = dispatcher.DefaultAssignmentsBatchWindow
	flushGap = dispatcher.DefaultStatusFlushInterval
)

func newTask(id, nodeID string, st, desired api.TaskState) *api.Task {
	return &api.Task{
		ID:                 id,
		ServiceID:          "svc",
		NodeID:             nodeID,
		Annotations:        api.Annotations{Name: "web." + id, Labels: map[string]string{"a": "1", "b": "2"}},
		ServiceAnnotations: api.Annotations{Name: "web"},
		Spec: api.TaskSpec{Container: &api.ContainerSpec{Image: "nginx:1.27", Env: []string{"A=1"},
			Labels: map[string]string{"x": "1", "y": "2", "z": "3"}}},
		SpecVersion:  1,
		DesiredState: desired,
		Status:       api.TaskStatus{State: st},
	}
}

func (h *harness) createTasks(t testing.TB, tasks ...*api.Task) {
	t.Helper()
	_, err := h.store.Batch(context.Background(), func(b *store.Batch) error {
		for _, tk := range tasks {
			if err := b.Update(func(tx store.Tx) error { return tx.Create(tk) }); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func (h *harness) updateTask(t testing.TB, id string, fn func(*api.Task)) {
	t.Helper()
	err := h.store.Update(context.Background(), func(tx store.Tx) error {
		tk := store.Get[*api.Task](tx, id)
		if tk == nil {
			return fmt.Errorf("no task %s", id)
		}
		fn(tk)
		return tx.Update(tk)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func (h *harness) task(t testing.TB, id string) *api.Task {
	t.Helper()
	var tk *api.Task
	h.store.View(func(tx store.ReadTx) { tk = store.Get[*api.Task](tx, id) })
	if tk == nil {
		t.Fatalf("task %s is not in the store", id)
	}
	return tk
}

func (h *harness) taskState(t testing.TB, id string) api.TaskState {
	t.Helper()
	return h.task(t, id).Status.State
}

// assignClient reads an Assignments stream in the background.
type assignClient struct {
	msgs   chan *api.AssignmentsMessage
	done   chan struct{}
	err    error // after done
	cancel context.CancelFunc
}

func (h *harness) assignments(t testing.TB, nodeID, sessionID string) *assignClient {
	t.Helper()
	ctx, cancel := context.WithCancel(as(nodeID))
	t.Cleanup(cancel)
	stream, err := h.client.Assignments(ctx, &api.AssignmentsRequest{SessionID: sessionID})
	if err != nil {
		t.Fatal(err)
	}
	c := &assignClient{msgs: make(chan *api.AssignmentsMessage, 4096), done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(c.done)
		for {
			m, err := stream.Recv()
			if err != nil {
				c.err = err
				return
			}
			c.msgs <- m
		}
	}()
	return c
}

// next returns the stream's next message.
func (c *assignClient) next(t testing.TB) *api.AssignmentsMessage {
	t.Helper()
	select {
	case m := <-c.msgs:
		return m
	default:
	}
	select {
	case m := <-c.msgs:
		return m
	case <-c.done:
		select {
		case m := <-c.msgs:
			return m
		default:
		}
		t.Fatalf("assignments stream ended: %v", c.err)
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting for an assignments message")
	}
	return nil
}

// ended waits for the stream to end, skipping messages, and returns its error.
func (c *assignClient) ended(t testing.TB) error {
	t.Helper()
	for {
		select {
		case <-c.msgs:
		case <-c.done:
			return c.err
		case <-time.After(10 * time.Second):
			t.Fatal("assignments stream did not end")
		}
	}
}

// connect opens a session and an Assignments stream for nodeID and returns
// them with the stream's first (complete) message.
func (h *harness) connect(t testing.TB, nodeID string) (*session, *assignClient, *api.AssignmentsMessage) {
	t.Helper()
	s := h.open(t, nodeID, nil)
	c := h.assignments(t, nodeID, s.id)
	m := c.next(t)
	if m.Type != api.AssignmentsComplete || m.AppliesTo != "" || m.ResultsIn == "" {
		t.Fatalf("first message: type %v applies_to %q results_in %q", m.Type, m.AppliesTo, m.ResultsIn)
	}
	return s, c, m
}

type change struct {
	id      string
	action  api.AssignmentChange_Action
	desired api.TaskState
}

func changes(m *api.AssignmentsMessage) []change {
	var out []change
	for _, c := range m.Changes {
		tk := c.Assignment.GetTask()
		out = append(out, change{id: tk.ID, action: c.Action, desired: tk.DesiredState})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}

func wantChanges(t testing.TB, m *api.AssignmentsMessage, want ...change) {
	t.Helper()
	if got := changes(m); !slices.Equal(got, want) {
		t.Fatalf("changes %+v, want %+v", got, want)
	}
}

func upd(id string, desired api.TaskState) change {
	return change{id: id, action: api.AssignmentActionUpdate, desired: desired}
}

func rm(id string) change { return change{id: id, action: api.AssignmentActionRemove} }

func (h *harness) report(nodeID, sessionID string, updates ...*api.UpdateTaskStatusRequest_TaskStatusUpdate) error {
	_, err := h.client.UpdateTaskStatus(as(nodeID), &api.UpdateTaskStatusRequest{SessionID: sessionID, Updates: updates})
	return err
}

func st(taskID string, s api.TaskState, msg string) *api.UpdateTaskStatusRequest_TaskStatusUpdate {
	return &api.UpdateTaskStatusRequest_TaskStatusUpdate{TaskID: taskID, Status: &api.TaskStatus{State: s, Message: msg}}
}

const (
	running  = api.TaskStateRunning
	shutdown = api.TaskStateShutdown
	remove   = api.TaskStateRemove
)

func TestAssignmentsCompleteSetOnConnect(t *testing.T) {
	h := newHarness(t)
	h.addNode(t, "n1", api.NodeStatusUnknown)
	h.addNode(t, "n2", api.NodeStatusUnknown)
	h.createTasks(t,
		newTask("t1", "n1", api.TaskStateAssigned, running),
		newTask("t2", "n1", api.TaskStateRunning, running),
		newTask("t3", "n1", api.TaskStatePending, running), // global task not placed yet
		newTask("t4", "n1", api.TaskStateRunning, shutdown),
		newTask("t5", "n1", api.TaskStateRunning, remove),
		newTask("t6", "n2", api.TaskStateAssigned, running),
		newTask("t7", "", api.TaskStatePending, running),
	)
	h.run(t)
	_, _, m := h.connect(t, "n1")
	wantChanges(t, m, upd("t1", running), upd("t2", running), upd("t4", shutdown), upd("t5", remove))
	for _, c := range m.Changes {
		if c.Assignment.GetTask().Spec.Container.Image != "nginx:1.27" {
			t.Fatalf("complete set carries an incomplete task: %v", c.Assignment.GetTask())
		}
	}
	_, _, m = h.connect(t, "n2")
	wantChanges(t, m, upd("t6", running))
}

func TestAssignmentsIncrementalChanges(t *testing.T) {
	h := newHarness(t)
	h.addNode(t, "n1", api.NodeStatusUnknown)
	h.addNode(t, "n2", api.NodeStatusUnknown)
	h.run(t)
	_, c, first := h.connect(t, "n1")
	wantChanges(t, first)
	prev := first.ResultsIn
	step := func(want ...change) {
		t.Helper()
		h.clock.Advance(window)
		m := c.next(t)
		if m.Type != api.AssignmentsIncremental || m.AppliesTo != prev || m.ResultsIn == prev {
			t.Fatalf("message type %v applies_to %q results_in %q; previous results_in %q",
				m.Type, m.AppliesTo, m.ResultsIn, prev)
		}
		prev = m.ResultsIn
		wantChanges(t, m, want...)
	}

	// Assigned by the scheduler: PENDING without a node, then ASSIGNED to n1.
	h.createTasks(t, newTask("t1", "", api.TaskStatePending, running))
	h.updateTask(t, "t1", func(tk *api.Task) { tk.NodeID, tk.Status.State = "n1", api.TaskStateAssigned })
	step(upd("t1", running))

	// Created already assigned (global orchestrator), next to another node's task.
	h.createTasks(t, newTask("t2", "n1", api.TaskStateAssigned, running), newTask("t9", "n2", api.TaskStateAssigned, running))
	step(upd("t2", running))

	// Desired state changes.
	h.updateTask(t, "t1", func(tk *api.Task) { tk.DesiredState = shutdown })
	step(upd("t1", shutdown))

	// A spec change (new spec version).
	h.updateTask(t, "t2", func(tk *api.Task) { tk.SpecVersion, tk.Spec.Container.Image = 2, "nginx:1.28" })
	h.clock.Advance(window)
	m := c.next(t)
	wantChanges(t, m, upd("t2", running))
	prev = m.ResultsIn
	if img := m.Changes[0].Assignment.GetTask().Spec.Container.Image; img != "nginx:1.28" {
		t.Fatalf("update carries image %q", img)
	}

	// A change outside the fields compared first (same spec version: say
	// the allocator attaches a network).
	h.updateTask(t, "t2", func(tk *api.Task) {
		tk.Networks = []*api.NetworkAttachment{{Addresses: []string{"10.0.0.5/24"}}}
	})
	h.clock.Advance(window)
	m = c.next(t)
	wantChanges(t, m, upd("t2", running))
	prev = m.ResultsIn
	if nets := m.Changes[0].Assignment.GetTask().Networks; len(nets) != 1 {
		t.Fatalf("update carries networks %v", nets)
	}

	// Deleted.
	if err := h.store.Update(context.Background(), func(tx store.Tx) error { return tx.Delete(api.KindTask, "t1") }); err != nil {
		t.Fatal(err)
	}
	step(rm("t1"))

	// Moved to another node: REMOVE here, UPDATE there.
	_, c2, m2 := h.connect(t, "n2")
	wantChanges(t, m2, upd("t9", running))
	h.updateTask(t, "t2", func(tk *api.Task) { tk.NodeID = "n2" })
	step(rm("t2"))
	wantChanges(t, c2.next(t), upd("t2", running))
}

func TestAssignmentsDoNotEchoStatus(t *testing.T) {
	h := newHarness(t)
	h.addNode(t, "n1", api.NodeStatusUnknown)
	h.createTasks(t,
		newTask("t1", "n1", api.TaskStateAssigned, running),
		newTask("t2", "n1", api.TaskStateRunning, running))
	h.run(t)
	s, c, m := h.connect(t, "n1")
	wantChanges(t, m, upd("t1", running), upd("t2", running))

	// The agent's own reports, written by two flushes...
	if err := h.report("n1", s.id, st("t1", api.TaskStateAccepted, ""), st("t1", api.TaskStatePreparing, "pulling")); err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(flushGap)
	waitFor(t, "PREPARING written", func() bool { return h.taskState(t, "t1") == api.TaskStatePreparing })
	if err := h.report("n1", s.id, st("t1", running, "started")); err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(flushGap)
	waitFor(t, "RUNNING written", func() bool { return h.taskState(t, "t1") == running })
	// ...and a status change made by the manager.
	h.updateTask(t, "t2", func(tk *api.Task) { tk.Status.State, tk.Status.Message = api.TaskStateOrphaned, "node gone" })
	h.clock.Advance(window)

	// The next message is about the next change that matters to the agent,
	// and only about it: nothing was sent for the status changes.
	h.createTasks(t, newTask("t3", "n1", api.TaskStateAssigned, running))
	h.clock.Advance(window)
	wantChanges(t, c.next(t), upd("t3", running))
}

// Run's watch may lag behind the store when a stream starts: the complete
// set, read from the store, then already holds changes that Run hands over
// afterwards. They are not sent again.
func TestAssignmentsCompleteSetAheadOfRunIsNotRepeated(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	var gated atomic.Bool
	h := newHarness(t, withProposerGate(func(tr *api.StoreTransaction) {
		for _, a := range tr.Actions {
			if tk := a.Target.GetTask(); tk != nil && tk.ID == "t1" && tk.Status.State == running &&
				gated.CompareAndSwap(false, true) {
				close(entered)
				<-release
			}
		}
	}))
	h.addNode(t, "n1", api.NodeStatusUnknown)
	h.createTasks(t,
		newTask("t1", "n1", api.TaskStateAssigned, running),
		newTask("t2", "n1", api.TaskStateAssigned, running))
	h.run(t)
	s := h.open(t, "n1", nil)

	// Run blocks in its status flush...
	if err := h.report("n1", s.id, st("t1", running, "")); err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(flushGap)
	<-entered
	// ...while t2 is shut down and the stream starts.
	h.updateTask(t, "t2", func(tk *api.Task) { tk.DesiredState = shutdown })
	c := h.assignments(t, "n1", s.id)
	wantChanges(t, c.next(t), upd("t1", running), upd("t2", shutdown))
	close(release)
	waitFor(t, "t1 RUNNING", func() bool { return h.taskState(t, "t1") == running })

	h.clock.Advance(window)
	h.createTasks(t, newTask("t3", "n1", api.TaskStateAssigned, running))
	h.clock.Advance(window)
	wantChanges(t, c.next(t), upd("t3", running))
}

func TestAssignmentsBatching(t *testing.T) {
	h := newHarness(t)
	h.addNode(t, "n1", api.NodeStatusUnknown)
	h.run(t)
	_, c, _ := h.connect(t, "n1")

	// 1000 assignments in 100 transactions, while the window started by the
	// complete message is open (the clock stands still): they wait, and go
	// in one message as soon as 1000 are waiting.
	for i := 0; i < 100; i++ {
		var tasks []*api.Task
		for j := 0; j < 10; j++ {
			tasks = append(tasks, newTask(fmt.Sprintf("a%02d%d", i, j), "n1", api.TaskStateAssigned, running))
		}
		h.createTasks(t, tasks...)
	}
	m := c.next(t)
	if len(m.Changes) != 1000 {
		t.Fatalf("first message after 1000 assignments has %d changes, want 1000", len(m.Changes))
	}
	prev := m.ResultsIn

	// 2500 in one transaction: three messages of at most 1000 changes, at once.
	var tasks []*api.Task
	for i := 0; i < 2500; i++ {
		tasks = append(tasks, newTask(fmt.Sprintf("b%04d", i), "n1", api.TaskStateAssigned, running))
	}
	h.createTasks(t, tasks...)
	seen := map[string]bool{}
	for _, want := range []int{1000, 1000, 500} {
		m := c.next(t)
		if len(m.Changes) != want || m.AppliesTo != prev {
			t.Fatalf("message of %d changes applying to %q, want %d applying to %q", len(m.Changes), m.AppliesTo, want, prev)
		}
		prev = m.ResultsIn
		for _, ch := range m.Changes {
			seen[ch.Assignment.GetTask().ID] = true
		}
	}
	if len(seen) != 2500 {
		t.Fatalf("%d distinct tasks, want 2500", len(seen))
	}
}

func TestAssignmentsEndWithTheSession(t *testing.T) {
	t.Run("replaced", func(t *testing.T) {
		h := newHarness(t)
		h.addNode(t, "n1", api.NodeStatusUnknown)
		h.run(t)
		_, c, _ := h.connect(t, "n1")
		h.open(t, "n1", nil)
		wantCode(t, c.ended(t), codes.Aborted, "replaced by a newer session")
	})
	t.Run("second stream", func(t *testing.T) {
		h := newHarness(t)
		h.addNode(t, "n1", api.NodeStatusUnknown)
		h.createTasks(t, newTask("t1", "n1", api.TaskStateAssigned, running))
		h.run(t)
		s, c, _ := h.connect(t, "n1")
		c2 := h.assignments(t, "n1", s.id)
		wantChanges(t, c2.next(t), upd("t1", running))
		wantCode(t, c.ended(t), codes.Aborted, "replaced by a newer assignments stream")
	})
	t.Run("down", func(t *testing.T) {
		h := newHarness(t)
		h.addNode(t, "n1", api.NodeStatusUnknown)
		h.run(t)
		_, c, _ := h.connect(t, "n1")
		h.clock.Advance(dispatcher.MissedHeartbeats * period)
		wantCode(t, c.ended(t), codes.DeadlineExceeded, "marked DOWN")
	})
	t.Run("removed", func(t *testing.T) {
		h := newHarness(t)
		h.addNode(t, "n1", api.NodeStatusUnknown)
		h.run(t)
		_, c, _ := h.connect(t, "n1")
		if err := h.store.Update(context.Background(), func(tx store.Tx) error { return tx.Delete(api.KindNode, "n1") }); err != nil {
			t.Fatal(err)
		}
		wantCode(t, c.ended(t), codes.NotFound, "node n1 was removed")
	})
	t.Run("run stops", func(t *testing.T) {
		h := newHarness(t)
		h.addNode(t, "n1", api.NodeStatusUnknown)
		h.run(t)
		_, c, _ := h.connect(t, "n1")
		h.stop(t)
		wantCode(t, c.ended(t), codes.Unavailable, "no longer the leader")
	})
	t.Run("bad session", func(t *testing.T) {
		h := newHarness(t)
		h.addNode(t, "n1", api.NodeStatusUnknown)
		h.addNode(t, "n2", api.NodeStatusUnknown)
		c := h.assignments(t, "n1", "nope")
		wantCode(t, c.ended(t), codes.Unavailable, "not the leader")
		h.run(t)
		c = h.assignments(t, "n1", "nope")
		wantCode(t, c.ended(t), codes.NotFound, "session nope is not valid: open a new session")
		s := h.open(t, "n1", nil)
		c = h.assignments(t, "n2", s.id) // another node's session
		wantCode(t, c.ended(t), codes.NotFound, "session "+s.id+" is not valid")
	})
}

func TestStoreRestoreResendsCompleteSet(t *testing.T) {
	h := newHarness(t)
	h.addNode(t, "n1", api.NodeStatusUnknown)
	h.createTasks(t, newTask("t1", "n1", api.TaskStateAssigned, running))
	snap, err := h.store.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	h.run(t)
	_, c, _ := h.connect(t, "n1")
	h.createTasks(t, newTask("t2", "n1", api.TaskStateAssigned, running))
	h.clock.Advance(window)
	wantChanges(t, c.next(t), upd("t2", running))
	if err := h.store.Restore(snap); err != nil {
		t.Fatal(err)
	}
	m := c.next(t)
	if m.Type != api.AssignmentsComplete {
		t.Fatalf("after a restore: %v, want a complete set", m.Type)
	}
	wantChanges(t, m, upd("t1", running))
}

func TestTaskStatusIsWrittenAtTheFlush(t *testing.T) {
	h := newHarness(t)
	h.addNode(t, "n1", api.NodeStatusUnknown)
	h.createTasks(t, newTask("t1", "n1", api.TaskStateAssigned, running))
	h.run(t)
	s := h.open(t, "n1", nil)
	received := h.clock.Now()
	upd := st("t1", running, "started")
	upd.Status.AppliedBy = "someone else"
	if err := h.report("n1", s.id, upd); err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(flushGap - time.Millisecond)
	h.barrier(t)
	if got := h.taskState(t, "t1"); got != api.TaskStateAssigned {
		t.Fatalf("status written before the flush: %v", got)
	}
	h.clock.Advance(time.Millisecond)
	waitFor(t, "t1 RUNNING", func() bool { return h.taskState(t, "t1") == running })
	got := h.task(t, "t1").Status
	if got.Message != "started" || got.AppliedBy != "n1" || got.AppliedAt == nil || got.AppliedAt.Seconds != received.Unix() {
		t.Fatalf("written status: %+v", got)
	}
}

func TestTaskStatusOfManyNodesInOneProposal(t *testing.T) {
	h := newHarness(t)
	const nodes, tasks = 50, 20
	var all []*api.Task
	for i := 0; i < nodes; i++ {
		h.addNode(t, fmt.Sprintf("n%02d", i), api.NodeStatusUnknown)
		for j := 0; j < tasks; j++ {
			all = append(all, newTask(fmt.Sprintf("t%02d-%02d", i, j), fmt.Sprintf("n%02d", i), api.TaskStateAssigned, running))
		}
	}
	h.createTasks(t, all...)
	h.run(t)
	ids := make([]string, nodes)
	for i := range ids {
		ids[i] = h.open(t, fmt.Sprintf("n%02d", i), nil).id
	}
	h.barrier(t)
	before := h.proposals()
	var wg sync.WaitGroup
	for i := 0; i < nodes; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var ups []*api.UpdateTaskStatusRequest_TaskStatusUpdate
			for j := 0; j < tasks; j++ {
				ups = append(ups, st(fmt.Sprintf("t%02d-%02d", i, j), running, ""))
			}
			if err := h.report(fmt.Sprintf("n%02d", i), ids[i], ups...); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if got := h.proposals() - before; got != 0 {
		t.Fatalf("%d proposals before the flush", got)
	}
	h.clock.Advance(flushGap)
	waitFor(t, "every task RUNNING", func() bool {
		for _, tk := range all {
			if h.taskState(t, tk.ID) != running {
				return false
			}
		}
		return true
	})
	if got := h.proposals() - before; got != 1 {
		t.Fatalf("%d status reports of %d nodes took %d proposals, want 1", nodes*tasks, nodes, got)
	}
}

// A queue bigger than one flush takes is written in batches, back to back.
func TestTaskStatusBigQueueIsWrittenInBatches(t *testing.T) {
	t.Cleanup(dispatcher.SetStatusFlushMax(10)) // after the harness is gone
	h := newHarness(t)
	h.addNode(t, "n1", api.NodeStatusUnknown)
	var all []*api.Task
	var ups []*api.UpdateTaskStatusRequest_TaskStatusUpdate
	for i := 0; i < 25; i++ {
		all = append(all, newTask(fmt.Sprintf("t%02d", i), "n1", api.TaskStateAssigned, running))
		ups = append(ups, st(fmt.Sprintf("t%02d", i), running, ""))
	}
	h.createTasks(t, all...)
	h.run(t)
	s := h.open(t, "n1", nil)
	h.barrier(t)
	before := h.proposals()
	if err := h.report("n1", s.id, ups...); err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(flushGap)
	waitFor(t, "every task RUNNING", func() bool {
		for _, tk := range all {
			if h.taskState(t, tk.ID) != running {
				return false
			}
		}
		return true
	})
	if got := h.proposals() - before; got != 3 {
		t.Fatalf("25 statuses in batches of 10 took %d proposals, want 3", got)
	}
}

func TestTaskStatusOfAnotherNodesTaskIsRefused(t *testing.T) {
	h := newHarness(t)
	h.addNode(t, "n1", api.NodeStatusUnknown)
	h.addNode(t, "n2", api.NodeStatusUnknown)
	h.createTasks(t,
		newTask("t1", "n1", api.TaskStateAssigned, running),
		newTask("t2", "n2", api.TaskStateAssigned, running))
	h.run(t)
	s := h.open(t, "n1", nil)
	h.barrier(t)
	before := h.proposals()
	err := h.report("n1", s.id, st("t1", running, ""), st("t2", running, ""))
	wantCode(t, err, codes.PermissionDenied, "task t2 is not assigned to node n1")
	h.clock.Advance(flushGap)
	h.barrier(t)
	if h.taskState(t, "t1") != api.TaskStateAssigned || h.taskState(t, "t2") != api.TaskStateAssigned {
		t.Fatal("a refused request wrote something")
	}
	if got := h.proposals() - before; got != 0 {
		t.Fatalf("%d proposals after a refused request", got)
	}
}

func TestTaskStatusBackwardsAndDuplicatesAreIgnored(t *testing.T) {
	h := newHarness(t)
	h.addNode(t, "n1", api.NodeStatusUnknown)
	h.createTasks(t,
		newTask("t1", "n1", api.TaskStateAssigned, running),
		newTask("t2", "n1", api.TaskStateAssigned, running),
		newTask("t3", "n1", api.TaskStateAssigned, running))
	h.run(t)
	s := h.open(t, "n1", nil)
	h.barrier(t)
	flush := func(what string, cond func() bool) {
		t.Helper()
		h.clock.Advance(flushGap)
		waitFor(t, what, cond)
	}

	// Reordered within a request and across requests queued for one flush;
	// REJECTED and FAILED may come straight from ASSIGNED.
	if err := h.report("n1", s.id, st("t1", running, ""), st("t1", api.TaskStateStarting, "")); err != nil {
		t.Fatal(err)
	}
	if err := h.report("n1", s.id, st("t2", api.TaskStateRejected, "no such image"), st("t1", api.TaskStatePreparing, "")); err != nil {
		t.Fatal(err)
	}
	if err := h.report("n1", s.id, st("t3", api.TaskStateFailed, "exit 1")); err != nil {
		t.Fatal(err)
	}
	flush("t1 RUNNING, t2 REJECTED, t3 FAILED", func() bool {
		return h.taskState(t, "t1") == running && h.taskState(t, "t2") == api.TaskStateRejected &&
			h.taskState(t, "t3") == api.TaskStateFailed
	})

	// Backwards and duplicate reports: nothing to write.
	before := h.proposals()
	if err := h.report("n1", s.id, st("t1", api.TaskStateStarting, ""), st("t1", running, ""),
		st("t2", api.TaskStateRejected, "no such image"), st("t3", running, "")); err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(flushGap)
	h.barrier(t) // the barrier's own write is not a new proposal: it registered before
	if got := h.proposals() - before; got != 0 {
		t.Fatalf("backwards and duplicate reports made %d proposals", got)
	}
	// Same state, new content: written.
	if err := h.report("n1", s.id, st("t1", running, "healthy")); err != nil {
		t.Fatal(err)
	}
	flush("t1's new message", func() bool { return h.task(t, "t1").Status.Message == "healthy" })
	// A task deleted since (by the reaper) is ignored, not refused.
	if err := h.store.Update(context.Background(), func(tx store.Tx) error { return tx.Delete(api.KindTask, "t3") }); err != nil {
		t.Fatal(err)
	}
	if err := h.report("n1", s.id, st("t3", api.TaskStateFailed, "exit 2")); err != nil {
		t.Fatalf("report of a deleted task: %v", err)
	}

	// States the agent does not own are refused.
	for _, bad := range []api.TaskState{api.TaskStateNew, api.TaskStatePending, api.TaskStateAssigned,
		api.TaskStateRemove, api.TaskStateOrphaned, api.TaskState(300)} {
		err := h.report("n1", s.id, st("t1", bad, ""))
		wantCode(t, err, codes.InvalidArgument, "cannot be reported by an agent")
	}
	err := h.report("n1", s.id, &api.UpdateTaskStatusRequest_TaskStatusUpdate{TaskID: "t1"})
	wantCode(t, err, codes.InvalidArgument, "no task ID or no status")
}

func TestTaskStatusNeedsAValidSession(t *testing.T) {
	h := newHarness(t)
	h.addNode(t, "n1", api.NodeStatusUnknown)
	h.addNode(t, "n2", api.NodeStatusUnknown)
	h.createTasks(t, newTask("t1", "n1", api.TaskStateAssigned, running))
	err := h.report("n1", "x", st("t1", running, ""))
	wantCode(t, err, codes.Unavailable, "not the leader")
	h.run(t)
	err = h.report("n1", "x", st("t1", running, ""))
	wantCode(t, err, codes.NotFound, "session x is not valid: open a new session")
	s := h.open(t, "n1", nil)
	err = h.report("n2", s.id, st("t1", running, ""))
	wantCode(t, err, codes.NotFound, "session "+s.id+" is not valid")
	s2 := h.open(t, "n1", nil) // replaces s
	err = h.report("n1", s.id, st("t1", running, ""))
	wantCode(t, err, codes.NotFound, "is not valid")
	if err := h.report("n1", s2.id, st("t1", running, "")); err != nil {
		t.Fatal(err)
	}
}

// A status flush that loses a race with another writer is retried, and the
// other writer's change still reaches the agent.
func TestTaskStatusFlushLosingARaceIsRetried(t *testing.T) {
	var raced atomic.Bool
	h := newHarness(t, withProposerHook(func(s *store.MemoryStore, tr *api.StoreTransaction) []api.StoreAction {
		for _, a := range tr.Actions {
			tk := a.Target.GetTask()
			if tk == nil || tk.ID != "t1" || tk.Status.State != running || !raced.CompareAndSwap(false, true) {
				continue
			}
			// The orchestrator shuts the task down just before the status lands.
			var cur *api.Task
			s.View(func(tx store.ReadTx) { cur = store.Get[*api.Task](tx, "t1") })
			cur.DesiredState = shutdown
			return []api.StoreAction{{Kind: api.StoreActionKindUpdate, Target: api.NewObject(cur)}}
		}
		return nil
	}))
	h.addNode(t, "n1", api.NodeStatusUnknown)
	h.createTasks(t, newTask("t1", "n1", api.TaskStateAssigned, running))
	h.run(t)
	s, c, _ := h.connect(t, "n1")
	if err := h.report("n1", s.id, st("t1", running, "")); err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(flushGap)
	waitFor(t, "t1 RUNNING", func() bool { return h.taskState(t, "t1") == running })
	if !raced.Load() {
		t.Fatal("the hook did not run")
	}
	if tk := h.task(t, "t1"); tk.DesiredState != shutdown {
		t.Fatalf("the orchestrator's change was lost: %v", tk.DesiredState)
	}
	h.clock.Advance(window)
	wantChanges(t, c.next(t), upd("t1", shutdown))
}

// BenchmarkTasks1000Nodes: 1000 nodes with a session and an Assignments
// stream each, real clock and default windows. First 100 tasks per node are
// committed (100k, in one store batch, as a scheduler would): the time the
// commit takes (the store's), then until every stream has received its 100
// tasks, and the messages per node. Then every node reports its 100 tasks
// RUNNING (1000 concurrent requests): the time until every request returned
// (statuses queued), until all 100k are in the store, and the proposals the
// flushes took.
func BenchmarkTasks1000Nodes(b *testing.B) {
	const nodes, perNode = 1000, 100
	h := newHarness(b, withRealClock())
	// The agents here do not heartbeat: a long period keeps them READY.
	err := h.store.Update(context.Background(), func(tx store.Tx) error {
		cs, err := store.Find[*api.Cluster](tx, store.All())
		if err != nil {
			return err
		}
		cs[0].Spec.Dispatcher.HeartbeatPeriod = types.DurationProto(time.Hour)
		return tx.Update(cs[0])
	})
	if err != nil {
		b.Fatal(err)
	}
	h.run(b)
	setup := time.Now()
	nodeID := func(i int) string { return fmt.Sprintf("n%04d", i) }
	for i := 0; i < nodes; i++ {
		h.addNode(b, nodeID(i), api.NodeStatusUnknown)
	}
	ids := make([]string, nodes)
	var updates, removes, messages atomic.Int64
	var target atomic.Int64
	reached := make(chan struct{}, 1)
	for i := 0; i < nodes; i++ {
		s := h.open(b, nodeID(i), nil)
		ids[i] = s.id
		ctx, cancel := context.WithCancel(as(nodeID(i)))
		b.Cleanup(cancel)
		stream, err := h.client.Assignments(ctx, &api.AssignmentsRequest{SessionID: s.id})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := stream.Recv(); err != nil {
			b.Fatal(err)
		}
		go func() {
			for {
				m, err := stream.Recv()
				if err != nil {
					return
				}
				messages.Add(1)
				var u, r int64
				for _, c := range m.Changes {
					if c.Action == api.AssignmentActionUpdate {
						u++
					} else {
						r++
					}
				}
				removes.Add(r)
				if n := updates.Add(u); u > 0 && n == target.Load() {
					reached <- struct{}{}
				}
			}
		}()
	}
	_, w, _, err := h.store.Watch(0)
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	b.Logf("%d sessions and streams opened in %v", nodes, time.Since(setup))

	var commitNs, deliverNs, rpcNs, writeNs, msgs, props, bytesPerTask float64
	round := 0
	for b.Loop() {
		round++
		tasks := make([]*api.Task, 0, nodes*perNode)
		for j := 0; j < perNode; j++ {
			for i := 0; i < nodes; i++ {
				tasks = append(tasks, newTask(fmt.Sprintf("r%d-%s-%03d", round, nodeID(i), j), nodeID(i), api.TaskStateAssigned, running))
			}
		}
		bytesPerTask = float64(tasks[0].Size())
		updates.Store(0)
		messages.Store(0)
		target.Store(nodes * perNode)

		// Assign.
		t0 := time.Now()
		h.createTasks(b, tasks...)
		t1 := time.Now()
		select {
		case <-reached:
		case <-time.After(time.Minute):
			b.Fatalf("streams received %d of %d tasks", updates.Load(), nodes*perNode)
		}
		commitNs += float64(t1.Sub(t0).Nanoseconds())
		deliverNs += float64(time.Since(t1).Nanoseconds())
		msgs += float64(messages.Load())

		// Drain the watch of the creation, then report RUNNING.
		for len(w.C) > 0 {
			<-w.C
		}
		before := h.proposals()
		t0 = time.Now()
		var wg sync.WaitGroup
		for i := 0; i < nodes; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ups := make([]*api.UpdateTaskStatusRequest_TaskStatusUpdate, perNode)
				for j := range ups {
					ups[j] = st(fmt.Sprintf("r%d-%s-%03d", round, nodeID(i), j), running, "")
				}
				if err := h.report(nodeID(i), ids[i], ups...); err != nil {
					b.Error(err)
				}
			}()
		}
		wg.Wait()
		rpcNs += float64(time.Since(t0).Nanoseconds())
		seen := 0
		for seen < nodes*perNode {
			select {
			case c, ok := <-w.C:
				if !ok {
					b.Fatalf("test watch ended: %v", w.Err())
				}
				for _, ev := range c.Events {
					if tk, ok := ev.Object.(*api.Task); ok && ev.Action == api.WatchActionKindUpdate && tk.Status.State == running {
						seen++
					}
				}
			case <-time.After(time.Minute):
				b.Fatalf("%d of %d statuses written", seen, nodes*perNode)
			}
		}
		writeNs += float64(time.Since(t0).Nanoseconds())
		props += float64(h.proposals() - before)

		// Clean up for the next round (not measured): REMOVE to every stream.
		b.StopTimer()
		_, err := h.store.Batch(context.Background(), func(bt *store.Batch) error {
			for _, tk := range tasks {
				if err := bt.Update(func(tx store.Tx) error { return tx.Delete(api.KindTask, tk.ID) }); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		for len(w.C) > 0 {
			<-w.C
		}
		b.StartTimer()
	}
	n := float64(round)
	b.ReportMetric(commitNs/n/1e6, "ms-assign-commit")
	b.ReportMetric(deliverNs/n/1e6, "ms-assign-delivered-after-commit")
	b.ReportMetric(msgs/n/nodes, "msgs/node")
	b.ReportMetric(rpcNs/n/1e6, "ms-status-rpcs")
	b.ReportMetric(writeNs/n/1e6, "ms-status-in-store")
	b.ReportMetric(props/n, "proposals/100k-statuses")
	b.ReportMetric(bytesPerTask, "bytes/task")
}
