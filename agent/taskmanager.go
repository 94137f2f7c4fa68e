package agent

import (
	"context"
	"errors"
	"log/slog"
	"reflect"
	"sync"

	"github.com/gogo/protobuf/types"

	"github.com/flotilla/flotilla/agent/exec"
	"github.com/flotilla/flotilla/api"
)

// taskManager runs one task: a goroutine that calls exec.Do until the task
// reaches its desired state or a terminal state, records each new status in
// the task DB and hands it to the reporter, and starts again when the
// dispatcher changes the task. An exec.Do under way (a Wait, typically) is
// interrupted when the desired state changes, not for other changes.
//
// A task being removed (REMOVE from the dispatcher, or absent from a
// COMPLETE set) is driven to a terminal state with desired state REMOVE
// (shut down: SHUTDOWN is reported), then its controller's Remove is called
// (retried until it succeeds), and the worker forgets it.
//
// When ctx ends the manager returns without touching the task: it keeps
// running, and a restarted agent finds it in its task DB.
type taskManager struct {
	id      string
	w       *worker
	log     *slog.Logger
	changed chan struct{} // next or removing changed (capacity 1)
	done    chan struct{} // closed when run returned

	mu       sync.Mutex
	next     *api.Task // a newer record from the dispatcher, not taken yet
	removing bool

	// Owned by run.
	task   *api.Task
	ctlr   exec.Controller
	health *healthWatch // while the task runs with a health check (health.go)
	// healthNone: the running task has no health check (asked once).
	healthNone bool
}

func newTaskManager(w *worker, t *api.Task) *taskManager {
	return &taskManager{
		id:      t.ID,
		w:       w,
		log:     w.log.With("task.id", t.ID, "service.id", t.ServiceID),
		changed: make(chan struct{}, 1),
		done:    make(chan struct{}),
		task:    t.Copy(),
	}
}

// update hands the manager a newer record of its task (it keeps t).
func (tm *taskManager) update(t *api.Task) {
	tm.mu.Lock()
	tm.next = t
	tm.mu.Unlock()
	notify(tm.changed)
}

// remove has the manager shut its task down and remove it.
func (tm *taskManager) remove() {
	tm.mu.Lock()
	tm.removing = true
	tm.mu.Unlock()
	notify(tm.changed)
}

// takeChanges applies what update and remove left; it reports whether the
// desired state changed, and whether the task is being removed.
func (tm *taskManager) takeChanges() (desiredChanged, removing bool) {
	tm.mu.Lock()
	next, removing := tm.next, tm.removing
	tm.next = nil
	tm.mu.Unlock()

	before := tm.task.DesiredState
	if next != nil {
		// The record is the dispatcher's; the status is ours.
		next.Status = tm.task.Status
		tm.task = next
	}
	if removing {
		tm.task.DesiredState = api.TaskStateRemove
	}
	return tm.task.DesiredState != before, removing
}

func (tm *taskManager) run(ctx context.Context) {
	defer close(tm.done)
	ctlr, err := tm.w.executor.Controller(tm.task.Copy())
	if err != nil {
		tm.log.Warn("cannot run task on this node", "error", err)
		ctlr = failedController{err}
	}
	tm.ctlr = ctlr
	tm.w.logs.add(tm.task, ctlr)
	defer func() {
		tm.w.logs.remove(tm.id) // waits for its Logs calls
		if err := tm.ctlr.Close(); err != nil {
			tm.log.Debug("close task controller", "error", err)
		}
	}()
	defer tm.stopHealth() // before Close

	var (
		idle    bool // Do had nothing to do: wait for a change
		settled bool // ... and the task is terminal with desired state SHUTDOWN or REMOVE
		retries int  // consecutive retries of a step
		slept   bool // the wait before the next retry is over
	)
	for {
		changed, removing := tm.takeChanges()
		if changed {
			idle, retries = false, 0
		}
		if idle {
			if removing && settled {
				if tm.removeTask(ctx) {
					select {
					case tm.w.removed <- tm.id:
					case <-ctx.Done():
					}
				}
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-tm.changed:
			}
			continue
		}
		if retries > 0 && !slept {
			// A change cuts the wait short.
			if !sleepReal(ctx, retryWait(retries-1), tm.changed) {
				return
			}
			slept = true
			continue
		}
		slept = false

		status, desired, interrupted, err := tm.step(ctx)
		if !reflect.DeepEqual(status, &tm.task.Status) {
			tm.record(status)
		}
		if ctx.Err() != nil {
			return
		}
		switch {
		case err == nil:
			retries = 0
		case interrupted:
			retries = 0 // the desired state changed meanwhile: go on at once
		case errors.Is(err, exec.ErrTaskNoop):
			idle, retries = true, 0
			settled = desired >= api.TaskStateShutdown
		default:
			retries++
			if retries == 1 || retries%10 == 0 {
				tm.log.Debug("task step to be retried", "state", tm.task.Status.State, "retries", retries, "error", tm.task.Status.Err)
			}
		}
	}
}

