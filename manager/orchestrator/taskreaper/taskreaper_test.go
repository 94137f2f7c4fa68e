package taskreaper_test

import (
	"fmt"
	"slices"
	"testing"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/api/defaults"
	"github.com/flotilla/flotilla/manager/orchestrator"
	"github.com/flotilla/flotilla/manager/orchestrator/orchestratortest"
	"github.com/flotilla/flotilla/manager/orchestrator/taskreaper"
	"github.com/flotilla/flotilla/manager/store"
)

type fixture struct {
	*orchestratortest.Env
	r   *taskreaper.Reaper
	svc *api.Service
	seq int
}

func setup(t *testing.T, spec api.ServiceSpec) *fixture {
	e := orchestratortest.New(t)
	e.CreateNode("a")
	return &fixture{Env: e, r: taskreaper.New(e.Store, taskreaper.Config{Clock: e.Clock}), svc: e.CreateService(spec)}
}

// task stores a task of the service in slot (or on node a for slot 0) with
// the given desired and observed states. IDs grow with creation so that
// creation order is total even when timestamps tie.
func (f *fixture) task(slot uint64, desired, state api.TaskState) *api.Task {
	f.seq++
	node := ""
	if slot == 0 || state >= api.TaskStateAssigned {
		node = "a"
	}
	t := orchestrator.NewTask(f.svc, slot, node, f.Clock.Now())
	t.ID = fmt.Sprintf("task%04d", f.seq)
	t.DesiredState = desired
	t.Status.State = state
	f.CreateTask(t)
	return t
}

// history stores n old tasks (shut down) in slot, oldest first.
func (f *fixture) history(slot uint64, n int) []*api.Task {
	var ts []*api.Task
	for range n {
		ts = append(ts, f.task(slot, api.TaskStateShutdown, api.TaskStateShutdown))
	}
	return ts
}

func (f *fixture) ids() []string {
	var out []string
	for _, t := range f.Tasks(f.svc.ID) {
		out = append(out, t.ID)
	}
	return out
}

func idsOf(ts ...*api.Task) []string {
	var out []string
	for _, t := range ts {
		out = append(out, t.ID)
	}
	slices.Sort(out)
	return out
}

