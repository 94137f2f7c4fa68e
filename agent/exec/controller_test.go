package exec

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/gogo/protobuf/types"

	"github.com/flotilla/flotilla/api"
)

// fakeController answers each call with the error set for it and records
// the calls.
type fakeController struct {
	errs  map[string]error
	calls []string
	cs    *api.ContainerStatus // returned by ContainerStatus when the fake is a ContainerStatuser
}

func (c *fakeController) call(name string) error {
	c.calls = append(c.calls, name)
	return c.errs[name]
}

func (c *fakeController) Prepare(context.Context) error   { return c.call("prepare") }
func (c *fakeController) Start(context.Context) error     { return c.call("start") }
func (c *fakeController) Wait(context.Context) error      { return c.call("wait") }
func (c *fakeController) Shutdown(context.Context) error  { return c.call("shutdown") }
func (c *fakeController) Terminate(context.Context) error { return c.call("terminate") }
func (c *fakeController) Remove(context.Context) error    { return c.call("remove") }
func (c *fakeController) Close() error                    { return c.call("close") }

type statuserController struct{ *fakeController }

func (c statuserController) ContainerStatus(context.Context) (*api.ContainerStatus, error) {
	return c.cs, nil
}

var (
	errBoom    = errors.New("boom")
	errKill    = errors.New("cannot kill")
	errDown    = errors.New("containerd unreachable")
	stamp      = &types.Timestamp{Seconds: 1000}
	allStates  = []api.TaskState{api.TaskStateNew, api.TaskStatePending, api.TaskStateAssigned, api.TaskStateAccepted, api.TaskStatePreparing, api.TaskStateReady, api.TaskStateStarting, api.TaskStateRunning, api.TaskStateCompleted, api.TaskStateShutdown, api.TaskStateFailed, api.TaskStateRejected, api.TaskStateOrphaned}
	allDesired = []api.TaskState{api.TaskStateReady, api.TaskStateRunning, api.TaskStateCompleted, api.TaskStateShutdown, api.TaskStateRemove}
)

func task(state, desired api.TaskState) *api.Task {
	return &api.Task{
		ID:           "t1",
		DesiredState: desired,
		Status:       api.TaskStatus{State: state, Message: "before", Timestamp: stamp},
	}
}

