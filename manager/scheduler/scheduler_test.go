package scheduler

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/manager/store"
)

func TestSpreadsTasksEvenlyAcrossNodes(t *testing.T) {
	h := newHarness(t)
	h.create(nodes("n1", "n2", "n3", "n4")...)
	h.createTasks(newTasks("web", 12))
	h.start()
	counts := h.waitAssigned("web", 12)
	if want := map[string]int{"n1": 3, "n2": 3, "n3": 3, "n4": 3}; !maps.Equal(counts, want) {
		t.Errorf("tasks per node = %v, want %v", counts, want)
	}
	if got := h.task("web.1"); got.Status.State != api.TaskStateAssigned || got.Status.Message != "scheduled" || got.Status.Timestamp == nil {
		t.Errorf("web.1 status = %+v, want ASSIGNED, \"scheduled\", with a timestamp", got.Status)
	}
	h.checkState()
}

func TestSpreadsTheServiceBeforeTheTotal(t *testing.T) {
	h := newHarness(t)
	h.create(nodes("n1", "n2")...)
	// n1 runs one task of web; n2 runs three tasks of db.
	h.createTasks([]*api.Task{
		newTask("web", 1, running("n1")),
		newTask("db", 1, running("n2")), newTask("db", 2, running("n2")), newTask("db", 3, running("n2")),
	})
	h.start()

	// The new web task goes where web has fewest tasks, though n2 runs more.
	h.createTasks([]*api.Task{newTask("web", 2)})
	h.waitAssigned("web", 2)
	if got := h.task("web.2").NodeID; got != "n2" {
		t.Errorf("web.2 went to %s, want n2 (no web task there yet)", got)
	}

	// A task of a new service goes to the node with fewest tasks in total.
	h.createTasks([]*api.Task{newTask("cache", 1)})
	h.waitAssigned("cache", 1)
	if got := h.task("cache.1").NodeID; got != "n1" {
		t.Errorf("cache.1 went to %s, want n1 (2 tasks against 4)", got)
	}

	// With every count equal, the lowest node ID wins, every time.
	h.createTasks([]*api.Task{newTask("tie", 1), newTask("tie", 2)})
	counts := h.waitAssigned("tie", 2)
	if want := map[string]int{"n1": 1, "n2": 1}; !maps.Equal(counts, want) {
		t.Errorf("tie tasks per node = %v, want %v", counts, want)
	}
	if got := h.task("tie.1").NodeID; got != "n1" {
		t.Errorf("tie.1 went to %s, want n1", got)
	}
	h.checkState()
}

func TestUnavailableNodesGetNoTasks(t *testing.T) {
	h := newHarness(t)
	h.create(
		newNode("n1"),
		newNode("n2", withState(api.NodeStatusDown)),
		newNode("n3", withState(api.NodeStatusDisconnected)),
		newNode("n4", withAvailability(api.NodeAvailabilityPause)),
		newNode("n5", withAvailability(api.NodeAvailabilityDrain)),
	)
	h.createTasks(newTasks("web", 6))
	h.createTasks([]*api.Task{newTask("other", 1, withConstraints("node.id!=n1"))})
	h.start()
	counts := h.waitAssigned("web", 6)
	if want := map[string]int{"n1": 6}; !maps.Equal(counts, want) {
		t.Errorf("tasks per node = %v, want %v", counts, want)
	}
	h.waitPending("other.1", "no suitable node (1 node is down, 1 node is not ready, 1 node is drained, "+
		"1 node is paused, 1 node does not satisfy constraint node.id!=n1)")
	h.checkState()
}

