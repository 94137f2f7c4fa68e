package exec

import (
	"context"
	"errors"
	"fmt"

	"github.com/gogo/protobuf/types"

	"github.com/flotilla/flotilla/api"
)

// Controller drives one task on the node. The agent calls its methods from
// one goroutine at a time, through Do, except Close which it calls last.
//
// Every method must be idempotent: the agent may repeat a step after a
// retry or a restart (its task DB says PREPARING: Prepare again; STARTING:
// Start again), and a controller made for a task that already runs (after an
// agent restart) must adopt it.
type Controller interface {
	// Prepare makes everything the task needs to start: pulls the image,
	// creates the container. It returns ErrTaskPrepared if that was done
	// already. Any other error, unless Temporary, rejects the task.
	Prepare(ctx context.Context) error
	// Start starts the prepared task, and returns ErrTaskStarted if it runs
	// already. Any other error, unless Temporary, fails the task.
	Start(ctx context.Context) error
	// Wait blocks until the task exits and returns nil for exit code 0, an
	// *ExitError for any other code, or another error if the task was lost.
	// When ctx ends first it returns ctx's error and the task keeps
	// running; Wait is called again later, possibly on a new controller.
	Wait(ctx context.Context) error
	// Shutdown stops the task gracefully (its stop signal, then a kill after
	// the stop grace period) and returns once it stopped. It returns nil
	// for a task that is not running (never started, exited).
	Shutdown(ctx context.Context) error
	// Terminate kills the task at once; nil for a task that is not running.
	// Do uses it when Shutdown fails.
	Terminate(ctx context.Context) error
	// Remove deletes what Prepare made, once the task is stopped; nil if
	// there is nothing to remove.
	Remove(ctx context.Context) error
	// Close releases the controller's own resources (connections,
	// watchers). It neither stops nor removes the task: an agent that stops
	// closes its controllers and leaves the tasks running.
	Close() error
}

// Progresser is an optional Controller capability: Progress registers fn to
// receive human-readable progress of a long step ("pulling image ...: 2
// layers (1.9 MiB)"), which the agent reports as the task's status message
// while the step runs; Progress(nil) unregisters it. fn is called from the
// step's goroutine or one of the controller's, never concurrently.
type Progresser interface {
	Progress(fn func(message string))
}

// PortStatuser is an optional Controller capability: the ports the task
// publishes on its node (host-mode ports with the number chosen for those
// the spec left 0), reported in TaskStatus.PortStatus from STARTING on.
type PortStatuser interface {
	PortStatus(ctx context.Context) (*api.PortStatus, error)
}

// ContainerStatuser is an optional Controller capability: the task's
// container ID and PID, reported in TaskStatus.ContainerStatus from STARTING
// on. Do fills in the exit code itself.
type ContainerStatuser interface {
	ContainerStatus(ctx context.Context) (*api.ContainerStatus, error)
}

var (
	// ErrTaskPrepared is returned by Prepare when the task was prepared
	// already; Do treats it as success.
	ErrTaskPrepared = errors.New("task already prepared")
	// ErrTaskStarted is returned by Start when the task runs already; Do
	// treats it as success.
	ErrTaskStarted = errors.New("task already started")
	// ErrTaskNoop is returned by Do when the task is where its desired state
	// wants it (or past it, or in a terminal state): nothing to do until the
	// desired state changes.
	ErrTaskNoop = errors.New("no transition to make for the task")
	// ErrTaskRetry is returned by Do when a step could not be done for now:
	// ctx ended, or the controller returned a Temporary error (the returned
	// status then carries it in Err). Call Do again later.
	ErrTaskRetry = errors.New("task step to be retried")
)

// ExitError is what Wait returns for a task that exited with a non-zero
// code.
type ExitError struct {
	Code int
	// Cause, if set, says why (e.g. killed by the kernel for lack of memory).
	Cause error
}

