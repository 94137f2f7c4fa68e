package scheduler

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/manager/store"
	"github.com/flotilla/flotilla/manager/store/storetest"
)

const gib = 1 << 30

// waitTimeout bounds every wait for the scheduler; waits poll the store.
const waitTimeout = 10 * time.Second

func testLogger() *slog.Logger {
	if os.Getenv("SCHEDULER_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

type harness struct {
	t      *testing.T
	store  *store.MemoryStore
	prop   *storetest.Proposer
	sched  *Scheduler
	cancel context.CancelFunc
	done   chan error
	syncs  int
}

// newHarness makes a store and a scheduler on it; start runs the scheduler.
func newHarness(t *testing.T) *harness {
	t.Helper()
	s, p := storetest.New()
	h := &harness{t: t, store: s, prop: p, sched: New(s, testLogger())}
	t.Cleanup(h.stop)
	return h
}

func (h *harness) start() {
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	h.done = make(chan error, 1)
	go func() { h.done <- h.sched.Run(ctx) }()
}

// stop ends Run and checks it returned nil. After stop the test may read the
// scheduler's state.
func (h *harness) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	h.cancel = nil
	select {
	case err := <-h.done:
		if err != nil {
			h.t.Errorf("Run returned %v, want nil", err)
		}
	case <-time.After(waitTimeout):
		h.t.Fatal("Run did not return after its context ended")
	}
}

func (h *harness) create(objs ...api.StoreObject) {
	h.t.Helper()
	_, err := h.store.Batch(context.Background(), func(b *store.Batch) error {
		for _, o := range objs {
			if err := b.Update(func(tx store.Tx) error { return tx.Create(o) }); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		h.t.Fatalf("create: %v", err)
	}
}

func (h *harness) createTasks(ts []*api.Task) {
	h.t.Helper()
	objs := make([]api.StoreObject, len(ts))
	for i, t := range ts {
		objs[i] = t
	}
	h.create(objs...)
}

func (h *harness) updateNode(id string, fn func(*api.Node)) {
	h.t.Helper()
	err := h.store.Update(context.Background(), func(tx store.Tx) error {
		n := store.Get[*api.Node](tx, id)
		if n == nil {
			return fmt.Errorf("no node %s", id)
		}
		fn(n)
		return tx.Update(n)
	})
	if err != nil {
		h.t.Fatalf("update node %s: %v", id, err)
	}
}

func (h *harness) updateTask(id string, fn func(*api.Task)) {
	h.t.Helper()
	err := h.store.Update(context.Background(), func(tx store.Tx) error {
		t := store.Get[*api.Task](tx, id)
		if t == nil {
			return fmt.Errorf("no task %s", id)
		}
		fn(t)
		return tx.Update(t)
	})
	if err != nil {
		h.t.Fatalf("update task %s: %v", id, err)
	}
}

func (h *harness) deleteTask(id string) {
	h.t.Helper()
	err := h.store.Update(context.Background(), func(tx store.Tx) error { return tx.Delete(api.KindTask, id) })
	if err != nil {
		h.t.Fatalf("delete task %s: %v", id, err)
	}
}

func (h *harness) task(id string) *api.Task {
	var t *api.Task
	h.store.View(func(tx store.ReadTx) { t = store.Get[*api.Task](tx, id) })
	return t
}

// eventually polls cond on the store until it returns nil; at the deadline the
// test fails with cond's last error.
func (h *harness) eventually(cond func(tx store.ReadTx) error) {
	h.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		var err error
		h.store.View(func(tx store.ReadTx) { err = cond(tx) })
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("after %v: %v", waitTimeout, err)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// waitPass waits until the scheduler has made a pass that took in every
// change made so far (the last one must be one that starts a pass).
func (h *harness) waitPass() {
	h.t.Helper()
	version := h.store.Version()
	deadline := time.Now().Add(waitTimeout)
	for h.sched.passed.Load() < version {
		if time.Now().After(deadline) {
			h.t.Fatalf("no pass took in the changes up to version %d (last pass at %d)", version, h.sched.passed.Load())
		}
		time.Sleep(time.Millisecond)
	}
}

// waitAssigned waits until every task of the service that is desired running
// and not pending is ASSIGNED (or later), and want of them are, then returns
// the count per node.
func (h *harness) waitAssigned(service string, want int) map[string]int {
	h.t.Helper()
	var counts map[string]int
	h.eventually(func(tx store.ReadTx) error {
		counts = map[string]int{}
		ts, err := store.Find[*api.Task](tx, store.ByServiceID(service))
		if err != nil {
			return err
		}
		n := 0
		for _, t := range ts {
			if t.Status.State >= api.TaskStateAssigned && t.NodeID != "" {
				counts[t.NodeID]++
				n++
			}
		}
		if n != want {
			return fmt.Errorf("%d tasks of %s assigned, want %d (%v)", n, service, want, counts)
		}
		return nil
	})
	return counts
}

// waitPending waits until task id is PENDING with the message.
func (h *harness) waitPending(id, msg string) {
	h.t.Helper()
	h.eventually(func(tx store.ReadTx) error {
		t := store.Get[*api.Task](tx, id)
		if t == nil {
			return fmt.Errorf("no task %s", id)
		}
		if t.Status.State != api.TaskStatePending || t.Status.Message != msg {
			return fmt.Errorf("task %s is %v on %q with message %q, want PENDING with %q",
				id, t.Status.State, t.NodeID, t.Status.Message, msg)
		}
		return nil
	})
}

// sync returns once the scheduler has taken in every change made so far: it
// adds a task no node can take and waits for its PENDING message.
func (h *harness) sync() {
	h.t.Helper()
	h.syncs++
	id := fmt.Sprintf("sentinel.%d", h.syncs)
	t := newTask("sentinel", h.syncs, withConstraints("node.id==nowhere"))
	t.ID = id
	h.createTasks([]*api.Task{t})
	h.eventually(func(tx store.ReadTx) error {
		if t := store.Get[*api.Task](tx, id); t.Status.State != api.TaskStatePending {
			return fmt.Errorf("sentinel task is %v", t.Status.State)
		}
		return nil
	})
}

// checkState stops the scheduler and compares what it holds per node and its
// pending tasks with what a scheduler that reads the store afresh holds.
func (h *harness) checkState() {
	h.t.Helper()
	h.sync()
	h.stop()
	fresh := New(h.store, testLogger())
	w, err := fresh.resync()
	if err != nil {
		h.t.Fatalf("resync: %v", err)
	}
	w.Close()
	got, want := h.sched, fresh
	ids := slices.Sorted(maps.Keys(want.nodes))
	if g := slices.Sorted(maps.Keys(got.nodes)); !slices.Equal(g, ids) {
		h.t.Errorf("scheduler knows nodes %v, the store has %v", g, ids)
	}
	for _, id := range ids {
		g, w := got.nodes[id], want.nodes[id]
		if g == nil {
			continue
		}
		if g.reservedCPU != w.reservedCPU || g.reservedMem != w.reservedMem || g.holding != w.holding ||
			g.active != w.active || !maps.Equal(g.byService, w.byService) {
			h.t.Errorf("node %s: scheduler has cpu=%d mem=%d holding=%d active=%d by service %v; store says cpu=%d mem=%d holding=%d active=%d by service %v",
				id, g.reservedCPU, g.reservedMem, g.holding, g.active, g.byService,
				w.reservedCPU, w.reservedMem, w.holding, w.active, w.byService)
		}
	}
	if g, w := slices.Sorted(maps.Keys(got.groupOf)), slices.Sorted(maps.Keys(want.groupOf)); !slices.Equal(g, w) {
		h.t.Errorf("scheduler has pending tasks %v, the store %v", g, w)
	}
}

type nodeOpt func(*api.Node)

// newNode is a READY, ACTIVE worker with 4 CPUs and 8 GiB.
func newNode(id string, opts ...nodeOpt) *api.Node {
	n := &api.Node{
		ID:   id,
		Spec: api.NodeSpec{Annotations: api.Annotations{Name: id}},
		Description: &api.NodeDescription{
			Hostname:  "host-" + id,
			Platform:  &api.Platform{OS: "linux", Architecture: "x86_64"},
			Resources: &api.Resources{NanoCPUs: 4e9, MemoryBytes: 8 * gib},
		},
		Status: api.NodeStatus{State: api.NodeStatusReady},
	}
	for _, o := range opts {
		o(n)
	}
	return n
}

func withState(s api.NodeStatus_State) nodeOpt { return func(n *api.Node) { n.Status.State = s } }

func withAvailability(a api.NodeSpec_Availability) nodeOpt {
	return func(n *api.Node) { n.Spec.Availability = a }
}

func withResources(cpu, mem int64) nodeOpt {
	return func(n *api.Node) { n.Description.Resources = &api.Resources{NanoCPUs: cpu, MemoryBytes: mem} }
}

func withLabels(kv ...string) nodeOpt {
	return func(n *api.Node) {
		n.Spec.Annotations.Labels = map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			n.Spec.Annotations.Labels[kv[i]] = kv[i+1]
		}
	}
}

func withRole(r api.NodeRole) nodeOpt { return func(n *api.Node) { n.Role = r } }

func withAddr(a string) nodeOpt { return func(n *api.Node) { n.Status.Addr = a } }

func withPlatform(os, arch string) nodeOpt {
	return func(n *api.Node) { n.Description.Platform = &api.Platform{OS: os, Architecture: arch} }
}

func nodes(ids ...string) []api.StoreObject {
	out := make([]api.StoreObject, len(ids))
	for i, id := range ids {
		out[i] = newNode(id)
	}
	return out
}

type taskOpt func(*api.Task)

// newTask is a NEW task of a service, desired RUNNING, with ID "<service>.<slot>".
func newTask(service string, slot int, opts ...taskOpt) *api.Task {
	t := &api.Task{
		ID:                 fmt.Sprintf("%s.%d", service, slot),
		ServiceID:          service,
		Slot:               uint64(slot),
		DesiredState:       api.TaskStateRunning,
		ServiceAnnotations: api.Annotations{Name: service},
		Spec:               api.TaskSpec{Container: &api.ContainerSpec{Image: "busybox"}},
	}
	for _, o := range opts {
		o(t)
	}
	return t
}

// newTasks is n tasks of a service, slots 1..n.
func newTasks(service string, n int, opts ...taskOpt) []*api.Task {
	ts := make([]*api.Task, n)
	for i := range ts {
		ts[i] = newTask(service, i+1, opts...)
	}
	return ts
}

func withReservation(cpu, mem int64) taskOpt {
	return func(t *api.Task) {
		t.Spec.Resources = &api.ResourceRequirements{Reservations: &api.Resources{NanoCPUs: cpu, MemoryBytes: mem}}
	}
}

func placement(t *api.Task) *api.Placement {
	if t.Spec.Placement == nil {
		t.Spec.Placement = &api.Placement{}
	}
	return t.Spec.Placement
}

func withConstraints(cs ...string) taskOpt {
	return func(t *api.Task) { placement(t).Constraints = cs }
}

func withMaxReplicas(n uint64) taskOpt { return func(t *api.Task) { placement(t).MaxReplicas = n } }

// running puts the task on a node as RUNNING.
func running(node string) taskOpt {
	return func(t *api.Task) {
		t.NodeID = node
		t.Status.State = api.TaskStateRunning
	}
}

// onNode presets the task's node (a global service's task).
func onNode(node string) taskOpt { return func(t *api.Task) { t.NodeID = node } }

// withHostPort publishes host port published (TCP, host mode) to target.
func withHostPort(published, target uint32) taskOpt {
	return func(t *api.Task) {
		if t.Endpoint == nil {
			t.Endpoint = &api.Endpoint{}
		}
		t.Endpoint.Ports = append(t.Endpoint.Ports, &api.PortConfig{
			PublishMode: api.PublishModeHost, PublishedPort: published, TargetPort: target,
		})
	}
}
