package orchestrator_test

import (
	"context"
	"testing"

	"github.com/gogo/protobuf/types"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/api/defaults"
	"github.com/flotilla/flotilla/manager/orchestrator"
	"github.com/flotilla/flotilla/manager/orchestrator/global"
	"github.com/flotilla/flotilla/manager/orchestrator/orchestratortest"
	"github.com/flotilla/flotilla/manager/orchestrator/replicated"
	"github.com/flotilla/flotilla/manager/orchestrator/restart"
	"github.com/flotilla/flotilla/manager/orchestrator/taskreaper"
	"github.com/flotilla/flotilla/manager/store"
)

// fakeCluster plays the scheduler and the agents: it places new tasks
// wanted RUNNING on the first open node (or their preset node) and reports
// them RUNNING, and reports SHUTDOWN for running tasks asked to stop.
func fakeCluster(ctx context.Context, e *orchestratortest.Env) error {
	w, _, err := e.Store.ViewAndWatch(func(store.ReadTx) {})
	if err != nil {
		return err
	}
	defer w.Close()
	for {
		ts, _ := types.TimestampProto(e.Clock.Now())
		_, err := e.Store.Batch(ctx, func(b *store.Batch) error {
			var tasks []*api.Task
			var nodes []*api.Node
			e.Store.View(func(tx store.ReadTx) {
				tasks, _ = store.Find[*api.Task](tx, store.All())
				nodes, _ = store.Find[*api.Node](tx, store.All())
			})
			for _, t := range tasks {
				switch {
				case t.DesiredState == api.TaskStateRunning && t.Status.State == api.TaskStateNew:
					if t.NodeID == "" {
						for _, n := range nodes {
							if orchestrator.NodeOpen(n) {
								t.NodeID = n.ID
								break
							}
						}
					}
					if t.NodeID == "" {
						continue
					}
					t.Status = api.TaskStatus{State: api.TaskStateRunning, Timestamp: ts}
				case t.DesiredState > api.TaskStateRunning && orchestrator.Live(t):
					t.Status = api.TaskStatus{State: api.TaskStateShutdown, Timestamp: ts}
				default:
					continue
				}
				_ = b.Update(func(tx store.Tx) error { return tx.Update(t) })
			}
			return nil
		})
		if err != nil && ctx.Err() == nil {
			continue // lost a race with an orchestrator: look again
		}
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-w.C:
			if !ok {
				return nil
			}
		}
	}
}

func TestComponentsTogether(t *testing.T) {
	e := orchestratortest.New(t)
	e.CreateNode("a")
	e.CreateNode("b")
	err := e.Store.Update(e.Ctx, func(tx store.Tx) error {
		return tx.Create(&api.Cluster{ID: "c", Spec: defaults.ClusterSpec()})
	})
	if err != nil {
		t.Fatal(err)
	}
	e.Start(replicated.New(e.Store, replicated.Config{Clock: e.Clock, Logger: discardLogger()}).Run)
	e.Start(global.New(e.Store, global.Config{Clock: e.Clock, Logger: discardLogger()}).Run)
	e.Start(restart.New(e.Store, restart.Config{Clock: e.Clock, Logger: discardLogger()}).Run)
	e.Start(taskreaper.New(e.Store, taskreaper.Config{Clock: e.Clock, Logger: discardLogger()}).Run)
	e.Start(func(ctx context.Context) error { return fakeCluster(ctx, e) })

	web := e.CreateService(orchestratortest.Replicated("web", 3))
	agent := e.CreateService(orchestratortest.Global("agent"))
	running := func(id string) (n int) {
		for _, t := range e.Current(id) {
			if t.Status.State == api.TaskStateRunning {
				n++
			}
		}
		return n
	}
	e.Eventually("3 web and 2 agent tasks running", func() bool { return running(web.ID) == 3 && running(agent.ID) == 2 })

	// A web task fails: replaced after the restart delay, kept as history.
	failed := e.Current(web.ID)[0]
	e.Report(failed.ID, api.TaskStateFailed)
	e.Eventually("the restart timer", func() bool { return e.Clock.Timers() == 1 })
	e.Clock.Advance(defaults.RestartDelay)
	e.Eventually("the failed task replaced", func() bool {
		f := e.Task(failed.ID)
		return f.DesiredState == api.TaskStateShutdown && running(web.ID) == 3
	})

	// No history kept: the reaper deletes it.
	err = e.Store.Update(e.Ctx, func(tx store.Tx) error {
		c := store.Get[*api.Cluster](tx, "c")
		c.Spec.Orchestration.TaskHistoryRetentionLimit = 0
		return tx.Update(c)
	})
	if err != nil {
		t.Fatal(err)
	}
	e.Eventually("history deleted", func() bool { return e.Task(failed.ID) == nil })

	// Drain a: its web tasks move to b, its agent task stops.
	e.SetAvailability("a", api.NodeAvailabilityDrain)
	e.Eventually("everything on b", func() bool {
		for _, t := range append(e.Current(web.ID), e.Current(agent.ID)...) {
			if t.NodeID != "b" || t.Status.State != api.TaskStateRunning {
				return false
			}
		}
		return running(web.ID) == 3 && running(agent.ID) == 1
	})

	// Scale down, then remove both services: every task ends up deleted.
	e.Scale(web.ID, 1)
	e.Eventually("1 web task, the others deleted", func() bool { return len(e.Tasks(web.ID)) == 1 && running(web.ID) == 1 })
	e.RemoveService(web.ID)
	e.RemoveService(agent.ID)
	e.Eventually("no task left", func() bool { return len(e.Tasks(web.ID))+len(e.Tasks(agent.ID)) == 0 })
}