func (e *ExitError) Error() string {
	if e.Cause != nil {
		return fmt.Sprintf("task exited with code %d: %v", e.Code, e.Cause)
	}
	return fmt.Sprintf("task exited with code %d", e.Code)
}

func (e *ExitError) Unwrap() error { return e.Cause }

// Temporary marks err as temporary (the container runtime is unreachable,
// say): Do reports it in the status's Err and asks for a retry instead of
// rejecting or failing the task.
func Temporary(err error) error {
	if err == nil {
		return nil
	}
	return temporaryError{err}
}

// IsTemporary reports whether err, or an error it wraps, is temporary.
func IsTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

type temporaryError struct{ error }

func (e temporaryError) Temporary() bool { return true }
func (e temporaryError) Unwrap() error   { return e.error }

// Do advances task t by at most one step towards its desired state, using
// ctlr, and returns the task's new status. It never moves the state
// backwards. The returned status is a new value: t is not modified.
//
// With DesiredState RUNNING (or any state up to COMPLETE) the task goes
//
//	ASSIGNED -> ACCEPTED -> PREPARING -(Prepare)-> READY -> STARTING -(Start)->
//	RUNNING -(Wait)-> COMPLETE (exit 0) | FAILED (exit code in ContainerStatus)
//
// one arrow per call; a Prepare that fails REJECTS the task, a Start that
// fails FAILS it. A task stops before the desired state (DesiredState READY:
// prepared but not started) except in PREPARING, STARTING and RUNNING, whose
// action is always carried through.
//
// With DesiredState SHUTDOWN or REMOVE a task that has not exited is shut
// down (Shutdown, or Terminate if that fails) and goes to SHUTDOWN; one
// never prepared goes there without a call to ctlr.
//
// Do returns a nil error after a transition, ErrTaskNoop when there is
// nothing to do (terminal state, or desired state reached), and ErrTaskRetry
// when ctx ended during a step or the controller returned a Temporary error.
// Failures of the task itself are statuses (REJECTED, FAILED), not errors.
func Do(ctx context.Context, t *api.Task, ctlr Controller) (*api.TaskStatus, error) {
	s := &step{ctx: ctx, task: t, ctlr: ctlr, status: t.Status.Copy()}
	cur := t.Status.State

	if t.DesiredState >= api.TaskStateShutdown {
		return s.shutdown()
	}
	if cur >= api.TaskStateCompleted {
		return s.noop()
	}

	// Steps under way are carried through whatever the desired state (up to
	// COMPLETE): they stand for an action already begun.
	switch cur {
	case api.TaskStatePreparing:
		if err := ctlr.Prepare(ctx); err != nil && !errors.Is(err, ErrTaskPrepared) {
			return s.fatal(err)
		}
		return s.transition(api.TaskStateReady, "prepared")
	case api.TaskStateStarting:
		if err := ctlr.Start(ctx); err != nil && !errors.Is(err, ErrTaskStarted) {
			return s.fatal(err)
		}
		return s.transition(api.TaskStateRunning, "started")
	case api.TaskStateRunning:
		if err := ctlr.Wait(ctx); err != nil {
			var exit *ExitError
			if !errors.As(err, &exit) || exit.Code != 0 || exit.Cause != nil {
				return s.fatal(err)
			}
		}
		s.exitCode = new(int32) // 0
		return s.transition(api.TaskStateCompleted, "finished")
	}

	// The others wait for a desired state past them.
	if cur >= t.DesiredState {
		return s.noop()
	}
	switch cur {
	case api.TaskStateNew, api.TaskStatePending, api.TaskStateAssigned:
		return s.transition(api.TaskStateAccepted, "accepted")
	case api.TaskStateAccepted:
		return s.transition(api.TaskStatePreparing, "preparing")
	case api.TaskStateReady:
		return s.transition(api.TaskStateStarting, "starting")
	}
	return s.noop()
}

// step is one call of Do.
type step struct {
	ctx      context.Context
	task     *api.Task
	ctlr     Controller
	status   *api.TaskStatus // what Do returns, built from the task's
	exitCode *int32          // set when the task exited with a known code
}

