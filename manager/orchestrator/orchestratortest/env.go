// Package orchestratortest drives the orchestrator loops in tests: a store
// (storetest), a fake clock, builders of services, nodes and tasks, and two
// ways to run a loop: step by step (Reconcile, then Settle feeds the store's
// changes to Handle, and runs Tick when the clock says so), or for real
// (Start runs orchestrator.Run in a goroutine; poll with Eventually).
package orchestratortest

import (
	"context"
	"fmt"
	"testing"
	"time"

	gogoproto "github.com/gogo/protobuf/proto"
	"github.com/gogo/protobuf/types"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/api/identity"
	"github.com/flotilla/flotilla/manager/orchestrator"
	"github.com/flotilla/flotilla/manager/store"
	"github.com/flotilla/flotilla/manager/store/storetest"
)

// Epoch is the fake clock's start.
var Epoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// Env is a store with a fake clock and a watch for stepping loops.
type Env struct {
	T        testing.TB
	Ctx      context.Context
	Store    *store.MemoryStore
	Proposer *storetest.Proposer
	Clock    *orchestrator.FakeClock
	watch    *store.Watch
}

// New makes an empty store, a fake clock at Epoch, and a watch.
func New(t testing.TB) *Env {
	s, p := storetest.New()
	_, w, _, err := s.Watch(0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); w.Close() })
	return &Env{T: t, Ctx: ctx, Store: s, Proposer: p, Clock: orchestrator.NewFakeClock(Epoch), watch: w}
}

// Reconcile drops the changes so far (a starting loop reads them in its
// view) and runs r.Reconcile.
func (e *Env) Reconcile(r orchestrator.Reactor) {
	e.T.Helper()
	e.pending()
	if err := r.Reconcile(e.Ctx); err != nil {
		e.T.Fatalf("reconcile: %v", err)
	}
}

// Settle feeds the store's changes to r.Handle and runs r's due Ticks until
// nothing is left, as Run would.
func (e *Env) Settle(r orchestrator.Reactor) {
	e.T.Helper()
	for range 100 {
		did := false
		if cs := e.pending(); len(cs) > 0 {
			did = true
			if err := r.Handle(e.Ctx, cs); err != nil {
				e.T.Fatalf("handle: %v", err)
			}
		}
		if tr, ok := r.(orchestrator.Timed); ok {
			if next := tr.Next(); !next.IsZero() && !next.After(e.Clock.Now()) {
				did = true
				if err := tr.Tick(e.Ctx); err != nil {
					e.T.Fatalf("tick: %v", err)
				}
			}
		}
		if !did {
			return
		}
	}
	e.T.Fatal("the loop did not settle after 100 rounds")
}

func (e *Env) pending() []store.Change {
	var cs []store.Change
	for {
		select {
		case c, ok := <-e.watch.C:
			if !ok {
				e.T.Fatalf("test watch ended: %v", e.watch.Err())
			}
			cs = append(cs, c)
		default:
			return cs
		}
	}
}

// Start runs run (a component's Run) until the test ends, and checks that
// it then returns nil.
func (e *Env) Start(run func(context.Context) error) {
	ctx, cancel := context.WithCancel(e.Ctx)
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	e.T.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			e.T.Errorf("Run returned %v", err)
		}
	})
}

// Eventually polls cond until it holds, failing the test after 10 s.
func (e *Env) Eventually(what string, cond func() bool) {
	e.T.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			e.T.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func (e *Env) update(cb func(store.Tx) error) {
	e.T.Helper()
	if err := e.Store.Update(e.Ctx, cb); err != nil {
		e.T.Fatal(err)
	}
}

// Replicated is the spec of a replicated service.
func Replicated(name string, replicas uint64) api.ServiceSpec {
	return api.ServiceSpec{
		Annotations: api.Annotations{Name: name},
		Task:        api.TaskSpec{Container: &api.ContainerSpec{Image: "busybox:latest", Command: []string{"sleep", "1d"}}},
		Mode:        api.ServiceMode{Mode: &api.ServiceMode_Replicated{Replicated: &api.ReplicatedService{Replicas: replicas}}},
	}
}

// Global is the spec of a global service.
func Global(name string, constraints ...string) api.ServiceSpec {
	spec := Replicated(name, 0)
	spec.Mode = api.ServiceMode{Mode: &api.ServiceMode_Global{Global: &api.GlobalService{}}}
	if len(constraints) > 0 {
		spec.Task.Placement = &api.Placement{Constraints: constraints}
	}
	return spec
}

// CreateService stores a new service (SpecVersion 1) and returns it.
func (e *Env) CreateService(spec api.ServiceSpec) *api.Service {
	e.T.Helper()
	svc := &api.Service{ID: identity.NewID(), Spec: spec, SpecVersion: 1}
	e.update(func(tx store.Tx) error { return tx.Create(svc) })
	return e.Service(svc.ID)
}

// UpdateService edits a service's spec as the control API does: SpecVersion
// moves when the spec changed.
func (e *Env) UpdateService(id string, edit func(*api.ServiceSpec)) {
	e.T.Helper()
	e.update(func(tx store.Tx) error {
		svc := store.Get[*api.Service](tx, id)
		if svc == nil {
			return fmt.Errorf("no service %s", id)
		}
		next := svc.Spec.Copy()
		edit(next)
		if !gogoproto.Equal(next, &svc.Spec) {
			svc.Spec = *next
			svc.SpecVersion++
		}
		return tx.Update(svc)
	})
}

// Scale sets a replicated service's replicas.
func (e *Env) Scale(id string, replicas uint64) {
	e.T.Helper()
	e.UpdateService(id, func(s *api.ServiceSpec) { s.Mode.GetReplicated().Replicas = replicas })
}

// Service reads a service.
func (e *Env) Service(id string) *api.Service {
	var svc *api.Service
	e.Store.View(func(tx store.ReadTx) { svc = store.Get[*api.Service](tx, id) })
	return svc
}

// RemoveService deletes a service.
func (e *Env) RemoveService(id string) {
	e.T.Helper()
	e.update(func(tx store.Tx) error { return tx.Delete(api.KindService, id) })
}

// NodeOption edits a new node.
type NodeOption func(*api.Node)

// Labels sets a node's labels.
func Labels(kv ...string) NodeOption {
	return func(n *api.Node) {
		n.Spec.Annotations.Labels = map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			n.Spec.Annotations.Labels[kv[i]] = kv[i+1]
		}
	}
}