func TestDoAdvancesOneStepAtATime(t *testing.T) {
	const (
		running  = api.TaskStateRunning
		shutdown = api.TaskStateShutdown
		remove   = api.TaskStateRemove
		ready    = api.TaskStateReady
	)
	for _, tc := range []struct {
		name     string
		state    api.TaskState
		desired  api.TaskState
		errs     map[string]error
		want     api.TaskState
		wantErr  error    // nil, ErrTaskNoop or ErrTaskRetry
		wantMsg  string   // substring of Message, if set
		wantE    string   // substring of Err; "" = Err empty
		calls    []string // controller calls, in order
		exitCode *int32   // ContainerStatus.ExitCode wanted, nil = no ContainerStatus
	}{
		// Forward to RUNNING.
		{name: "new is accepted", state: api.TaskStateNew, desired: running, want: api.TaskStateAccepted},
		{name: "pending is accepted", state: api.TaskStatePending, desired: running, want: api.TaskStateAccepted},
		{name: "assigned is accepted", state: api.TaskStateAssigned, desired: running, want: api.TaskStateAccepted, wantMsg: "accepted"},
		{name: "accepted starts preparing", state: api.TaskStateAccepted, desired: running, want: api.TaskStatePreparing},
		{name: "preparing prepares", state: api.TaskStatePreparing, desired: running, want: ready, calls: []string{"prepare"}},
		{name: "prepared already", state: api.TaskStatePreparing, desired: running, errs: map[string]error{"prepare": fmt.Errorf("image there: %w", ErrTaskPrepared)}, want: ready, calls: []string{"prepare"}},
		{name: "ready starts", state: ready, desired: running, want: api.TaskStateStarting},
		{name: "starting starts", state: api.TaskStateStarting, desired: running, want: running, calls: []string{"start"}, wantMsg: "started"},
		{name: "started already", state: api.TaskStateStarting, desired: running, errs: map[string]error{"start": ErrTaskStarted}, want: running, calls: []string{"start"}},
		{name: "exit 0 completes", state: running, desired: running, want: api.TaskStateCompleted, calls: []string{"wait"}, exitCode: ptr(0)},
		{name: "exit error with code 0 completes", state: running, desired: running, errs: map[string]error{"wait": &ExitError{Code: 0}}, want: api.TaskStateCompleted, calls: []string{"wait"}, exitCode: ptr(0)},

		// Failures.
		{name: "prepare failure rejects", state: api.TaskStatePreparing, desired: running, errs: map[string]error{"prepare": errBoom}, want: api.TaskStateRejected, wantE: "boom", calls: []string{"prepare"}},
		{name: "start failure fails", state: api.TaskStateStarting, desired: running, errs: map[string]error{"start": errBoom}, want: api.TaskStateFailed, wantE: "boom", calls: []string{"start"}},
		{name: "non-zero exit fails with the code", state: running, desired: running, errs: map[string]error{"wait": fmt.Errorf("wait: %w", &ExitError{Code: 3})}, want: api.TaskStateFailed, wantE: "exited with code 3", calls: []string{"wait"}, exitCode: ptr(3)},
		{name: "lost task fails", state: running, desired: running, errs: map[string]error{"wait": errBoom}, want: api.TaskStateFailed, wantE: "boom", calls: []string{"wait"}},

		// Retries: the state stays.
		{name: "temporary prepare error", state: api.TaskStatePreparing, desired: running, errs: map[string]error{"prepare": Temporary(errDown)}, want: api.TaskStatePreparing, wantErr: ErrTaskRetry, wantE: "unreachable", calls: []string{"prepare"}},
		{name: "temporary start error", state: api.TaskStateStarting, desired: running, errs: map[string]error{"start": fmt.Errorf("start: %w", Temporary(errDown))}, want: api.TaskStateStarting, wantErr: ErrTaskRetry, wantE: "unreachable", calls: []string{"start"}},
		{name: "cancelled prepare", state: api.TaskStatePreparing, desired: running, errs: map[string]error{"prepare": context.Canceled}, want: api.TaskStatePreparing, wantErr: ErrTaskRetry, calls: []string{"prepare"}},
		{name: "cancelled wait", state: running, desired: running, errs: map[string]error{"wait": fmt.Errorf("wait: %w", context.Canceled)}, want: running, wantErr: ErrTaskRetry, calls: []string{"wait"}},
		{name: "deadline on start", state: api.TaskStateStarting, desired: running, errs: map[string]error{"start": context.DeadlineExceeded}, want: api.TaskStateStarting, wantErr: ErrTaskRetry, calls: []string{"start"}},

		// Desired READY: prepared, not started.
		{name: "ready waits for running", state: ready, desired: ready, want: ready, wantErr: ErrTaskNoop},
		{name: "preparing carries through", state: api.TaskStatePreparing, desired: api.TaskStateAccepted, want: ready, calls: []string{"prepare"}},
		{name: "accepted waits for a later desired state", state: api.TaskStateAccepted, desired: api.TaskStateAccepted, want: api.TaskStateAccepted, wantErr: ErrTaskNoop},

		// Terminal states stay.
		{name: "complete stays", state: api.TaskStateCompleted, desired: running, want: api.TaskStateCompleted, wantErr: ErrTaskNoop},
		{name: "failed stays", state: api.TaskStateFailed, desired: running, want: api.TaskStateFailed, wantErr: ErrTaskNoop},
		{name: "rejected stays", state: api.TaskStateRejected, desired: running, want: api.TaskStateRejected, wantErr: ErrTaskNoop},
		{name: "shutdown stays", state: api.TaskStateShutdown, desired: running, want: api.TaskStateShutdown, wantErr: ErrTaskNoop},
		{name: "orphaned stays", state: api.TaskStateOrphaned, desired: running, want: api.TaskStateOrphaned, wantErr: ErrTaskNoop},

		// Shutdown.
		{name: "shutdown while running", state: running, desired: shutdown, want: shutdown, calls: []string{"shutdown"}, wantMsg: "shutdown"},
		{name: "remove while running", state: running, desired: remove, want: shutdown, calls: []string{"shutdown"}},
		{name: "shutdown while preparing", state: api.TaskStatePreparing, desired: shutdown, want: shutdown, calls: []string{"shutdown"}},
		{name: "shutdown before preparing", state: api.TaskStateAccepted, desired: shutdown, want: shutdown},
		{name: "shutdown when assigned", state: api.TaskStateAssigned, desired: remove, want: shutdown},
		{name: "shutdown after exit", state: api.TaskStateCompleted, desired: shutdown, want: api.TaskStateCompleted, wantErr: ErrTaskNoop},
		{name: "shutdown after failure", state: api.TaskStateFailed, desired: remove, want: api.TaskStateFailed, wantErr: ErrTaskNoop},
		{name: "shutdown twice", state: shutdown, desired: shutdown, want: shutdown, wantErr: ErrTaskNoop},
		{name: "failed shutdown kills", state: running, desired: shutdown, errs: map[string]error{"shutdown": errBoom}, want: shutdown, wantMsg: "killed", calls: []string{"shutdown", "terminate"}},
		{name: "failed kill retries", state: running, desired: shutdown, errs: map[string]error{"shutdown": errBoom, "terminate": errKill}, want: running, wantErr: ErrTaskRetry, wantE: "cannot kill", calls: []string{"shutdown", "terminate"}},
		{name: "temporary shutdown error retries", state: running, desired: shutdown, errs: map[string]error{"shutdown": Temporary(errDown)}, want: running, wantErr: ErrTaskRetry, wantE: "unreachable", calls: []string{"shutdown"}},
		{name: "cancelled shutdown retries", state: running, desired: shutdown, errs: map[string]error{"shutdown": context.Canceled}, want: running, wantErr: ErrTaskRetry, calls: []string{"shutdown"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctlr := &fakeController{errs: tc.errs}
			in := task(tc.state, tc.desired)
			orig := in.Copy()
			st, err := Do(context.Background(), in, ctlr)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Fatalf("Do error = %v, want %v", err, tc.wantErr)
			}
			if st.State != tc.want {
				t.Errorf("state = %s, want %s", st.State, tc.want)
			}
			if tc.wantMsg != "" && !strings.Contains(st.Message, tc.wantMsg) {
				t.Errorf("message = %q, want it to say %q", st.Message, tc.wantMsg)
			}
			if (tc.wantE == "") != (st.Err == "") || !strings.Contains(st.Err, tc.wantE) {
				t.Errorf("err = %q, want %q", st.Err, tc.wantE)
			}
			if !slices.Equal(ctlr.calls, tc.calls) {
				t.Errorf("controller calls = %v, want %v", ctlr.calls, tc.calls)
			}
			switch {
			case tc.exitCode == nil && st.ContainerStatus != nil:
				t.Errorf("container status = %v, want none", st.ContainerStatus)
			case tc.exitCode != nil && st.ContainerStatus.GetExitCode() != *tc.exitCode:
				t.Errorf("container status = %v, want exit code %d", st.ContainerStatus, *tc.exitCode)
			case tc.exitCode != nil && st.ContainerStatus == nil:
				t.Errorf("no container status, want exit code %d", *tc.exitCode)
			}
			changed := st.State != orig.Status.State || st.Message != orig.Status.Message || st.Err != orig.Status.Err
			if stamped := !st.Timestamp.Equal(stamp); stamped != changed {
				t.Errorf("timestamp %v (before %v) with status changed = %v: want a new one exactly when the status changes", st.Timestamp, stamp, changed)
			}
			if !reflect.DeepEqual(in, orig) {
				t.Errorf("Do modified its task: %v, was %v", in, orig)
			}
		})
	}
}