func TestResourcesLimitPlacement(t *testing.T) {
	for _, tc := range []struct {
		name    string
		nodes   []*api.Node
		tasks   []*api.Task
		want    map[string]int
		pending string // message of the last task when not all fit
	}{
		{
			name:  "a node with less memory gets fewer tasks",
			nodes: []*api.Node{newNode("big", withResources(4e9, 4*gib)), newNode("small", withResources(4e9, 1*gib))},
			tasks: newTasks("web", 8, withReservation(0, gib/2)),
			want:  map[string]int{"big": 6, "small": 2},
		},
		{
			name:    "tasks beyond the memory stay pending",
			nodes:   []*api.Node{newNode("big", withResources(4e9, 4*gib)), newNode("small", withResources(4e9, 1*gib))},
			tasks:   newTasks("web", 6, withReservation(0, gib)),
			want:    map[string]int{"big": 4, "small": 1},
			pending: "no suitable node (2 nodes lack memory)",
		},
		{
			name:    "a reservation no node can satisfy",
			nodes:   []*api.Node{newNode("n1"), newNode("n2")},
			tasks:   newTasks("web", 1, withReservation(0, 64*gib)),
			want:    map[string]int{},
			pending: "no suitable node (2 nodes lack memory)",
		},
		{
			name:    "CPU",
			nodes:   []*api.Node{newNode("n1", withResources(2e9, gib)), newNode("n2", withResources(2e9, gib))},
			tasks:   newTasks("web", 3, withReservation(15e8, 0)),
			want:    map[string]int{"n1": 1, "n2": 1},
			pending: "no suitable node (2 nodes lack CPU)",
		},
		{
			name:  "a task without reservations fits a node without resources",
			nodes: []*api.Node{newNode("n1", withResources(0, 0))},
			tasks: newTasks("web", 2),
			want:  map[string]int{"n1": 2},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			for _, n := range tc.nodes {
				h.create(n)
			}
			h.createTasks(tc.tasks)
			h.start()
			placed := 0
			for _, c := range tc.want {
				placed += c
			}
			counts := h.waitAssigned("web", placed)
			if !maps.Equal(counts, tc.want) {
				t.Errorf("tasks per node = %v, want %v", counts, tc.want)
			}
			if tc.pending != "" {
				h.waitPending(tc.tasks[len(tc.tasks)-1].ID, tc.pending)
			}
			h.checkState()
		})
	}
}

func TestConstraintsSelectNodes(t *testing.T) {
	cluster := func() []api.StoreObject {
		return []api.StoreObject{
			newNode("n1", withLabels("zone", "a", "Disk", "ssd"), withRole(api.NodeRoleManager), withAddr("10.0.0.1")),
			newNode("n2", withLabels("zone", "b"), withAddr("10.0.0.2"), withPlatform("linux", "arm64")),
			newNode("n3", withAddr("10.0.0.3"), withPlatform("windows", "x86_64")),
		}
	}
	for _, tc := range []struct {
		constraints []string
		want        []string // nodes that may get the tasks
		pending     string
	}{
		{constraints: []string{"node.labels.zone==a"}, want: []string{"n1"}},
		{constraints: []string{"node.labels.zone!=a"}, want: []string{"n2", "n3"}},
		{constraints: []string{"node.labels.disk==SSD"}, want: []string{"n1"}},
		{constraints: []string{"node.role==manager"}, want: []string{"n1"}},
		{constraints: []string{"node.role!=manager"}, want: []string{"n2", "n3"}},
		{constraints: []string{"node.hostname==host-n2"}, want: []string{"n2"}},
		{constraints: []string{"node.id==n3"}, want: []string{"n3"}},
		{constraints: []string{"node.ip==10.0.0.2"}, want: []string{"n2"}},
		{constraints: []string{"node.platform.arch==arm64"}, want: []string{"n2"}},
		{constraints: []string{"node.platform.os!=linux"}, want: []string{"n3"}},
		{constraints: []string{"node.labels.zone!=a", "node.platform.os==linux"}, want: []string{"n2"}},
		{
			constraints: []string{"node.labels.zone==c"},
			pending:     "no suitable node (3 nodes do not satisfy constraint node.labels.zone==c)",
		},
		{
			constraints: []string{"node.role==worker", "node.labels.zone==a"},
			pending:     "no suitable node (2 nodes do not satisfy constraint node.labels.zone==a, 1 node does not satisfy constraint node.role==worker)",
		},
		{
			constraints: []string{"node.labels.zone"},
			pending:     `invalid placement constraint: constraint "node.labels.zone" has no operator: write KEY==VALUE or KEY!=VALUE`,
		},
	} {
		t.Run(fmt.Sprint(tc.constraints), func(t *testing.T) {
			h := newHarness(t)
			h.create(cluster()...)
			tasks := newTasks("web", 4, withConstraints(tc.constraints...))
			h.createTasks(tasks)
			h.start()
			if tc.pending != "" {
				for _, task := range tasks {
					h.waitPending(task.ID, tc.pending)
				}
				return
			}
			counts := h.waitAssigned("web", 4)
			if got := slices.Sorted(maps.Keys(counts)); !slices.Equal(got, tc.want) {
				t.Errorf("tasks went to %v (%v), want only and all of %v", got, counts, tc.want)
			}
		})
	}
}

