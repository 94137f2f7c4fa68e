package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sync"
	"time"

	"github.com/flotilla/flotilla/agent/exec"
	"github.com/flotilla/flotilla/agent/taskdb"
	"github.com/flotilla/flotilla/api"
)

// errWorkerStopped is returned to a session that hands assignments to a
// worker that has stopped (the agent is stopping).
var errWorkerStopped = errors.New("the agent's task runner stopped")

// worker runs the tasks the dispatcher assigns to the node. Its run
// goroutine owns the set of tasks: it applies assignment messages (handed
// over by the session), records the assigned tasks in the task DB before
// acting on them, runs a taskManager per task, and forgets removed tasks
// once their manager is done with them.
type worker struct {
	executor exec.Executor
	store    taskdb.Store
	rep      *reporter
	logs     *logRegistry // the tasks' controllers, for their logs (logs.go)
	log      *slog.Logger

	reqs    chan assignRequest
	removed chan string   // from task managers: task removed from the node
	stopped chan struct{} // closed when run returned

	// Owned by run (and load, before run).
	tasks map[string]*taskEntry
}

type taskEntry struct {
	tm       *taskManager
	record   *api.Task // the dispatcher's last record of the task
	removing bool
}

type assignRequest struct {
	msg  *api.AssignmentsMessage
	done chan error // capacity 1
}

func newWorker(executor exec.Executor, store taskdb.Store, log *slog.Logger) *worker {
	return &worker{
		executor: executor,
		store:    store,
		rep:      newReporter(log),
		logs:     newLogRegistry(),
		log:      log,
		reqs:     make(chan assignRequest),
		removed:  make(chan string),
		stopped:  make(chan struct{}),
		tasks:    map[string]*taskEntry{},
	}
}

// load takes in the tasks of the task DB, before run: their managers resume
// them from the status recorded, and that status is reported once a session
// is open.
func (w *worker) load() error {
	tasks, err := w.store.List()
	if err != nil {
		return fmt.Errorf("load the task DB: %w", err)
	}
	for _, t := range tasks {
		w.tasks[t.ID] = &taskEntry{tm: newTaskManager(w, t), record: t}
	}
	err = w.store.WalkStatuses(func(id string, s *api.TaskStatus) error {
		w.rep.load(id, s)
		return nil
	})
	if err != nil {
		return fmt.Errorf("load the task DB: %w", err)
	}
	if len(tasks) > 0 {
		w.log.Info("resuming tasks from the task DB", "tasks", len(tasks))
	}
	return nil
}

// run runs the tasks and the status reporter until ctx ends, and returns
// when every goroutine it started has returned. The tasks keep running.
func (w *worker) run(ctx context.Context) {
	defer close(w.stopped)
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { w.rep.run(ctx) })
	start := func(e *taskEntry) { wg.Go(func() { e.tm.run(ctx) }) }
	w.removeOrphans(ctx)
	for _, e := range w.tasks {
		start(e)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case req := <-w.reqs:
			req.done <- w.apply(req.msg, start)
		case id := <-w.removed:
			ids := []string{id}
		more:
			for {
				select {
				case id := <-w.removed:
					ids = append(ids, id)
				default:
					break more
				}
			}
			w.forget(ids)
		}
	}
}

// orphanSweepTimeout bounds the removal of orphans at start.
const orphanSweepTimeout = time.Minute

// removeOrphans removes what the executor keeps for tasks the task DB does
// not know. It runs before any assignment is taken in, so nothing it finds
// can belong to a task the agent is starting.
func (w *worker) removeOrphans(ctx context.Context) {
	cleaner, ok := w.executor.(exec.TaskCleaner)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, orphanSweepTimeout)
	defer cancel()
	ids, err := cleaner.Tasks(ctx)
	if err != nil {
		w.log.Warn("cannot list the executor's tasks to remove orphans", "error", err)
		return
	}
	for _, id := range ids {
		if _, known := w.tasks[id]; known {
			continue
		}
		if err := cleaner.RemoveTask(ctx, id); err != nil {
			w.log.Warn("cannot remove an orphaned task", "task.id", id, "error", err)
			continue
		}
		w.log.Info("removed an orphaned task: the task DB did not know it", "task.id", id)
	}
}

// assign hands an assignments message to the run goroutine and returns once
// it is recorded and applied.
func (w *worker) assign(ctx context.Context, m *api.AssignmentsMessage) error {
	req := assignRequest{msg: m, done: make(chan error, 1)}
	select {
	case w.reqs <- req:
	case <-ctx.Done():
		return ctx.Err()
	case <-w.stopped:
		return errWorkerStopped
	}
	select {
	case err := <-req.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// apply applies an assignments message: COMPLETE replaces the set of tasks
// (tasks not in it are removed), INCREMENTAL updates and removes tasks.
// Secrets and configs are not used yet.
func (w *worker) apply(m *api.AssignmentsMessage, start func(*taskEntry)) error {
	updates := map[string]*api.Task{}
	removes := map[string]bool{}
	for _, c := range m.Changes {
		t := c.GetAssignment().GetTask()
		if t == nil || t.ID == "" {
			continue
		}
		// In message order: a later change to the same task wins.
		switch c.Action {
		case api.AssignmentActionUpdate:
			updates[t.ID] = t
			delete(removes, t.ID)
		case api.AssignmentActionRemove:
			removes[t.ID] = true
			delete(updates, t.ID)
		}
	}
	if m.Type == api.AssignmentsComplete {
		for id := range w.tasks {
			if updates[id] == nil {
				removes[id] = true
			}
		}
	}

	// Record what changed before acting on it.
	var changed []*api.Task
	for id, t := range updates {
		if e := w.tasks[id]; e != nil && (e.removing || sameRecord(e.record, t)) {
			continue
		}
		changed = append(changed, t)
	}
	if err := w.store.Put(changed...); err != nil {
		return fmt.Errorf("record assigned tasks: %w", err)
	}
	added := 0
	for _, t := range changed {
		if e := w.tasks[t.ID]; e != nil {
			e.record = t
			e.tm.update(t.Copy())
			continue
		}
		e := &taskEntry{tm: newTaskManager(w, t), record: t}
		w.tasks[t.ID] = e
		start(e)
		added++
	}
	removing := 0
	for id := range removes {
		if e := w.tasks[id]; e != nil && !e.removing {
			e.removing = true
			e.tm.remove()
			removing++
		}
	}
	kind := "incremental"
	if m.Type == api.AssignmentsComplete {
		kind = "complete"
	}
	w.log.Debug("assignments applied", "type", kind, "new", added, "updated", len(changed)-added, "removed", removing, "tasks", len(w.tasks))
	return nil
}

// forget drops removed tasks: from the task DB, the set, the reporter.
func (w *worker) forget(ids []string) {
	if err := w.store.Delete(ids...); err != nil {
		// They come back with the next start, and are removed again.
		w.log.Error("cannot delete removed tasks from the task DB", "tasks", len(ids), "error", err)
	}
	for _, id := range ids {
		delete(w.tasks, id)
		w.rep.forget(id)
	}
}

// sameRecord reports whether two records of a task differ only in what the
// agent does not act on: the status (the agent's own) and the store's
// metadata.
func sameRecord(a, b *api.Task) bool {
	x, y := *a, *b
	x.Status, y.Status = api.TaskStatus{}, api.TaskStatus{}
	x.Meta, y.Meta = api.Meta{}, api.Meta{}
	return reflect.DeepEqual(&x, &y)
}