func (s *step) shutdown() (*api.TaskStatus, error) {
	cur := s.task.Status.State
	switch {
	case cur >= api.TaskStateCompleted:
		return s.noop()
	case cur < api.TaskStatePreparing:
		return s.transition(api.TaskStateShutdown, "shut down before it was prepared")
	}
	err := s.ctlr.Shutdown(s.ctx)
	if err == nil {
		return s.transition(api.TaskStateShutdown, "shutdown")
	}
	if s.cancelled(err) {
		return s.retry()
	}
	if IsTemporary(err) {
		s.status.Err = fmt.Sprintf("shut down: %v", err)
		return s.retry()
	}
	kerr := s.ctlr.Terminate(s.ctx)
	if kerr == nil {
		return s.transition(api.TaskStateShutdown, fmt.Sprintf("killed: graceful shutdown failed: %v", err))
	}
	if s.cancelled(kerr) {
		return s.retry()
	}
	// Never report a task stopped while it may still run.
	s.status.Err = fmt.Sprintf("shut down: %v; kill: %v", err, kerr)
	return s.retry()
}

// transition moves the task to state, forward only.
func (s *step) transition(state api.TaskState, msg string) (*api.TaskStatus, error) {
	if state <= s.task.Status.State {
		return s.noop()
	}
	s.status.State = state
	s.status.Message = msg
	s.status.Err = ""
	s.finish()
	return s.status, nil
}

// fatal ends the task in REJECTED (it never started) or FAILED because of
// err, unless err is temporary or ctx ended.
func (s *step) fatal(err error) (*api.TaskStatus, error) {
	if s.cancelled(err) {
		return s.retry()
	}
	if IsTemporary(err) {
		s.status.Err = err.Error()
		return s.retry()
	}
	var exit *ExitError
	if errors.As(err, &exit) {
		code := int32(exit.Code)
		s.exitCode = &code
	}
	if s.task.Status.State < api.TaskStateStarting {
		s.status.State, s.status.Message = api.TaskStateRejected, "rejected"
	} else {
		s.status.State, s.status.Message = api.TaskStateFailed, "failed"
	}
	s.status.Err = err.Error()
	s.finish()
	return s.status, nil
}

// noop returns the task's status unchanged.
func (s *step) noop() (*api.TaskStatus, error) {
	return s.task.Status.Copy(), ErrTaskNoop
}

// retry keeps the state; the status carries a new Err if one was set.
func (s *step) retry() (*api.TaskStatus, error) {
	s.status.State = s.task.Status.State
	if s.status.Err != s.task.Status.Err {
		s.status.Timestamp = types.TimestampNow()
	}
	return s.status, ErrTaskRetry
}

// cancelled reports whether err comes from ctx ending rather than the task.
func (s *step) cancelled(err error) bool {
	return s.ctx.Err() != nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// finish stamps a changed status and fills in the container status from
// STARTING on.
func (s *step) finish() {
	s.status.Timestamp = types.TimestampNow()
	if s.status.State < api.TaskStateStarting {
		return
	}
	if p, ok := s.ctlr.(PortStatuser); ok && s.status.PortStatus == nil {
		if ps, err := p.PortStatus(s.ctx); err == nil && ps != nil {
			s.status.PortStatus = ps.Copy()
		}
	}
	cs := s.status.ContainerStatus
	if c, ok := s.ctlr.(ContainerStatuser); ok {
		if got, err := c.ContainerStatus(s.ctx); err == nil && got != nil {
			cs = got.Copy()
			if prev := s.status.ContainerStatus; prev != nil && s.exitCode == nil {
				cs.ExitCode = prev.ExitCode
			}
		}
	}
	if s.exitCode != nil {
		if cs == nil {
			cs = &api.ContainerStatus{}
		}
		cs.ExitCode = *s.exitCode
	}
	s.status.ContainerStatus = cs
}