func TestMaxReplicasPerNode(t *testing.T) {
	h := newHarness(t)
	h.create(nodes("n1", "n2", "n3")...)
	tasks := newTasks("web", 8, withMaxReplicas(2))
	h.createTasks(tasks)
	h.start()
	counts := h.waitAssigned("web", 6)
	if want := map[string]int{"n1": 2, "n2": 2, "n3": 2}; !maps.Equal(counts, want) {
		t.Errorf("tasks per node = %v, want %v", counts, want)
	}
	const msg = "no suitable node (3 nodes already run the maximum of 2 replicas per node)"
	h.waitPending("web.7", msg)
	h.waitPending("web.8", msg)

	// A new node takes the rest.
	h.create(newNode("n4"))
	counts = h.waitAssigned("web", 8)
	if want := map[string]int{"n1": 2, "n2": 2, "n3": 2, "n4": 2}; !maps.Equal(counts, want) {
		t.Errorf("tasks per node = %v, want %v", counts, want)
	}
	h.checkState()
}

// Two tasks that publish the same host port never share a node; a task
// whose port is taken everywhere waits, saying so, until a port frees up.
func TestHostPortsKeepTasksApart(t *testing.T) {
	h := newHarness(t)
	h.create(nodes("n1", "n2")...)
	h.create(newTask("other", 1, running("n1"), withHostPort(9090, 90)))
	tasks := newTasks("web", 3, withHostPort(8080, 80))
	h.createTasks(tasks)
	h.start()
	counts := h.waitAssigned("web", 2)
	if want := map[string]int{"n1": 1, "n2": 1}; !maps.Equal(counts, want) {
		t.Errorf("tasks per node = %v, want %v", counts, want)
	}
	h.waitPending("web.3", "no suitable node (2 nodes have host port 8080/tcp in use)")

	// Another port on the same node is no conflict.
	h.createTasks([]*api.Task{newTask("api", 1, withHostPort(9091, 90), withConstraints("node.id==n1"))})
	h.waitAssigned("api", 1)

	// The task holding 8080 on one node stops: the waiting one goes there.
	var freed string
	h.store.View(func(tx store.ReadTx) {
		for _, tk := range []string{"web.1", "web.2"} {
			if task := store.Get[*api.Task](tx, tk); task.NodeID != "" {
				freed = tk
			}
		}
	})
	h.updateTask(freed, func(tk *api.Task) { tk.Status.State = api.TaskStateFailed })
	h.waitAssigned("web", 3)
	h.checkState()
}

func TestGlobalTasksRunOnlyOnTheirNode(t *testing.T) {
	h := newHarness(t)
	h.create(
		newNode("n1"),
		newNode("n2", withAvailability(api.NodeAvailabilityDrain)),
		newNode("n3", withResources(4e9, gib/2)),
		newNode("n4", withLabels("zone", "b")),
	)
	opts := []taskOpt{withReservation(0, gib), withConstraints("node.labels.zone!=b")}
	var tasks []*api.Task
	for _, n := range []string{"n1", "n2", "n3", "n4", "n9"} {
		task := newTask("agent", 0, append(opts, onNode(n))...)
		task.ID = "agent." + n
		tasks = append(tasks, task)
	}
	h.createTasks(tasks)
	h.start()
	h.waitAssigned("agent", 1)
	if got := h.task("agent.n1"); got.NodeID != "n1" || got.Status.State != api.TaskStateAssigned {
		t.Errorf("agent.n1 is %v on %s, want ASSIGNED on n1", got.Status.State, got.NodeID)
	}
	h.waitPending("agent.n2", "node n2 is drained")
	h.waitPending("agent.n3", "node n3 lacks memory")
	h.waitPending("agent.n4", "node n4 does not satisfy constraint node.labels.zone!=b")
	h.waitPending("agent.n9", "node n9 is not in the cluster")

	// The drained node comes back: its task goes there, and only there.
	h.updateNode("n2", func(n *api.Node) { n.Spec.Availability = api.NodeAvailabilityActive })
	h.waitAssigned("agent", 2)
	if got := h.task("agent.n2").NodeID; got != "n2" {
		t.Errorf("agent.n2 went to %s, want n2", got)
	}
	h.checkState()
}

