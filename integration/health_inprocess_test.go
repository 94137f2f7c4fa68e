package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/gogo/protobuf/types"

	"github.com/flotilla/flotilla/api"
)

// svcHealth gives the service a health check every interval, unhealthy
// after retries failures (the sim executor's checks pass unless
// SIM_UNHEALTHY_AFTER says otherwise).
func svcHealth(interval time.Duration, retries int32) svcOpt {
	return func(s *api.ServiceSpec) {
		s.Task.Container.Healthcheck = &api.HealthConfig{
			Test: []string{"CMD-SHELL", "true"}, Interval: types.DurationProto(interval), Retries: retries,
		}
	}
}

// TestInProcessHealthChecks: a task's health reaches the store; a task that
// turns unhealthy is failed, with the check's output, and replaced per its
// restart policy.
func TestInProcessHealthChecks(t *testing.T) {
	c := newTestCluster(t, 1)

	t.Run("HealthyTaskShowsItsHealth", func(t *testing.T) {
		t.Parallel()
		c := c.sub(t)
		id := c.createService("healthy", svcHealth(100*time.Millisecond, 1))
		defer c.removeService(id)
		c.waitTasks(id, "the task running and healthy", 20*time.Second, func(ts []*api.Task) bool {
			return len(ts) == 1 && ts[0].Status.State == api.TaskStateRunning && ts[0].Status.Health == api.HealthHealthy
		})
	})

	t.Run("UnhealthyTaskIsReplaced", func(t *testing.T) {
		t.Parallel()
		c := c.sub(t)
		id := c.createService("unhealthy", svcHealth(100*time.Millisecond, 2), svcEnv("SIM_UNHEALTHY_AFTER=1"),
			svcRestart(api.RestartOnAny, 100*time.Millisecond, 0, 0))
		defer c.removeService(id)
		tasks := c.waitTasks(id, "an unhealthy task failed and replaced", 20*time.Second, func(ts []*api.Task) bool {
			return len(ts) >= 2 && len(tasksInState(ts, api.TaskStateFailed)) >= 1
		})
		for _, tk := range tasksInState(tasks, api.TaskStateFailed) {
			if tk.Status.Health != api.HealthUnhealthy || !strings.Contains(tk.Status.Err, "container is unhealthy: sim: check 3 fails") {
				t.Errorf("failed task %s: health %v, err %q; want unhealthy with the check's output", tk.ID, tk.Status.Health, tk.Status.Err)
			}
			if tk.DesiredState != api.TaskStateShutdown {
				t.Errorf("failed task %s: desired %v, want SHUTDOWN (replaced)", tk.ID, tk.DesiredState)
			}
		}
		if slots := tasksBySlot(tasks); len(slots) != 1 {
			t.Errorf("replacements should share slot 1:\n%s", c.describe(tasks))
		}
	})
}
