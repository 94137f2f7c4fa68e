package global_test

import (
	"fmt"
	"slices"
	"testing"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/manager/orchestrator"
	"github.com/flotilla/flotilla/manager/orchestrator/global"
	"github.com/flotilla/flotilla/manager/orchestrator/orchestratortest"
)

func setup(t *testing.T) (*orchestratortest.Env, *global.Orchestrator) {
	e := orchestratortest.New(t)
	return e, global.New(e.Store, global.Config{Clock: e.Clock})
}

// placement maps each node to the current task of the service on it,
// failing on duplicates.
func placement(t *testing.T, e *orchestratortest.Env, serviceID string) map[string]*api.Task {
	t.Helper()
	m := map[string]*api.Task{}
	for _, task := range e.Current(serviceID) {
		if task.Slot != 0 {
			t.Fatalf("global task %s has slot %d", task.ID, task.Slot)
		}
		if prev, ok := m[task.NodeID]; ok {
			t.Fatalf("node %s has two current tasks: %s and %s", task.NodeID, prev.ID, task.ID)
		}
		m[task.NodeID] = task
	}
	return m
}

func nodesOf(m map[string]*api.Task) []string {
	var out []string
	for n := range m {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

func TestOneTaskPerEligibleNode(t *testing.T) {
	e, o := setup(t)
	e.CreateNode("a")
	e.CreateNode("b")
	e.CreateNode("down")
	e.SetNodeState("down", api.NodeStatusDown)
	e.CreateNode("unknown")
	e.SetNodeState("unknown", api.NodeStatusUnknown)
	e.CreateNode("paused")
	e.SetAvailability("paused", api.NodeAvailabilityPause)
	e.CreateNode("drained")
	e.SetAvailability("drained", api.NodeAvailabilityDrain)
	e.Reconcile(o)
	svc := e.CreateService(orchestratortest.Global("agent"))
	e.Settle(o)
	got := placement(t, e, svc.ID)
	if !slices.Equal(nodesOf(got), []string{"a", "b"}) {
		t.Fatalf("tasks on %v, want [a b]", nodesOf(got))
	}
	for _, task := range got {
		if task.Status.State != api.TaskStateNew || task.DesiredState != api.TaskStateRunning || task.SpecVersion != 1 {
			t.Errorf("new task %+v", task)
		}
	}
}

func TestNodeEvents(t *testing.T) {
	// settle lets the orchestrator see the events so far (events that come
	// together are coalesced: a node down and back up before the
	// orchestrator looks changes nothing).
	var settle func()
	eu := orchestratortest.Labels("zone", "eu")
	cases := []struct {
		name  string
		event func(e *orchestratortest.Env)
		want  []string // nodes with a current task afterwards
		// stopped: whether b's first task was shut down
		stopped bool
	}{
		{"join", func(e *orchestratortest.Env) { e.CreateNode("c", eu) }, []string{"a", "b", "c"}, false},
		{"join without the label", func(e *orchestratortest.Env) { e.CreateNode("c") }, []string{"a", "b"}, false},
		{"join not ready yet", func(e *orchestratortest.Env) {
			e.CreateNode("c", eu)
			e.SetNodeState("c", api.NodeStatusUnknown)
		}, []string{"a", "b"}, false},
		{"becomes ready", func(e *orchestratortest.Env) {
			e.CreateNode("c", eu)
			e.SetNodeState("c", api.NodeStatusUnknown)
			e.SetNodeState("c", api.NodeStatusReady)
		}, []string{"a", "b", "c"}, false},
		{"drain", func(e *orchestratortest.Env) { e.SetAvailability("b", api.NodeAvailabilityDrain) }, []string{"a"}, true},
		{"down", func(e *orchestratortest.Env) { e.SetNodeState("b", api.NodeStatusDown) }, []string{"a"}, true},
		{"removed", func(e *orchestratortest.Env) { e.RemoveNode("b") }, []string{"a"}, true},
		{"pause keeps the task", func(e *orchestratortest.Env) { e.SetAvailability("b", api.NodeAvailabilityPause) }, []string{"a", "b"}, false},
		{"disconnected keeps the task", func(e *orchestratortest.Env) { e.SetNodeState("b", api.NodeStatusDisconnected) },
			[]string{"a", "b"}, false},
		{"down then back gets a new task", func(e *orchestratortest.Env) {
			e.SetNodeState("b", api.NodeStatusDown)
			settle()
			e.SetNodeState("b", api.NodeStatusReady)
		}, []string{"a", "b"}, true},
		{"label no longer matches", func(e *orchestratortest.Env) {
			e.UpdateNode("b", func(n *api.Node) { n.Spec.Annotations.Labels = nil })
		}, []string{"a"}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e, o := setup(t)
			settle = func() { e.Settle(o) }
			e.CreateNode("a", eu)
			e.CreateNode("b", eu)
			svc := e.CreateService(orchestratortest.Global("agent", "node.labels.zone==eu"))
			e.Reconcile(o)
			first := placement(t, e, svc.ID)
			for n, task := range first {
				e.Assign(task.ID, n)
			}
			// The events come one at a time, as they would.
			c.event(e)
			e.Settle(o)
			got := placement(t, e, svc.ID)
			if !slices.Equal(nodesOf(got), c.want) {
				t.Fatalf("tasks on %v, want %v", nodesOf(got), c.want)
			}
			old := e.Task(first["b"].ID)
			if stopped := old.DesiredState == api.TaskStateShutdown; stopped != c.stopped {
				t.Errorf("b's task desired %v; stopped = %v, want %v", old.DesiredState, stopped, c.stopped)
			}
			if !c.stopped && got["b"].ID != first["b"].ID {
				t.Error("b's task was replaced")
			}
		})
	}
}

func TestConstraints(t *testing.T) {
	e, o := setup(t)
	e.CreateNode("m1", func(n *api.Node) { n.Role = api.NodeRoleManager })
	e.CreateNode("w1", orchestratortest.Labels("disk", "ssd"))
	e.CreateNode("w2", func(n *api.Node) { n.Description.Platform.Architecture = "aarch64" })
	e.Reconcile(o)
	cases := []struct {
		constraints []string
		want        []string
	}{
		{nil, []string{"m1", "w1", "w2"}},
		{[]string{"node.role==manager"}, []string{"m1"}},
		{[]string{"node.role!=manager"}, []string{"w1", "w2"}},
		{[]string{"node.labels.disk==ssd"}, []string{"w1"}},
		{[]string{"node.platform.arch==aarch64"}, []string{"w2"}},
		{[]string{"node.hostname!=w1", "node.role==worker"}, []string{"w2"}},
	}
	for i, c := range cases {
		svc := e.CreateService(orchestratortest.Global(fmt.Sprintf("svc%d", i), c.constraints...))
		e.Settle(o)
		if got := nodesOf(placement(t, e, svc.ID)); !slices.Equal(got, c.want) {
			t.Errorf("constraints %q: tasks on %v, want %v", c.constraints, got, c.want)
		}
	}
}

func TestConstraintChangeMovesTasks(t *testing.T) {
	e, o := setup(t)
	e.CreateNode("a", orchestratortest.Labels("zone", "eu"))
	e.CreateNode("b", orchestratortest.Labels("zone", "us"))
	svc := e.CreateService(orchestratortest.Global("agent", "node.labels.zone==eu"))
	e.Reconcile(o)
	first := placement(t, e, svc.ID)
	e.UpdateService(svc.ID, func(s *api.ServiceSpec) { s.Task.Placement.Constraints = []string{"node.labels.zone==us"} })
	e.Settle(o)
	got := placement(t, e, svc.ID)
	if !slices.Equal(nodesOf(got), []string{"b"}) || e.Task(first["a"].ID).DesiredState != api.TaskStateShutdown {
		t.Fatalf("tasks on %v after moving the constraint to zone us", nodesOf(got))
	}
}

func TestSpecUpdateReplacesOnTheSameNode(t *testing.T) {
	e, o := setup(t)
	e.CreateNode("a")
	e.CreateNode("b")
	svc := e.CreateService(orchestratortest.Global("agent"))
	e.Reconcile(o)
	first := placement(t, e, svc.ID)
	e.UpdateService(svc.ID, func(s *api.ServiceSpec) { s.Task.Container.Image = "busybox:1.37" })
	e.Settle(o)
	got := placement(t, e, svc.ID)
	for n, task := range got {
		if task.ID == first[n].ID || task.Spec.Container.Image != "busybox:1.37" {
			t.Errorf("node %s: task %+v, want a new task with the new image", n, task)
		}
		if d := e.Task(first[n].ID).DesiredState; d != api.TaskStateShutdown {
			t.Errorf("node %s: old task desired %v", n, d)
		}
	}
	// A change that leaves the task spec alone replaces nothing.
	e.UpdateService(svc.ID, func(s *api.ServiceSpec) { s.Annotations.Labels = map[string]string{"team": "x"} })
	e.Settle(o)
	if again := placement(t, e, svc.ID); again["a"].ID != got["a"].ID || again["b"].ID != got["b"].ID {
		t.Error("a label change replaced tasks")
	}
}

func TestServiceRemoval(t *testing.T) {
	e, o := setup(t)
	e.CreateNode("a")
	svc := e.CreateService(orchestratortest.Global("agent"))
	e.Reconcile(o)
	e.RemoveService(svc.ID)
	e.Settle(o)
	for _, task := range e.Tasks(svc.ID) {
		if task.DesiredState != api.TaskStateRemove {
			t.Errorf("task desired %v, want REMOVE", task.DesiredState)
		}
	}
	// A new node gets nothing from a removed service.
	e.CreateNode("b")
	e.Settle(o)
	if n := len(e.Tasks(svc.ID)); n != 1 {
		t.Errorf("%d tasks, want 1", n)
	}
}

func TestReconcileRepairsWhatHappenedBefore(t *testing.T) {
	e, o := setup(t)
	e.CreateNode("a")
	e.CreateNode("b")
	e.CreateNode("c")
	svc := e.CreateService(orchestratortest.Global("agent"))
	// Before this leader: a has two tasks, b none, c was drained with its
	// task still wanted, and a removed service left a task on a.
	e.CreateTask(orchestrator.NewTask(svc, 0, "a", e.Clock.Now()))
	e.CreateTask(orchestrator.NewTask(svc, 0, "a", e.Clock.Now()))
	onC := orchestrator.NewTask(svc, 0, "c", e.Clock.Now())
	e.CreateTask(onC)
	e.SetAvailability("c", api.NodeAvailabilityDrain)
	orphan := orchestrator.NewTask(&api.Service{ID: "removed-service"}, 0, "a", e.Clock.Now())
	e.CreateTask(orphan)

	e.Reconcile(o)
	if got := nodesOf(placement(t, e, svc.ID)); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("tasks on %v, want [a b]", got)
	}
	if d := e.Task(onC.ID).DesiredState; d != api.TaskStateShutdown {
		t.Errorf("task on drained node desired %v", d)
	}
	if d := e.Task(orphan.ID).DesiredState; d != api.TaskStateRemove {
		t.Errorf("task of removed service desired %v", d)
	}
}

func TestRunFollowsTheStore(t *testing.T) {
	e, o := setup(t)
	e.CreateNode("a")
	e.Start(o.Run)
	svc := e.CreateService(orchestratortest.Global("agent"))
	e.Eventually("a task on a", func() bool { return len(e.Current(svc.ID)) == 1 })
	e.CreateNode("b")
	e.Eventually("a task on b", func() bool { return len(e.Current(svc.ID)) == 2 })
	e.SetAvailability("a", api.NodeAvailabilityDrain)
	e.Eventually("a's task stopped", func() bool {
		cur := e.Current(svc.ID)
		return len(cur) == 1 && cur[0].NodeID == "b"
	})
}