func TestPendingTaskIsPlacedWhenSomethingChanges(t *testing.T) {
	for _, tc := range []struct {
		name    string
		setup   func(h *harness)
		task    []taskOpt
		pending string
		change  func(h *harness)
	}{
		{
			name:    "a node joins",
			setup:   func(h *harness) {},
			pending: "no suitable node (the cluster has no nodes)",
			change:  func(h *harness) { h.create(newNode("n1")) },
		},
		{
			name:    "a node becomes ready",
			setup:   func(h *harness) { h.create(newNode("n1", withState(api.NodeStatusDown))) },
			pending: "no suitable node (1 node is down)",
			change: func(h *harness) {
				h.updateNode("n1", func(n *api.Node) { n.Status.State = api.NodeStatusReady })
			},
		},
		{
			name:    "a paused node is activated",
			setup:   func(h *harness) { h.create(newNode("n1", withAvailability(api.NodeAvailabilityPause))) },
			pending: "no suitable node (1 node is paused)",
			change: func(h *harness) {
				h.updateNode("n1", func(n *api.Node) { n.Spec.Availability = api.NodeAvailabilityActive })
			},
		},
		{
			name: "a task of another service stops",
			setup: func(h *harness) {
				h.create(newNode("n1", withResources(4e9, gib)))
				h.createTasks([]*api.Task{newTask("db", 1, running("n1"), withReservation(0, gib))})
			},
			task:    []taskOpt{withReservation(0, gib)},
			pending: "no suitable node (1 node lacks memory)",
			change: func(h *harness) {
				h.updateTask("db.1", func(t *api.Task) { t.Status.State = api.TaskStateFailed })
			},
		},
		{
			name: "a task of another service is removed",
			setup: func(h *harness) {
				h.create(newNode("n1", withResources(4e9, gib)))
				h.createTasks([]*api.Task{newTask("db", 1, running("n1"), withReservation(0, gib))})
			},
			task:    []taskOpt{withReservation(0, gib)},
			pending: "no suitable node (1 node lacks memory)",
			change:  func(h *harness) { h.deleteTask("db.1") },
		},
		{
			name:    "a node gets the label the constraint wants",
			setup:   func(h *harness) { h.create(newNode("n1")) },
			task:    []taskOpt{withConstraints("node.labels.zone==a")},
			pending: "no suitable node (1 node does not satisfy constraint node.labels.zone==a)",
			change: func(h *harness) {
				h.updateNode("n1", func(n *api.Node) { n.Spec.Annotations.Labels = map[string]string{"zone": "a"} })
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			tc.setup(h)
			h.start()
			h.createTasks([]*api.Task{newTask("web", 1, tc.task...)})
			h.waitPending("web.1", tc.pending)
			tc.change(h)
			h.waitAssigned("web", 1)
			h.checkState()
		})
	}
}

func TestStoppingTaskKeepsItsResourcesUntilItStops(t *testing.T) {
	h := newHarness(t)
	h.create(newNode("n1", withResources(4e9, gib)))
	h.createTasks([]*api.Task{newTask("db", 1, running("n1"), withReservation(0, gib))})
	h.start()
	h.createTasks([]*api.Task{newTask("web", 1, withReservation(0, gib))})
	h.waitPending("web.1", "no suitable node (1 node lacks memory)")

	// Asked to stop, db.1 still runs: its memory stays reserved.
	h.updateTask("db.1", func(t *api.Task) { t.DesiredState = api.TaskStateShutdown })
	h.waitPass()
	if got := h.task("web.1"); got.Status.State != api.TaskStatePending {
		t.Fatalf("web.1 is %v on %q while db.1 still runs, want PENDING", got.Status.State, got.NodeID)
	}

	h.updateTask("db.1", func(t *api.Task) { t.Status.State = api.TaskStateShutdown })
	h.waitAssigned("web", 1)
	h.checkState()
}