func ptr(v int32) *int32 { return &v }

// TestDoNeverMovesBackwards runs Do from every state towards every desired
// state with every controller outcome.
func TestDoNeverMovesBackwards(t *testing.T) {
	outcomes := map[string]map[string]error{
		"success":   nil,
		"failure":   {"prepare": errBoom, "start": errBoom, "wait": errBoom, "shutdown": errBoom, "terminate": errBoom},
		"exit":      {"wait": &ExitError{Code: 137}},
		"temporary": {"prepare": Temporary(errDown), "start": Temporary(errDown), "wait": Temporary(errDown), "shutdown": Temporary(errDown)},
		"cancelled": {"prepare": context.Canceled, "start": context.Canceled, "wait": context.Canceled, "shutdown": context.Canceled},
		"adopted":   {"prepare": ErrTaskPrepared, "start": ErrTaskStarted},
	}
	for name, errs := range outcomes {
		for _, state := range allStates {
			for _, desired := range allDesired {
				st, err := Do(context.Background(), task(state, desired), &fakeController{errs: errs})
				if st.State < state {
					t.Errorf("%s: %s towards %s went back to %s", name, state, desired, st.State)
				}
				if err == nil && st.State == state {
					t.Errorf("%s: %s towards %s: no transition but no ErrTaskNoop/ErrTaskRetry either", name, state, desired)
				}
				if desired >= api.TaskStateShutdown && state <= api.TaskStateRunning && err == nil && st.State != api.TaskStateShutdown {
					t.Errorf("%s: %s towards %s went to %s, want SHUTDOWN", name, state, desired, st.State)
				}
			}
		}
	}
}

