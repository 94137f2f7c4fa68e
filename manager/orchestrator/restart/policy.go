package restart

import (
	"time"

	gogoproto "github.com/gogo/protobuf/proto"
	"github.com/gogo/protobuf/types"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/api/defaults"
	"github.com/flotilla/flotilla/manager/orchestrator"
)

// decide reports whether the ended task t is to be replaced, given the
// tasks of its slot (history), and if not, why. It is a pure function of
// stored state, so every leader decides alike for the same task:
//
//   - condition NONE: never; ON_FAILURE: unless t completed with exit code 0
//     (FAILED, REJECTED, ORPHANED, a non-zero exit code and a SHUTDOWN that
//     was not asked for all restart); ANY (the default): always;
//   - MaxAttempts (0: unlimited) bounds the restarts within Window (0: ever)
//     before t ended. The restarts are counted from the slot's history: the
//     tasks with t's spec that ended on their own (COMPLETE, FAILED,
//     REJECTED, ORPHANED) before t did, within the window. A task that ended
//     as SHUTDOWN without being asked cannot be told from one that was
//     stopped, and does not count. The task reaper keeps at least
//     MaxAttempts old tasks per slot so that the count stays right.
func decide(t *api.Task, history []*api.Task) (bool, string) {
	p := t.Spec.Restart
	switch p.GetCondition() {
	case api.RestartOnNone:
		return false, "restart condition is none"
	case api.RestartOnFailure:
		if t.Status.State == api.TaskStateCompleted && t.Status.ContainerStatus.GetExitCode() == 0 {
			return false, "restart condition is on-failure and the task completed"
		}
	}
	if p.GetMaxAttempts() == 0 {
		return true, ""
	}
	end := orchestrator.StatusTime(t)
	var window time.Duration
	if p.Window != nil {
		window, _ = types.DurationFromProto(p.Window)
	}
	n := uint64(0)
	for _, h := range history {
		if h.ID == t.ID || !endedOnItsOwn(h) {
			continue
		}
		at := orchestrator.StatusTime(h)
		if at.After(end) || window > 0 && !at.After(end.Add(-window)) {
			continue
		}
		if gogoproto.Equal(&h.Spec, &t.Spec) {
			n++
		}
	}
	if n >= p.MaxAttempts {
		return false, "restart attempts exhausted"
	}
	return true, ""
}

// endedOnItsOwn reports whether a task ended without being asked to stop
// (as far as its final state tells).
func endedOnItsOwn(t *api.Task) bool {
	switch t.Status.State {
	case api.TaskStateCompleted, api.TaskStateFailed, api.TaskStateRejected, api.TaskStateOrphaned:
		return true
	}
	return false
}

// delay is how long after t ended its replacement is created.
func delay(t *api.Task) time.Duration {
	p := t.Spec.Restart
	if p == nil || p.Delay == nil {
		return defaults.RestartDelay
	}
	d, err := types.DurationFromProto(p.Delay)
	if err != nil || d < 0 {
		return defaults.RestartDelay
	}
	return d
}
