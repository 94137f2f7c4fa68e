package replicated_test

import (
	"slices"
	"testing"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/manager/orchestrator"
	"github.com/flotilla/flotilla/manager/orchestrator/orchestratortest"
	"github.com/flotilla/flotilla/manager/orchestrator/replicated"
	"github.com/flotilla/flotilla/manager/store"
)

func setup(t *testing.T) (*orchestratortest.Env, *replicated.Orchestrator) {
	e := orchestratortest.New(t)
	return e, replicated.New(e.Store, replicated.Config{Clock: e.Clock})
}

// slots maps each occupied slot to its current task, failing on duplicates.
func slots(t *testing.T, e *orchestratortest.Env, serviceID string) map[uint64]*api.Task {
	t.Helper()
	m := map[uint64]*api.Task{}
	for _, task := range e.Current(serviceID) {
		if prev, ok := m[task.Slot]; ok {
			t.Fatalf("slot %d has two current tasks: %s and %s", task.Slot, prev.ID, task.ID)
		}
		m[task.Slot] = task
	}
	return m
}

func slotNumbers(m map[uint64]*api.Task) []uint64 {
	var out []uint64
	for s := range m {
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

func TestNewServiceGetsItsSlots(t *testing.T) {
	e, o := setup(t)
	e.Reconcile(o)
	svc := e.CreateService(orchestratortest.Replicated("web", 3))
	e.Settle(o)
	got := slots(t, e, svc.ID)
	if !slices.Equal(slotNumbers(got), []uint64{1, 2, 3}) {
		t.Fatalf("slots %v, want 1..3", slotNumbers(got))
	}
	for _, task := range got {
		if task.DesiredState != api.TaskStateRunning || task.Status.State != api.TaskStateNew || task.NodeID != "" ||
			task.SpecVersion != svc.SpecVersion || task.ServiceAnnotations.Name != "web" ||
			task.Spec.Container.Image != svc.Spec.Task.Container.Image || task.Status.Timestamp == nil {
			t.Errorf("new task %+v", task)
		}
	}
}

func TestScaleUpFillsLowestFreeSlots(t *testing.T) {
	e, o := setup(t)
	svc := e.CreateService(orchestratortest.Replicated("web", 5))
	e.Reconcile(o)
	// Slots 1 and 3 lose their task (deleted by hand; the refill is what
	// this test is about, so stop the orchestrator from seeing it first).
	before := slots(t, e, svc.ID)
	e.UpdateTask(before[1].ID, func(t *api.Task) { t.DesiredState = api.TaskStateShutdown })
	e.UpdateTask(before[3].ID, func(t *api.Task) { t.DesiredState = api.TaskStateShutdown })
	e.Scale(svc.ID, 4) // 3 occupied (2, 4, 5), 4 wanted: slot 1 only
	e.Settle(o)
	got := slots(t, e, svc.ID)
	if !slices.Equal(slotNumbers(got), []uint64{1, 2, 4, 5}) {
		t.Fatalf("slots %v, want [1 2 4 5]", slotNumbers(got))
	}
	for _, s := range []uint64{2, 4, 5} {
		if got[s].ID != before[s].ID {
			t.Errorf("slot %d was replaced", s)
		}
	}
}

func TestScaleDownOrder(t *testing.T) {
	type slot struct {
		node  string // "" unassigned; "down" is a DOWN node
		state api.TaskState
	}
	run := func(n string) slot { return slot{n, api.TaskStateRunning} }
	cases := []struct {
		name     string
		slots    []slot // slot i+1
		replicas uint64
		removed  []uint64
	}{
		{"highest slots when all alike", []slot{run("a"), run("b"), run("c"), run("d"), run("e")}, 3, []uint64{4, 5}},
		{"not yet running first", []slot{run("a"), {"", api.TaskStateNew}, run("c"), run("d")}, 3, []uint64{2}},
		{"unassigned before assigned not running", []slot{{"a", api.TaskStateFailed}, run("b"), {"", api.TaskStatePending}}, 2, []uint64{3}},
		{"ended before running", []slot{run("a"), run("b"), {"c", api.TaskStateFailed}}, 2, []uint64{3}},
		{"assigned not started before running", []slot{run("a"), {"b", api.TaskStatePreparing}, run("c")}, 2, []uint64{2}},
		{"on a lost node before running", []slot{{"down", api.TaskStateRunning}, run("b"), run("c")}, 2, []uint64{1}},
		{"busiest nodes first", []slot{run("a"), run("a"), run("a"), run("b"), run("c")}, 3, []uint64{2, 3}},
		{"balance then highest", []slot{run("a"), run("a"), run("b"), run("b"), run("c")}, 3, []uint64{2, 4}},
		{"to zero", []slot{run("a"), {"", api.TaskStateNew}}, 0, []uint64{1, 2}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e, o := setup(t)
			for _, n := range []string{"a", "b", "c", "d", "e", "down"} {
				e.CreateNode(n)
			}
			e.SetNodeState("down", api.NodeStatusDown)
			svc := e.CreateService(orchestratortest.Replicated("web", uint64(len(c.slots))))
			// Tasks on the DOWN node are placed before the orchestrator
			// starts, so only the scale-down decides about them.
			e.Reconcile(o)
			before := slots(t, e, svc.ID)
			for i, s := range c.slots {
				id := before[uint64(i+1)].ID
				if s.node != "" {
					e.UpdateTask(id, func(t *api.Task) { t.NodeID = s.node })
				}
				e.Report(id, s.state)
			}
			e.Scale(svc.ID, c.replicas)
			e.Settle(o)
			var removed []uint64
			for _, task := range e.Tasks(svc.ID) {
				if task.DesiredState == api.TaskStateRemove {
					removed = append(removed, task.Slot)
				}
			}
			slices.Sort(removed)
			if !slices.Equal(removed, c.removed) {
				t.Fatalf("removed slots %v, want %v", removed, c.removed)
			}
			if got := len(slots(t, e, svc.ID)); got != int(c.replicas) {
				t.Fatalf("%d occupied slots, want %d", got, c.replicas)
			}
		})
	}
}

func TestReplicasChangeRestartsNothing(t *testing.T) {
	e, o := setup(t)
	e.CreateNode("a")
	svc := e.CreateService(orchestratortest.Replicated("web", 3))
	e.Reconcile(o)
	before := slots(t, e, svc.ID)
	for _, task := range before {
		e.Assign(task.ID, "a")
	}
	e.Scale(svc.ID, 5)
	e.Settle(o)
	e.Scale(svc.ID, 3)
	e.Settle(o)
	after := slots(t, e, svc.ID)
	if len(after) != 3 {
		t.Fatalf("%d slots, want 3", len(after))
	}
	for s, task := range before {
		if after[s] == nil || after[s].ID != task.ID || after[s].DesiredState != api.TaskStateRunning {
			t.Errorf("slot %d: task %s was touched", s, task.ID)
		}
	}
	if n := len(e.Tasks(svc.ID)); n != 5 {
		t.Errorf("%d tasks, want 3 running and 2 removed", n)
	}
}

func TestTaskSpecChangeReplacesEveryTask(t *testing.T) {
	e, o := setup(t)
	e.CreateNode("a")
	svc := e.CreateService(orchestratortest.Replicated("web", 3))
	e.Reconcile(o)
	before := slots(t, e, svc.ID)
	for _, task := range before {
		e.Assign(task.ID, "a")
	}
	e.UpdateService(svc.ID, func(s *api.ServiceSpec) { s.Task.Container.Image = "busybox:1.37" })
	e.Settle(o)
	after := slots(t, e, svc.ID)
	if len(after) != 3 {
		t.Fatalf("%d slots, want 3", len(after))
	}
	for s, task := range after {
		if task.ID == before[s].ID || task.Spec.Container.Image != "busybox:1.37" || task.SpecVersion != 2 || task.NodeID != "" {
			t.Errorf("slot %d: current task %+v, want a new unassigned task with the new image", s, task)
		}
		if old := e.Task(before[s].ID); old.DesiredState != api.TaskStateShutdown {
			t.Errorf("slot %d: old task desired %v, want SHUTDOWN", s, old.DesiredState)
		}
	}
}

func TestUpdaterPicksWhatIsReplaced(t *testing.T) {
	e := orchestratortest.New(t)
	one := func(_ *api.Service, outdated []*api.Task) []*api.Task { return outdated[:1] }
	o := replicated.New(e.Store, replicated.Config{Clock: e.Clock, Updater: one})
	svc := e.CreateService(orchestratortest.Replicated("web", 3))
	e.Reconcile(o)
	e.UpdateService(svc.ID, func(s *api.ServiceSpec) { s.Task.Container.Image = "busybox:1.37" })
	e.Settle(o)
	var fresh []uint64
	for s, task := range slots(t, e, svc.ID) {
		if task.SpecVersion == 2 {
			fresh = append(fresh, s)
		}
	}
	if !slices.Equal(fresh, []uint64{1}) {
		t.Fatalf("replaced slots %v, want [1] (the updater picks one per reconcile)", fresh)
	}
}

func TestServiceRemovalRemovesEveryTask(t *testing.T) {
	e, o := setup(t)
	svc := e.CreateService(orchestratortest.Replicated("web", 2))
	e.Reconcile(o)
	e.UpdateService(svc.ID, func(s *api.ServiceSpec) { s.Task.Container.Image = "busybox:1.37" })
	e.Settle(o) // 2 history tasks, 2 current
	e.RemoveService(svc.ID)
	e.Settle(o)
	ts := e.Tasks(svc.ID)
	if len(ts) != 4 {
		t.Fatalf("%d tasks, want 4", len(ts))
	}
	for _, task := range ts {
		if task.DesiredState != api.TaskStateRemove {
			t.Errorf("task %s slot %d desired %v, want REMOVE", task.ID, task.Slot, task.DesiredState)
		}
	}
}

func TestLostNodeTasksAreReplaced(t *testing.T) {
	cases := []struct {
		name string
		lose func(e *orchestratortest.Env)
		back func(e *orchestratortest.Env)
	}{
		{"down", func(e *orchestratortest.Env) { e.SetNodeState("a", api.NodeStatusDown) },
			func(e *orchestratortest.Env) { e.SetNodeState("a", api.NodeStatusReady) }},
		{"drained", func(e *orchestratortest.Env) { e.SetAvailability("a", api.NodeAvailabilityDrain) },
			func(e *orchestratortest.Env) { e.SetAvailability("a", api.NodeAvailabilityActive) }},
		{"removed", func(e *orchestratortest.Env) { e.RemoveNode("a") },
			func(e *orchestratortest.Env) { e.CreateNode("a") }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e, o := setup(t)
			e.CreateNode("a")
			e.CreateNode("b")
			svc := e.CreateService(orchestratortest.Replicated("web", 3))
			e.Reconcile(o)
			before := slots(t, e, svc.ID)
			e.Assign(before[1].ID, "a")
			e.Assign(before[2].ID, "a")
			e.Assign(before[3].ID, "b")
			e.Settle(o)

			c.lose(e)
			e.Settle(o)
			after := slots(t, e, svc.ID)
			for s := uint64(1); s <= 2; s++ {
				if after[s].ID == before[s].ID || after[s].NodeID != "" {
					t.Errorf("slot %d: current task %s on %q, want a new unassigned task", s, after[s].ID, after[s].NodeID)
				}
				if old := e.Task(before[s].ID); old.DesiredState != api.TaskStateShutdown {
					t.Errorf("slot %d: old task desired %v, want SHUTDOWN", s, old.DesiredState)
				}
			}
			if after[3].ID != before[3].ID {
				t.Error("the task on the healthy node was replaced")
			}

			// The node comes back with its old tasks still reported RUNNING:
			// they stay SHUTDOWN (its agent stops them), nothing is added.
			c.back(e)
			e.Settle(o)
			if got := slots(t, e, svc.ID); len(got) != 3 || got[1].ID != after[1].ID || got[2].ID != after[2].ID {
				t.Errorf("after the node came back: slots %v", slotNumbers(got))
			}
			if n := len(e.Tasks(svc.ID)); n != 5 {
				t.Errorf("%d tasks, want 5 (3 current, 2 shut down)", n)
			}
		})
	}
}

