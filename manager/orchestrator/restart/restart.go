// Package restart is the restart supervisor: it replaces tasks that ended
// while they should run, per their restart policy (task.Spec.Restart).
//
// New builds a Supervisor and starts nothing; Run is a leader-only loop (see
// orchestrator.Run).
//
// # Design
//
// A task that ended (Status.State past RUNNING) while its DesiredState is
// still RUNNING stays its slot's current task until it is replaced, so the
// orchestrators neither refill nor double the slot meanwhile. The supervisor
// decides from stored state only (decide): no replacement (condition, or
// attempts exhausted) leaves the dead task in place; else, once the restart
// delay has passed, one write sets the dead task's DesiredState to SHUTDOWN
// (it stays as history) and creates the replacement from the service's
// current spec, in the same slot (replicated: unassigned, the scheduler
// places it) or on the same node (global).
//
// The delay runs on in-memory timers (one clock timer for the earliest
// deadline), not in the store: waiting costs no proposal, and the
// replacement does not exist before it may run. The delay counts from when
// this supervisor saw the task end; when it starts (a new leader, or after
// losing its watch) it credits the time since the task's status timestamp,
// so a restart a previous leader was delaying happens when it was due (at
// once if that has passed), and a timestamp ahead of the clock counts as now.
// Before replacing, the write checks again that the task is still ended and
// wanted RUNNING: an orchestrator that stopped it meanwhile (scale down,
// update, lost node) wins.
package restart

import (
	"container/heap"
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/manager/orchestrator"
	"github.com/flotilla/flotilla/manager/store"
)