func TestUnchangedPendingMessageIsNotRewritten(t *testing.T) {
	h := newHarness(t)
	h.create(newNode("n1", withResources(4e9, gib)))
	h.start()
	h.createTasks([]*api.Task{newTask("web", 1, withReservation(0, 2*gib))})
	h.waitPending("web.1", "no suitable node (1 node lacks memory)")
	version := h.task("web.1").Meta.Version

	// Node changes make the scheduler look at the task again; its message stays.
	for i := range 3 {
		h.updateNode("n1", func(n *api.Node) { n.Spec.Annotations.Labels = map[string]string{"round": fmt.Sprint(i)} })
		h.waitPass()
	}
	if got := h.task("web.1"); got.Meta.Version != version {
		t.Errorf("web.1 was written again (version %d -> %d) with message %q", version, got.Meta.Version, got.Status.Message)
	}

	// A new reason is written.
	h.create(newNode("n2", withState(api.NodeStatusDown)))
	h.waitPending("web.1", "no suitable node (1 node is down, 1 node lacks memory)")
}

func TestOnlyTasksWantedRunningAreScheduled(t *testing.T) {
	h := newHarness(t)
	h.create(newNode("n1"))
	shutdown := newTask("web", 1)
	shutdown.DesiredState = api.TaskStateShutdown
	pending := newTask("web", 2)
	pending.Status.State = api.TaskStatePending
	h.createTasks([]*api.Task{shutdown, pending, newTask("web", 3)})
	h.start()
	h.waitAssigned("web", 2)
	if got := h.task("web.1"); got.NodeID != "" || got.Status.State != api.TaskStateNew {
		t.Errorf("web.1 (desired SHUTDOWN) is %v on %q, want NEW and unassigned", got.Status.State, got.NodeID)
	}
	h.checkState()
}

// TestNodeInfosFollowTaskLifecycles runs tasks through their states and
// checks the scheduler's accounting matches a fresh read of the store.
func TestNodeInfosFollowTaskLifecycles(t *testing.T) {
	h := newHarness(t)
	h.create(nodes("n1", "n2", "n3")...)
	h.start()
	h.createTasks(newTasks("web", 30, withReservation(1e8, gib/8), withMaxReplicas(20)))
	h.createTasks(newTasks("db", 9, withReservation(2e8, gib/4)))
	h.waitAssigned("web", 30)
	h.waitAssigned("db", 9)
	for i := 1; i <= 30; i++ {
		id := fmt.Sprintf("web.%d", i)
		switch i % 5 {
		case 0:
			h.updateTask(id, func(t *api.Task) { t.Status.State = api.TaskStateRunning })
		case 1:
			h.updateTask(id, func(t *api.Task) { t.Status.State = api.TaskStateFailed })
		case 2:
			h.updateTask(id, func(t *api.Task) { t.DesiredState = api.TaskStateShutdown })
		case 3:
			h.deleteTask(id)
		}
	}
	h.updateNode("n2", func(n *api.Node) { n.Spec.Availability = api.NodeAvailabilityDrain })
	err := h.store.Update(context.Background(), func(tx store.Tx) error { return tx.Delete(api.KindNode, "n3") })
	if err != nil {
		t.Fatal(err)
	}
	h.createTasks(newTasks("cache", 5, withReservation(0, gib)))
	h.waitAssigned("cache", 5)
	h.checkState()
}

// conflictProposer commits proposals at once, like storetest's, but before
// the first proposal after arm it commits another writer's change to a task.
type conflictProposer struct {
	mu     sync.Mutex
	index  uint64
	s      *store.MemoryStore
	change func(*api.Task) // applied to task before the next proposal
	task   string
}

func (p *conflictProposer) Propose(_ context.Context, data []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.change != nil {
		var t *api.Task
		p.s.View(func(tx store.ReadTx) { t = store.Get[*api.Task](tx, p.task) })
		p.change(t)
		p.change = nil
		other, err := (&api.StoreTransaction{Actions: []api.StoreAction{
			{Kind: api.StoreActionKindUpdate, Target: api.NewObject(t)},
		}}).Marshal()
		if err != nil {
			return err
		}
		p.index++
		if err := p.s.Apply(p.index, other); err != nil {
			return err
		}
	}
	p.index++
	return p.s.Apply(p.index, data)
}