func TestPausedNodeKeepsItsTasks(t *testing.T) {
	e, o := setup(t)
	e.CreateNode("a")
	svc := e.CreateService(orchestratortest.Replicated("web", 1))
	e.Reconcile(o)
	task := e.Current(svc.ID)[0]
	e.Assign(task.ID, "a")
	e.SetAvailability("a", api.NodeAvailabilityPause)
	e.SetNodeState("a", api.NodeStatusDisconnected)
	e.Settle(o)
	if cur := e.Current(svc.ID); len(cur) != 1 || cur[0].ID != task.ID {
		t.Fatal("a task on a paused or disconnected node was replaced")
	}
}

func TestEndedTaskKeepsItsSlot(t *testing.T) {
	// Replacing ended tasks is the restart supervisor's job; the slot stays
	// occupied meanwhile (and for good if the policy says no restart).
	e, o := setup(t)
	svc := e.CreateService(orchestratortest.Replicated("web", 2))
	e.Reconcile(o)
	task := slots(t, e, svc.ID)[1]
	e.Assign(task.ID, "a")
	e.Report(task.ID, api.TaskStateFailed)
	e.Settle(o)
	if n := len(e.Tasks(svc.ID)); n != 2 {
		t.Fatalf("%d tasks, want 2", n)
	}
}