// Config holds a Supervisor's dependencies; the zero value of each field is
// a sensible default.
type Config struct {
	// Clock times restart delays; nil means the real clock.
	Clock orchestrator.Clock
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

// Supervisor replaces ended tasks of replicated and global services.
type Supervisor struct {
	store *store.MemoryStore
	clock orchestrator.Clock
	log   *slog.Logger

	// pending holds when each ended task is due to be replaced; due orders
	// the same deadlines (entries that no longer match pending are skipped).
	pending map[string]time.Time
	due     deadlines
}

// New returns a restart supervisor of the tasks in s.
func New(s *store.MemoryStore, cfg Config) *Supervisor {
	r := &Supervisor{store: s, clock: cfg.Clock, log: cfg.Logger, pending: map[string]time.Time{}}
	if r.clock == nil {
		r.clock = orchestrator.RealClock()
	}
	if r.log == nil {
		r.log = slog.Default()
	}
	r.log = r.log.With("module", "orchestrator/restart")
	return r
}

// Run supervises until ctx ends (then it returns nil) or a fatal error. It
// starts from the store alone: delays a previous run was timing are
// recomputed by Reconcile.
func (r *Supervisor) Run(ctx context.Context) error {
	r.pending, r.due = map[string]time.Time{}, nil
	return orchestrator.Run(ctx, r.store, r.clock, r.log, r)
}

// Reconcile finds every ended task still wanted RUNNING and schedules its
// replacement. Run calls it.
func (r *Supervisor) Reconcile(context.Context) error {
	now := r.clock.Now()
	var err error
	r.store.View(func(tx store.ReadTx) {
		// A scan of every task: an index by desired state cost a fifth of
		// every task write (it holds all tasks under a few keys) for this
		// one read at leadership start.
		var tasks []*api.Task
		err = store.Each(tx, store.All(), func(t *api.Task) bool {
			if t.DesiredState == api.TaskStateRunning && orchestrator.Ended(t) {
				tasks = append(tasks, t.Copy())
			}
			return true
		})
		if err != nil {
			return
		}
		for _, t := range tasks {
			if _, ok := r.pending[t.ID]; ok {
				continue
			}
			ended := orchestrator.StatusTime(t)
			if ended.IsZero() || ended.After(now) {
				ended = now
			}
			if err = r.consider(tx, t, ended); err != nil {
				return
			}
		}
	})
	return err
}

// Handle schedules the replacement of tasks that just ended. Run calls it.
func (r *Supervisor) Handle(_ context.Context, changes []store.Change) error {
	ended := map[string]bool{}
	for _, c := range changes {
		for _, ev := range c.Events {
			t, ok := ev.Object.(*api.Task)
			if !ok {
				continue
			}
			if ev.Action != api.WatchActionKindRemove && t.DesiredState == api.TaskStateRunning && orchestrator.Ended(t) {
				ended[t.ID] = true
			} else {
				delete(ended, t.ID)
				delete(r.pending, t.ID)
			}
		}
	}
	if len(ended) == 0 {
		return nil
	}
	now := r.clock.Now()
	var err error
	r.store.View(func(tx store.ReadTx) {
		for id := range ended {
			if _, ok := r.pending[id]; ok {
				continue
			}
			t := store.Get[*api.Task](tx, id)
			if t == nil || t.DesiredState != api.TaskStateRunning || !orchestrator.Ended(t) {
				continue
			}
			if err = r.consider(tx, t, now); err != nil {
				return
			}
		}
	})
	return err
}

// consider schedules t's replacement if its policy allows one.
func (r *Supervisor) consider(tx store.ReadTx, t *api.Task, ended time.Time) error {
	svc := store.Get[*api.Service](tx, t.ServiceID)
	if svc == nil || !orchestrator.IsReplicated(svc) && !orchestrator.IsGlobal(svc) {
		return nil
	}
	history, err := orchestrator.SlotTasks(tx, t)
	if err != nil {
		return err
	}
	if ok, why := decide(t, history); !ok {
		r.log.Debug("not restarting task", "task.id", t.ID, "service.id", t.ServiceID, "reason", why)
		return nil
	}
	at := ended.Add(delay(t))
	r.pending[t.ID] = at
	heap.Push(&r.due, deadline{at: at, id: t.ID})
	return nil
}

// Next is the earliest restart deadline. Run calls it.
func (r *Supervisor) Next() time.Time {
	for len(r.due) > 0 {
		d := r.due[0]
		if at, ok := r.pending[d.id]; ok && at.Equal(d.at) {
			return d.at
		}
		heap.Pop(&r.due)
	}
	return time.Time{}
}

// Tick replaces the tasks whose delay has passed, in one batch. Run calls it.
func (r *Supervisor) Tick(ctx context.Context) error {
	now := r.clock.Now()
	var writes []orchestrator.Write
	for !r.Next().IsZero() && !r.due[0].at.After(now) {
		d := heap.Pop(&r.due).(deadline)
		delete(r.pending, d.id)
		writes = append(writes, r.restart(d.id, now))
	}
	// The writes read again what they change, so after losing a race they
	// can simply run again: those that were committed find nothing to do.
	for attempt := 1; ; attempt++ {
		changed, err := orchestrator.Commit(ctx, r.store, writes)
		if err != nil || !changed {
			return err
		}
		if attempt == 10 {
			return fmt.Errorf("%w: restarting %d tasks", store.ErrSequenceConflict, len(writes))
		}
	}
}

// restart shuts the ended task id down and creates its replacement, if it is
// still ended and wanted RUNNING and its service still exists.
func (r *Supervisor) restart(id string, now time.Time) orchestrator.Write {
	return func(tx store.Tx) error {
		t := store.Get[*api.Task](tx, id)
		if t == nil || t.DesiredState != api.TaskStateRunning || !orchestrator.Ended(t) {
			return nil
		}
		svc := store.Get[*api.Service](tx, t.ServiceID)
		if svc == nil {
			return nil
		}
		var next *api.Task
		switch {
		case orchestrator.IsReplicated(svc):
			next = orchestrator.NewTask(svc, t.Slot, "", now)
		case orchestrator.IsGlobal(svc):
			next = orchestrator.NewTask(svc, 0, t.NodeID, now)
		default:
			return nil
		}
		t.DesiredState = api.TaskStateShutdown
		if err := tx.Update(t); err != nil {
			return err
		}
		r.log.Debug("restarting task", "task.id", t.ID, "service.id", t.ServiceID, "replacement", next.ID)
		return tx.Create(next)
	}
}

type deadline struct {
	at time.Time
	id string
}

// deadlines is a min-heap of deadlines.
type deadlines []deadline

func (h deadlines) Len() int           { return len(h) }
func (h deadlines) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h deadlines) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *deadlines) Push(x any)        { *h = append(*h, x.(deadline)) }
func (h *deadlines) Pop() any {
	old := *h
	d := old[len(old)-1]
	*h = old[:len(old)-1]
	return d
}