// TestDoDrivesATaskToRunningAndShutdown loops Do as the agent does.
func TestDoDrivesATaskToRunningAndShutdown(t *testing.T) {
	tk := task(api.TaskStateAssigned, api.TaskStateRunning)
	ctlr := &fakeController{errs: map[string]error{"wait": context.Canceled}}
	var states []api.TaskState
	for range 20 {
		st, err := Do(context.Background(), tk, ctlr)
		if err != nil {
			break
		}
		tk.Status = *st
		states = append(states, st.State)
	}
	want := []api.TaskState{api.TaskStateAccepted, api.TaskStatePreparing, api.TaskStateReady, api.TaskStateStarting, api.TaskStateRunning}
	if !slices.Equal(states, want) {
		t.Fatalf("states = %v, want %v", states, want)
	}
	tk.DesiredState = api.TaskStateShutdown
	st, err := Do(context.Background(), tk, ctlr)
	if err != nil || st.State != api.TaskStateShutdown {
		t.Fatalf("Do = %s, %v after desired SHUTDOWN, want SHUTDOWN", st.State, err)
	}
	if want := []string{"prepare", "start", "wait", "shutdown"}; !slices.Equal(ctlr.calls, want) {
		t.Errorf("controller calls = %v, want %v", ctlr.calls, want)
	}
}

func TestDoClearsATemporaryErrorOnTheNextTransition(t *testing.T) {
	tk := task(api.TaskStatePreparing, api.TaskStateRunning)
	ctlr := &fakeController{errs: map[string]error{"prepare": Temporary(errDown)}}
	st, err := Do(context.Background(), tk, ctlr)
	if !errors.Is(err, ErrTaskRetry) || st.Err == "" {
		t.Fatalf("Do = %v (err %q), want a retry with Err set", err, st.Err)
	}
	tk.Status = *st
	ctlr.errs = nil
	st, err = Do(context.Background(), tk, ctlr)
	if err != nil || st.State != api.TaskStateReady || st.Err != "" {
		t.Errorf("Do = %s %q %v, want READY with no Err", st.State, st.Err, err)
	}
}

func TestDoReportsTheContainerStatusFromStarting(t *testing.T) {
	ctlr := statuserController{&fakeController{cs: &api.ContainerStatus{ContainerID: "c1", PID: 42}}}

	st, _ := Do(context.Background(), task(api.TaskStateAccepted, api.TaskStateRunning), ctlr)
	if st.ContainerStatus != nil {
		t.Errorf("PREPARING carries container status %v, want none before STARTING", st.ContainerStatus)
	}
	st, _ = Do(context.Background(), task(api.TaskStateStarting, api.TaskStateRunning), ctlr)
	if cs := st.ContainerStatus; cs.GetContainerID() != "c1" || cs.GetPID() != 42 {
		t.Errorf("RUNNING container status = %v, want c1 pid 42", cs)
	}
	ctlr.errs = map[string]error{"wait": &ExitError{Code: 2}}
	st, _ = Do(context.Background(), task(api.TaskStateRunning, api.TaskStateRunning), ctlr)
	if cs := st.ContainerStatus; cs.GetContainerID() != "c1" || cs.GetExitCode() != 2 {
		t.Errorf("FAILED container status = %v, want c1 with exit code 2", cs)
	}
	if ctlr.cs.ExitCode != 0 {
		t.Error("Do modified the controller's container status")
	}
}

func TestTemporaryAndExitErrorsWrap(t *testing.T) {
	if IsTemporary(errBoom) || !IsTemporary(fmt.Errorf("x: %w", Temporary(errBoom))) {
		t.Error("IsTemporary does not see through wrapping")
	}
	if !errors.Is(Temporary(errBoom), errBoom) {
		t.Error("Temporary hides its cause from errors.Is")
	}
	if Temporary(nil) != nil {
		t.Error("Temporary(nil) != nil")
	}
	oom := errors.New("out of memory")
	if e := (&ExitError{Code: 137, Cause: oom}); !errors.Is(e, oom) || !strings.Contains(e.Error(), "137") {
		t.Errorf("ExitError %q does not carry its code and cause", e)
	}
}