// step runs one exec.Do, interrupting it if the desired state changes
// meanwhile (interrupted says it did). desired is the desired state Do was
// given.
func (tm *taskManager) step(ctx context.Context) (st *api.TaskStatus, desired api.TaskState, interrupted bool, err error) {
	opCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		st  *api.TaskStatus
		err error
	}
	res := make(chan result, 1)
	// A shallow copy is enough: Do only reads the task (it copies the status
	// it changes), and takeChanges and record, which may run meanwhile,
	// replace tm.task's top-level fields, never what they point to. A deep
	// copy per step was a tenth of the scale simulator's CPU.
	task := new(api.Task)
	*task = *tm.task
	ctlr := tm.watchHealth(ctx, task)
	defer tm.reportProgress(task.Status)()
	go func() {
		st, err := exec.Do(opCtx, task, ctlr)
		res <- result{st, err}
	}()
	for {
		select {
		case r := <-res:
			tm.withHealth(r.st)
			return r.st, task.DesiredState, interrupted, r.err
		case <-tm.healthChanged():
			tm.recordHealth()
		case <-tm.changed:
			changed, removing := tm.takeChanges()
			if (changed || removing) && !interrupted {
				interrupted = true
				cancel()
			}
		}
	}
}

// reportProgress has the controller's progress messages (a pull under way)
// reported as the status message of a PREPARING step, and returns the
// function that ends that when the step returns. The reports go to the
// reporter only (not the task DB); none comes after the step's own result.
func (tm *taskManager) reportProgress(base api.TaskStatus) (end func()) {
	p, ok := tm.ctlr.(exec.Progresser)
	if !ok || base.State != api.TaskStatePreparing {
		return func() {}
	}
	var (
		mu   sync.Mutex
		done bool
	)
	p.Progress(func(msg string) {
		mu.Lock()
		defer mu.Unlock()
		if done || msg == "" {
			return
		}
		st := base.Copy()
		st.Message = msg
		st.Timestamp = types.TimestampNow()
		tm.w.rep.update(tm.id, st)
	})
	return func() {
		p.Progress(nil)
		mu.Lock()
		done = true
		mu.Unlock()
	}
}

// record makes st the task's status: in the task DB, then to the reporter.
func (tm *taskManager) record(st *api.TaskStatus) {
	tm.task.Status = *st
	if err := tm.w.store.PutStatus(tm.id, st); err != nil {
		tm.log.Error("cannot record task status in the task DB", "state", st.State, "error", err)
	}
	tm.w.rep.update(tm.id, st.Copy())
	tm.log.Debug("task status", "state", st.State, "message", st.Message, "error", st.Err)
}

// removeTask removes what the task left on the node, retrying until it
// succeeds or ctx ends (then false: the task stays in the task DB, and a
// restarted agent removes it).
func (tm *taskManager) removeTask(ctx context.Context) bool {
	for attempt := 0; ; attempt++ {
		err := tm.ctlr.Remove(ctx)
		if err == nil {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		wait := retryWait(attempt)
		tm.log.Warn("cannot remove task", "error", err, "retry_in", wait)
		if !sleepReal(ctx, wait, nil) {
			return false
		}
	}
}

// failedController stands for a task the executor could not make a
// controller for: preparing it fails (the task is rejected), waiting for it
// too (a task that was running is failed), stopping and removing it do
// nothing.
type failedController struct{ err error }

func (c failedController) Prepare(context.Context) error   { return c.err }
func (c failedController) Start(context.Context) error     { return c.err }
func (c failedController) Wait(context.Context) error      { return c.err }
func (c failedController) Shutdown(context.Context) error  { return nil }
func (c failedController) Terminate(context.Context) error { return nil }
func (c failedController) Remove(context.Context) error    { return nil }
func (c failedController) Close() error                    { return nil }