func TestConflictingWritesAreRetried(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*api.Task)
		want   int // tasks assigned
	}{
		{"the task still wants a node", func(t *api.Task) { t.Annotations.Labels = map[string]string{"touched": "yes"} }, 10},
		{"the task was stopped meanwhile", func(t *api.Task) { t.DesiredState = api.TaskStateShutdown }, 9},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &conflictProposer{}
			s := store.New(p)
			p.s = s
			h := &harness{t: t, store: s, sched: New(s, testLogger())}
			t.Cleanup(h.stop)
			h.create(nodes("n1", "n2")...)
			h.createTasks(newTasks("web", 10, withReservation(0, gib)))
			p.mu.Lock()
			p.task, p.change = "web.5", tc.change
			p.mu.Unlock()
			h.start()
			counts := h.waitAssigned("web", tc.want)
			if got := counts["n1"] + counts["n2"]; got != tc.want {
				t.Errorf("tasks per node = %v", counts)
			}
			if tc.want == 9 {
				if got := h.task("web.5"); got.NodeID != "" {
					t.Errorf("web.5 was stopped before it was placed, yet went to %s", got.NodeID)
				}
			}
			h.checkState()
		})
	}
}

func TestRunReadsTheStoreAgainAfterARestore(t *testing.T) {
	h := newHarness(t)
	h.create(newNode("n1"))
	h.start()
	h.createTasks(newTasks("web", 2))
	h.waitAssigned("web", 2)
	snap, err := h.store.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	// Restore ends the scheduler's watch; it must read the store again and
	// go on placing.
	if err := h.store.Restore(snap); err != nil {
		t.Fatal(err)
	}
	h.create(newNode("n2"))
	h.createTasks([]*api.Task{newTask("web", 3)})
	counts := h.waitAssigned("web", 3)
	if counts["n2"] != 1 {
		t.Errorf("tasks per node = %v, want web.3 on n2", counts)
	}
	h.checkState()
}

// failingProposer refuses its first proposals as a raft without a leader
// would, then commits at once.
type failingProposer struct {
	mu    sync.Mutex
	index uint64
	s     *store.MemoryStore
	fails int
}

var errNoLeader = errors.New("no leader")

func (p *failingProposer) Propose(_ context.Context, data []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fails > 0 {
		p.fails--
		return errNoLeader
	}
	p.index++
	return p.s.Apply(p.index, data)
}

func TestFailedCommitIsRolledBackAndRetried(t *testing.T) {
	p := &failingProposer{}
	s := store.New(p)
	p.s = s
	h := &harness{t: t, store: s, sched: New(s, testLogger())}
	t.Cleanup(h.stop)
	h.create(nodes("n1", "n2")...)
	h.createTasks(newTasks("web", 8, withReservation(0, gib)))
	p.mu.Lock()
	p.fails = 2
	p.mu.Unlock()
	h.start()
	counts := h.waitAssigned("web", 8)
	// Had the failed decisions stayed counted, the nodes would look fuller
	// than they are and the spread would be off.
	if want := map[string]int{"n1": 4, "n2": 4}; !maps.Equal(counts, want) {
		t.Errorf("tasks per node = %v, want %v", counts, want)
	}
	h.checkState()
}

func TestDecisionsAreCommittedInFewProposals(t *testing.T) {
	h := newHarness(t)
	objs := make([]api.StoreObject, 100)
	for i := range objs {
		objs[i] = newNode(fmt.Sprintf("n%03d", i))
	}
	h.create(objs...)
	h.createTasks(newTasks("web", 10000, withReservation(1e7, 1<<20)))
	before := h.prop.Proposals
	h.start()
	counts := h.waitAssigned("web", 10000)
	for id, c := range counts {
		if c != 100 {
			t.Errorf("node %s got %d tasks, want 100", id, c)
		}
	}
	h.stop()
	proposals := h.prop.Proposals - before
	t.Logf("10,000 tasks placed in %d proposals", proposals)
	if proposals > 10 {
		t.Errorf("placing 10,000 tasks took %d proposals, want at most 10", proposals)
	}
}