// CreateNode stores a READY, ACTIVE worker with hostname id.
func (e *Env) CreateNode(id string, opts ...NodeOption) {
	e.T.Helper()
	n := &api.Node{
		ID:          id,
		Description: &api.NodeDescription{Hostname: id, Platform: &api.Platform{OS: "linux", Architecture: "x86_64"}},
		Status:      api.NodeStatus{State: api.NodeStatusReady, Addr: "10.0.0.1"},
	}
	for _, o := range opts {
		o(n)
	}
	e.update(func(tx store.Tx) error { return tx.Create(n) })
}

// UpdateNode edits a node.
func (e *Env) UpdateNode(id string, edit func(*api.Node)) {
	e.T.Helper()
	e.update(func(tx store.Tx) error {
		n := store.Get[*api.Node](tx, id)
		if n == nil {
			return fmt.Errorf("no node %s", id)
		}
		edit(n)
		return tx.Update(n)
	})
}

// SetNodeState sets a node's status state.
func (e *Env) SetNodeState(id string, s api.NodeStatus_State) {
	e.T.Helper()
	e.UpdateNode(id, func(n *api.Node) { n.Status.State = s })
}

// SetAvailability sets a node's availability.
func (e *Env) SetAvailability(id string, a api.NodeSpec_Availability) {
	e.T.Helper()
	e.UpdateNode(id, func(n *api.Node) { n.Spec.Availability = a })
}

// RemoveNode deletes a node.
func (e *Env) RemoveNode(id string) {
	e.T.Helper()
	e.update(func(tx store.Tx) error { return tx.Delete(api.KindNode, id) })
}

// CreateTask stores t as is.
func (e *Env) CreateTask(t *api.Task) {
	e.T.Helper()
	e.update(func(tx store.Tx) error { return tx.Create(t) })
}

// UpdateTask edits a task.
func (e *Env) UpdateTask(id string, edit func(*api.Task)) {
	e.T.Helper()
	e.update(func(tx store.Tx) error {
		t := store.Get[*api.Task](tx, id)
		if t == nil {
			return fmt.Errorf("no task %s", id)
		}
		edit(t)
		return tx.Update(t)
	})
}

// Report sets a task's observed state as an agent would, at the clock's now.
func (e *Env) Report(id string, s api.TaskState) {
	e.T.Helper()
	ts, _ := types.TimestampProto(e.Clock.Now())
	e.UpdateTask(id, func(t *api.Task) { t.Status = api.TaskStatus{State: s, Timestamp: ts} })
}

// Assign places a task on a node and reports it RUNNING, as the scheduler
// and the agent would.
func (e *Env) Assign(id, nodeID string) {
	e.T.Helper()
	e.UpdateTask(id, func(t *api.Task) { t.NodeID = nodeID })
	e.Report(id, api.TaskStateRunning)
}

// Tasks returns the tasks of a service, in ID order.
func (e *Env) Tasks(serviceID string) []*api.Task {
	e.T.Helper()
	var ts []*api.Task
	var err error
	e.Store.View(func(tx store.ReadTx) { ts, err = store.Find[*api.Task](tx, store.ByServiceID(serviceID)) })
	if err != nil {
		e.T.Fatal(err)
	}
	return ts
}

// Current returns the current tasks (DesiredState at most RUNNING) of a service.
func (e *Env) Current(serviceID string) []*api.Task {
	var out []*api.Task
	for _, t := range e.Tasks(serviceID) {
		if orchestrator.IsCurrent(t) {
			out = append(out, t)
		}
	}
	return out
}

// Task reads a task (nil if deleted).
func (e *Env) Task(id string) *api.Task {
	var t *api.Task
	e.Store.View(func(tx store.ReadTx) { t = store.Get[*api.Task](tx, id) })
	return t
}