func (f *fixture) setLimit(t *testing.T, limit int64) {
	t.Helper()
	err := f.Store.Update(f.Ctx, func(tx store.Tx) error {
		cs, _ := store.Find[*api.Cluster](tx, store.All())
		if len(cs) == 0 {
			c := &api.Cluster{ID: "cluster", Spec: defaults.ClusterSpec()}
			c.Spec.Orchestration.TaskHistoryRetentionLimit = limit
			return tx.Create(c)
		}
		cs[0].Spec.Orchestration.TaskHistoryRetentionLimit = limit
		return tx.Update(cs[0])
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestHistoryLimit(t *testing.T) {
	cases := []struct {
		name  string
		limit int64 // -1: no cluster object (default 5)
		keep  int
	}{
		{"default", -1, defaults.TaskHistoryRetentionLimit},
		{"two", 2, 2},
		{"none", 0, 0},
		{"more than there is", 20, 8},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := setup(t, orchestratortest.Replicated("web", 2))
			if c.limit >= 0 {
				f.setLimit(t, c.limit)
			}
			old := f.history(1, 8)
			cur := f.task(1, api.TaskStateRunning, api.TaskStateRunning)
			other := f.history(2, 1)
			f.Reconcile(f.r)
			keep := append(old[8-c.keep:], cur)
			if c.keep > 0 {
				keep = append(keep, other...)
			}
			want := idsOf(keep...)
			if got := f.ids(); !slices.Equal(got, want) {
				t.Fatalf("tasks %v, want %v", got, want)
			}
		})
	}
}

func TestLimitChangeReapsAgain(t *testing.T) {
	f := setup(t, orchestratortest.Replicated("web", 1))
	f.setLimit(t, 5)
	old := f.history(1, 5)
	f.Reconcile(f.r)
	f.setLimit(t, 1)
	f.Settle(f.r)
	if got, want := f.ids(), idsOf(old[4]); !slices.Equal(got, want) {
		t.Fatalf("tasks %v, want %v", got, want)
	}
}

func TestNewHistoryIsReaped(t *testing.T) {
	f := setup(t, orchestratortest.Replicated("web", 1))
	f.setLimit(t, 2)
	f.Reconcile(f.r)
	var all []*api.Task
	for range 4 {
		// Each round the current task ends, is shut down and replaced.
		t0 := f.task(1, api.TaskStateRunning, api.TaskStateRunning)
		all = append(all, t0)
		f.Settle(f.r)
		f.UpdateTask(t0.ID, func(t *api.Task) { t.DesiredState = api.TaskStateShutdown })
		f.Settle(f.r)
		f.Report(t0.ID, api.TaskStateShutdown)
		f.Settle(f.r)
	}
	if got, want := f.ids(), idsOf(all[2], all[3]); !slices.Equal(got, want) {
		t.Fatalf("tasks %v, want %v", got, want)
	}
}

func TestLiveHistoryWaits(t *testing.T) {
	f := setup(t, orchestratortest.Replicated("web", 1))
	f.setLimit(t, 1)
	stopping := f.task(1, api.TaskStateShutdown, api.TaskStateRunning) // asked to stop, not stopped yet
	newer := f.history(1, 1)
	f.Reconcile(f.r)
	if got := f.ids(); !slices.Equal(got, idsOf(stopping, newer[0])) {
		t.Fatalf("a task still running was deleted: tasks %v", got)
	}
	f.Report(stopping.ID, api.TaskStateShutdown)
	f.Settle(f.r)
	if got := f.ids(); !slices.Equal(got, idsOf(newer[0])) {
		t.Fatalf("tasks %v, want %v once it stopped", got, idsOf(newer[0]))
	}
}

func TestMaxAttemptsRaisesTheLimit(t *testing.T) {
	spec := orchestratortest.Replicated("web", 1)
	spec.Task.Restart = &api.RestartPolicy{MaxAttempts: 7}
	f := setup(t, spec)
	old := f.history(1, 9)
	f.Reconcile(f.r)
	if got, want := f.ids(), idsOf(old[2:]...); !slices.Equal(got, want) {
		t.Fatalf("tasks %v, want the 7 newest", got)
	}
}

func TestRemovedTasks(t *testing.T) {
	cases := []struct {
		state   api.TaskState
		deleted bool
	}{
		{api.TaskStateNew, true}, // never assigned
		{api.TaskStatePending, true},
		{api.TaskStateAssigned, false},
		{api.TaskStateRunning, false},
		{api.TaskStateCompleted, true},
		{api.TaskStateShutdown, true},
		{api.TaskStateFailed, true},
		{api.TaskStateRejected, true},
		{api.TaskStateOrphaned, true},
	}
	for _, c := range cases {
		t.Run(c.state.String(), func(t *testing.T) {
			f := setup(t, orchestratortest.Replicated("web", 1))
			task := f.task(1, api.TaskStateRemove, c.state)
			f.Reconcile(f.r)
			if deleted := f.Task(task.ID) == nil; deleted != c.deleted {
				t.Fatalf("deleted = %v, want %v", deleted, c.deleted)
			}
		})
	}
}

func TestRemovedTaskIsDeletedOnceStopped(t *testing.T) {
	f := setup(t, orchestratortest.Replicated("web", 1))
	f.Reconcile(f.r)
	task := f.task(3, api.TaskStateRunning, api.TaskStateRunning)
	f.UpdateTask(task.ID, func(t *api.Task) { t.DesiredState = api.TaskStateRemove }) // scaled down
	f.Settle(f.r)
	if f.Task(task.ID) == nil {
		t.Fatal("deleted while still running")
	}
	f.Report(task.ID, api.TaskStateShutdown)
	f.Settle(f.r)
	if f.Task(task.ID) != nil {
		t.Fatal("not deleted once shut down")
	}
}

func TestRemovedNodeReleasesItsTasks(t *testing.T) {
	f := setup(t, orchestratortest.Replicated("web", 1))
	f.Reconcile(f.r)
	task := f.task(1, api.TaskStateRemove, api.TaskStateRunning) // on a, which will never report again
	f.RemoveNode("a")
	f.Settle(f.r)
	if f.Task(task.ID) != nil {
		t.Fatal("a removed task on a removed node was kept")
	}
}

// A removed task on a DOWN node is deleted at once (the agent stops what its
// complete assignment set lacks when it returns); on a READY node it waits.
func TestRemovedTaskOnDownNodeIsDeleted(t *testing.T) {
	f := setup(t, orchestratortest.Replicated("web", 1))
	f.Reconcile(f.r)
	task := f.task(1, api.TaskStateRemove, api.TaskStateRunning) // on a
	f.Settle(f.r)
	if f.Task(task.ID) == nil {
		t.Fatal("a running removed task on a READY node was deleted")
	}
	f.SetNodeState("a", api.NodeStatusDown)
	f.Settle(f.r)
	if f.Task(task.ID) != nil {
		t.Fatal("a removed task on a DOWN node was kept")
	}
}

func TestTasksOfRemovedService(t *testing.T) {
	f := setup(t, orchestratortest.Replicated("web", 2))
	f.Reconcile(f.r)
	running := f.task(1, api.TaskStateRunning, api.TaskStateRunning)
	pending := f.task(2, api.TaskStateRunning, api.TaskStateNew)
	old := f.history(1, 1)
	f.RemoveService(f.svc.ID)
	f.Settle(f.r)
	if got := f.ids(); !slices.Equal(got, idsOf(running)) {
		t.Fatalf("tasks %v, want only the running one %s (deleted: %s, %s)", got, running.ID, pending.ID, old[0].ID)
	}
	f.Report(running.ID, api.TaskStateShutdown)
	f.Settle(f.r)
	if got := f.ids(); len(got) != 0 {
		t.Fatalf("tasks %v left once shut down", got)
	}
}

func TestGlobalHistoryPerNode(t *testing.T) {
	f := setup(t, orchestratortest.Global("agent"))
	f.CreateNode("b")
	f.setLimit(t, 1)
	onA := f.history(0, 3)
	f.seq++
	onB := orchestrator.NewTask(f.svc, 0, "b", f.Clock.Now())
	onB.ID, onB.DesiredState, onB.Status.State = fmt.Sprintf("task%04d", f.seq), api.TaskStateShutdown, api.TaskStateShutdown
	f.CreateTask(onB)
	f.Reconcile(f.r)
	if got, want := f.ids(), idsOf(onA[2], onB); !slices.Equal(got, want) {
		t.Fatalf("tasks %v, want %v", got, want)
	}
}

func TestDeletesAreBatched(t *testing.T) {
	const n = 5000
	f := setup(t, orchestratortest.Replicated("web", 0))
	_, err := f.Store.Batch(f.Ctx, func(b *store.Batch) error {
		for i := range n {
			t := orchestrator.NewTask(f.svc, uint64(i+1), "", f.Clock.Now())
			t.DesiredState = api.TaskStateRemove
			if err := b.Update(func(tx store.Tx) error { return tx.Create(t) }); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	before := f.Proposer.Proposals
	f.Reconcile(f.r)
	if got := len(f.ids()); got != 0 {
		t.Fatalf("%d tasks left", got)
	}
	if p := f.Proposer.Proposals - before; p > 3 {
		t.Fatalf("%d proposals to delete %d tasks", p, n)
	}
}

func TestRunReaps(t *testing.T) {
	f := setup(t, orchestratortest.Replicated("web", 1))
	f.Start(f.r.Run)
	task := f.task(1, api.TaskStateRemove, api.TaskStateRunning)
	f.Report(task.ID, api.TaskStateShutdown)
	f.Eventually("the removed task deleted", func() bool { return f.Task(task.ID) == nil })
}

func TestRemovedNodeDropsGlobalHistory(t *testing.T) {
	f := setup(t, orchestratortest.Global("agent"))
	f.Reconcile(f.r)
	f.history(0, 2) // on a
	f.RemoveNode("a")
	f.Settle(f.r)
	if got := f.ids(); len(got) != 0 {
		t.Fatalf("tasks %v kept for a removed node", got)
	}
}