func TestDeletedTaskIsRefilled(t *testing.T) {
	e, o := setup(t)
	svc := e.CreateService(orchestratortest.Replicated("web", 2))
	e.Reconcile(o)
	old := slots(t, e, svc.ID)[2]
	if err := e.Store.Update(e.Ctx, func(tx store.Tx) error { return tx.Delete(api.KindTask, old.ID) }); err != nil {
		t.Fatal(err)
	}
	e.Settle(o)
	got := slots(t, e, svc.ID)
	if len(got) != 2 || got[2] == nil || got[2].ID == old.ID {
		t.Fatalf("slots %v after deleting slot 2's task", slotNumbers(got))
	}
}

func TestReconcileRepairsWhatHappenedBefore(t *testing.T) {
	e, o := setup(t)
	e.CreateNode("a")
	e.CreateNode("gone")
	svc := e.CreateService(orchestratortest.Replicated("web", 3))
	// A previous leader made two tasks, one on a node since removed; a
	// service removed meanwhile left a task behind; slot 2 has a duplicate.
	for _, s := range []uint64{1, 2, 2} {
		e.CreateTask(orchestrator.NewTask(svc, s, "", e.Clock.Now()))
	}
	ts := e.Current(svc.ID)
	e.Assign(ts[0].ID, "gone")
	e.RemoveNode("gone")
	orphan := orchestrator.NewTask(&api.Service{ID: "removed-service"}, 1, "", e.Clock.Now())
	orphan.Slot = 1
	e.CreateTask(orphan)

	e.Reconcile(o)
	got := slots(t, e, svc.ID)
	if !slices.Equal(slotNumbers(got), []uint64{1, 2, 3}) {
		t.Fatalf("slots %v, want 1..3", slotNumbers(got))
	}
	for _, task := range got {
		if task.NodeID == "gone" {
			t.Error("a task on a removed node is still current")
		}
	}
	if d := e.Task(orphan.ID).DesiredState; d != api.TaskStateRemove {
		t.Errorf("task of a removed service: desired %v, want REMOVE", d)
	}
}

func TestRunFollowsTheStore(t *testing.T) {
	e, o := setup(t)
	e.Start(o.Run)
	svc := e.CreateService(orchestratortest.Replicated("web", 3))
	e.Eventually("3 tasks", func() bool { return len(e.Current(svc.ID)) == 3 })
	e.Scale(svc.ID, 1)
	e.Eventually("1 task", func() bool { return len(e.Current(svc.ID)) == 1 })
	e.RemoveService(svc.ID)
	e.Eventually("every task REMOVE", func() bool {
		for _, task := range e.Tasks(svc.ID) {
			if task.DesiredState != api.TaskStateRemove {
				return false
			}
		}
		return true
	})
}
