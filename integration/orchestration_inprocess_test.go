package integration

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/api"
)

// Orchestration scenarios on in-process clusters (cluster_test.go): a
// manager and workers with the sim executor, driven through the control API
// over real gRPC. Task exits are simulated with SIM_EXIT (agent/exec/sim).

// timestampSlack absorbs timestamp rounding between the agent's status time
// and the store's creation time (both from this process's clock).
const timestampSlack = 5 * time.Millisecond

// exitCode is the exit code a task's status reports, -1 if none.
func exitCode(t *api.Task) int32 {
	if t.Status.ContainerStatus == nil {
		return -1
	}
	return t.Status.ContainerStatus.ExitCode
}

func TestInProcessRestartPolicy(t *testing.T) {
	c := newTestCluster(t, 1)

	t.Run("AnyReplacesAfterDelay", func(t *testing.T) {
		t.Parallel()
		c := c.sub(t)
		const delay = 200 * time.Millisecond
		id := c.createService("crash-any", svcEnv("SIM_EXIT=1"), svcRestart(api.RestartOnAny, delay, 0, 0))
		defer c.removeService(id)
		// Three tasks in the slot: two failed and replaced.
		tasks := c.waitTasks(id, "slot 1 restarted twice", 20*time.Second, func(ts []*api.Task) bool {
			return len(ts) >= 3 && len(tasksInState(ts, api.TaskStateFailed)) >= 2
		})
		slot := tasksBySlot(tasks)
		if len(slot) != 1 || len(slot[1]) != len(tasks) {
			t.Fatalf("one replica: every task should be in slot 1:\n%s", c.describe(tasks))
		}
		chain := slot[1]
		replaced := 0
		for i := 0; i+1 < len(chain); i++ {
			old, next := chain[i], chain[i+1]
			if old.Status.State < api.TaskStateCompleted {
				// Not ended yet: a newer task in the slot is a duplicate.
				t.Errorf("task %s (%s) has a newer task %s in its slot while not ended:\n%s", old.ID, old.Status.State, next.ID, c.describe(tasks))
				continue
			}
			replaced++
			if old.Status.State != api.TaskStateFailed || exitCode(old) != 1 {
				t.Errorf("replaced task %s: state %s exit code %d, want FAILED with exit code 1 (status %+v)", old.ID, old.Status.State, exitCode(old), old.Status)
			}
			if old.DesiredState != api.TaskStateShutdown {
				t.Errorf("replaced task %s: desired state %s, want SHUTDOWN", old.ID, old.DesiredState)
			}
			if next.ID == old.ID {
				t.Errorf("replacement has the failed task's ID %s", old.ID)
			}
			failedAt, created := taskStatusTime(old), taskCreated(next)
			if failedAt.IsZero() || created.IsZero() {
				t.Fatalf("missing timestamps: failed %s created %s", failedAt, created)
			}
			gap := created.Sub(failedAt)
			if gap < delay-timestampSlack {
				t.Errorf("replacement %s created %s after %s failed: before the %s restart delay", next.ID, gap, old.ID, delay)
			}
			// The 5 s default delay would show here.
			if gap > delay+3*time.Second {
				t.Errorf("replacement %s created %s after %s failed: the %s restart delay was not applied", next.ID, gap, old.ID, delay)
			}
			t.Logf("%s failed at %s, replacement %s created %s later", old.ID, failedAt.Format("15:04:05.000"), next.ID, gap.Round(time.Millisecond))
		}
		if replaced < 2 {
			t.Errorf("%d replacements seen, want 2:\n%s", replaced, c.describe(tasks))
		}
	})

	t.Run("NoneLeavesTheFailedTask", func(t *testing.T) {
		t.Parallel()
		c := c.sub(t)
		id := c.createService("crash-none", svcEnv("SIM_EXIT=1"), svcRestart(api.RestartOnNone, 100*time.Millisecond, 0, 0))
		defer c.removeService(id)
		tasks := c.waitTasks(id, "the task FAILED", 20*time.Second, func(ts []*api.Task) bool {
			return len(tasksInState(ts, api.TaskStateFailed)) > 0
		})
		failed := tasks[0]
		if exitCode(failed) != 1 {
			t.Errorf("failed task's exit code %d, want 1", exitCode(failed))
		}
		err := holdsFor(1500*time.Millisecond, func() error {
			ts := c.tasks(id)
			if len(ts) != 1 || ts[0].ID != failed.ID || ts[0].Status.State != api.TaskStateFailed {
				return fmt.Errorf("condition none: the failed task %s was acted on:\n%s", failed.ID, c.describe(ts))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})

	t.Run("MaxAttemptsThenStaysFailed", func(t *testing.T) {
		t.Parallel()
		c := c.sub(t)
		id := c.createService("crash-max", svcEnv("SIM_EXIT=1"), svcRestart(api.RestartOnAny, 100*time.Millisecond, 2, time.Hour))
		defer c.removeService(id)
		tasks := c.waitTasks(id, "3 failed tasks", 20*time.Second, func(ts []*api.Task) bool {
			return len(tasksInState(ts, api.TaskStateFailed)) >= 3
		})
		want := taskIDs(tasks)
		err := holdsFor(1500*time.Millisecond, func() error {
			ts := c.tasks(id)
			if got := taskIDs(ts); !slices.Equal(got, want) || len(tasksInState(ts, api.TaskStateFailed)) != 3 {
				return fmt.Errorf("max attempts 2: want the slot to stay at 3 failed tasks %v, got:\n%s", want, c.describe(ts))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		chain := tasksBySlot(tasks)[1]
		if len(chain) != 3 {
			t.Fatalf("slot 1 has %d tasks, want 3:\n%s", len(chain), c.describe(tasks))
		}
		for i, task := range chain {
			want := api.TaskStateShutdown
			if i == len(chain)-1 {
				want = api.TaskStateRunning // not replaced: it stays the slot's task
			}
			if task.DesiredState != want {
				t.Errorf("task %d of the slot has desired state %s, want %s:\n%s", i+1, task.DesiredState, want, c.describe(tasks))
			}
		}
	})

	t.Run("OnFailureDoesNotRestartACompletedTask", func(t *testing.T) {
		t.Parallel()
		c := c.sub(t)
		id := c.createService("exit-zero", svcEnv("SIM_EXIT=0"), svcRestart(api.RestartOnFailure, 100*time.Millisecond, 0, 0))
		defer c.removeService(id)
		tasks := c.waitTasks(id, "the task COMPLETE", 20*time.Second, func(ts []*api.Task) bool {
			return len(tasksInState(ts, api.TaskStateCompleted)) > 0
		})
		done := tasks[0]
		if code := exitCode(done); code > 0 {
			t.Errorf("completed task's exit code %d, want 0", code)
		}
		err := holdsFor(1500*time.Millisecond, func() error {
			ts := c.tasks(id)
			if len(ts) != 1 || ts[0].ID != done.ID || ts[0].Status.State != api.TaskStateCompleted {
				return fmt.Errorf("on-failure: the completed task %s was restarted:\n%s", done.ID, c.describe(ts))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// onePerNode checks that tasks has exactly one task on each of nodes and
// none elsewhere.
func (c *testCluster) onePerNode(tasks []*api.Task, nodes ...*cnode) error {
	per := tasksPerNode(tasks)
	for _, n := range nodes {
		if len(per[n.id]) != 1 {
			return fmt.Errorf("%d tasks on %s, want 1", len(per[n.id]), n.hostname)
		}
		delete(per, n.id)
	}
	for id, ts := range per {
		return fmt.Errorf("%d tasks on %s, want none", len(ts), c.hostOf(id))
	}
	return nil
}

func TestInProcessGlobalService(t *testing.T) {
	c := newTestCluster(t, 2)
	w1, w2 := c.worker("w1"), c.worker("w2")
	all := c.createService("everywhere", svcGlobal())
	workers := c.createService("workers-only", svcGlobal(), svcConstraints("node.role==worker"))

	waitOnePer := func(svc, what string, nodes ...*cnode) []*api.Task {
		t.Helper()
		return c.waitTasks(svc, what, 20*time.Second, func(ts []*api.Task) bool {
			return c.onePerNode(runningTasks(ts), nodes...) == nil && len(currentTasks(ts)) == len(nodes)
		})
	}
	waitOnePer(all, "one task per node, manager included", c.mgr, w1, w2)
	waitOnePer(workers, "one task per worker", w1, w2)

	// A node that joins later gets one.
	w3 := c.addWorker("w3")
	waitOnePer(all, "a task on the new node", c.mgr, w1, w2, w3)
	waitOnePer(workers, "a task on the new worker", w1, w2, w3)

	// Draining w1 shuts its tasks down; nothing replaces them elsewhere.
	c.setAvailability(w1, api.NodeAvailabilityDrain)
	for _, svc := range []string{all, workers} {
		c.waitTasks(svc, "the task on the drained node shut down", 20*time.Second, func(ts []*api.Task) bool {
			on := tasksPerNode(ts)[w1.id]
			return len(on) == 1 && on[0].DesiredState == api.TaskStateShutdown && on[0].Status.State == api.TaskStateShutdown
		})
	}
	err := holdsFor(time.Second, func() error {
		if err := c.onePerNode(currentTasks(c.tasks(all)), c.mgr, w2, w3); err != nil {
			return fmt.Errorf("global service after drain: %w", err)
		}
		if err := c.onePerNode(currentTasks(c.tasks(workers)), w2, w3); err != nil {
			return fmt.Errorf("worker-only global service after drain: %w", err)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%v\n%s%s", err, c.describe(c.tasks(all)), c.describe(c.tasks(workers)))
	}
	waitOnePer(all, "running on the other nodes", c.mgr, w2, w3)
	waitOnePer(workers, "running on the other workers", w2, w3)
}

func TestInProcessPausedNodeKeepsItsTasks(t *testing.T) {
	c := newTestCluster(t, 2)
	w1 := c.worker("w1")
	id := c.createService("web", svcReplicas(6))
	before := tasksPerNode(runningTasks(c.waitRunning(id, 6, 20*time.Second)))[w1.id]
	if len(before) == 0 {
		t.Fatalf("6 replicas on 3 nodes put none on w1:\n%s", c.describe(c.tasks(id)))
	}

	c.setAvailability(w1, api.NodeAvailabilityPause)
	c.scaleService(id, 12)
	tasks := c.waitRunning(id, 12, 20*time.Second)
	on := tasksPerNode(tasks)[w1.id]
	if !slices.Equal(taskIDs(on), taskIDs(before)) {
		t.Errorf("paused w1 ran %v, now has %v:\n%s", taskIDs(before), taskIDs(on), c.describe(tasks))
	}
	for _, task := range on {
		if task.Status.State != api.TaskStateRunning || task.DesiredState != api.TaskStateRunning {
			t.Errorf("task %s on paused w1 is %s (desired %s), want it kept RUNNING", task.ID, task.Status.State, task.DesiredState)
		}
	}
	if !t.Failed() {
		t.Logf("w1 kept its %d tasks; the 6 new ones went to the other nodes", len(on))
	}
}

func TestInProcessConstraintsAndPending(t *testing.T) {
	c := newTestCluster(t, 2)
	w1 := c.worker("w1")

	pending := func(ts []*api.Task) []*api.Task {
		return tasksInState(currentTasks(ts), api.TaskStatePending)
	}

	t.Run("UnsatisfiedConstraintThenLabel", func(t *testing.T) {
		t.Parallel()
		c := c.sub(t)
		id := c.createService("east", svcReplicas(2), svcConstraints("node.labels.zone==east"))
		defer c.removeService(id)
		tasks := c.waitTasks(id, "2 tasks PENDING", 20*time.Second, func(ts []*api.Task) bool {
			return len(pending(ts)) == 2
		})
		for _, task := range tasks {
			msg := task.Status.Message
			if !strings.HasPrefix(msg, "no suitable node (") || !strings.Contains(msg, "node.labels.zone==east") {
				t.Errorf("pending task %s: message %q does not say which constraint no node satisfies", task.ID, msg)
			}
		}
		c.setLabel(w1, "zone", "east")
		tasks = c.waitRunning(id, 2, 20*time.Second)
		if err := c.onlyOn(runningTasks(tasks), w1); err != nil {
			t.Error(err)
		}
	})

	t.Run("ReservationTooLarge", func(t *testing.T) {
		t.Parallel()
		c := c.sub(t)
		id := c.createService("huge", svcReserveMemory(1<<50))
		defer c.removeService(id)
		tasks := c.waitTasks(id, "the task PENDING", 20*time.Second, func(ts []*api.Task) bool {
			return len(pending(ts)) == 1
		})
		if msg := tasks[0].Status.Message; !strings.Contains(msg, "3 nodes lack memory") {
			t.Errorf("pending task message %q, want it to say that 3 nodes lack memory", msg)
		}
		if tasks[0].NodeID != "" {
			t.Errorf("pending task has node %s", c.hostOf(tasks[0].NodeID))
		}
	})

	t.Run("MaxReplicasPerNode", func(t *testing.T) {
		t.Parallel()
		c := c.sub(t)
		id := c.createService("one-each", svcReplicas(3), svcConstraints("node.role==worker"), svcMaxReplicas(1))
		defer c.removeService(id)
		tasks := c.waitTasks(id, "2 running and 1 pending", 20*time.Second, func(ts []*api.Task) bool {
			return len(runningTasks(ts)) == 2 && len(pending(ts)) == 1
		})
		if err := c.onePerNode(runningTasks(tasks), c.worker("w1"), c.worker("w2")); err != nil {
			t.Errorf("max replicas 1: %v", err)
		}
		if msg := pending(tasks)[0].Status.Message; !strings.Contains(msg, "maximum of 1 replicas per node") {
			t.Errorf("pending task message %q does not mention the per-node maximum", msg)
		}
	})
}

// onlyOn checks that every task is on node n.
func (c *testCluster) onlyOn(tasks []*api.Task, n *cnode) error {
	for _, task := range tasks {
		if task.NodeID != n.id {
			return fmt.Errorf("task %s is on %s, want %s", task.ID, c.hostOf(task.NodeID), n.hostname)
		}
	}
	return nil
}

func TestInProcessServiceRemovedWhileTasksStart(t *testing.T) {
	c := newTestCluster(t, 2)
	// Remove the service as soon as its first task is assigned, then as soon
	// as the first one runs: the removal meets tasks from NEW to RUNNING.
	for i, until := range []api.TaskState{api.TaskStateAssigned, api.TaskStateRunning} {
		id := c.createService(fmt.Sprintf("burst%d", i), svcReplicas(50))
		var at []*api.Task
		deadline := time.Now().Add(20 * time.Second)
		for reached := false; !reached; {
			at = c.tasks(id)
			for _, task := range at {
				reached = reached || task.Status.State >= until
			}
			if time.Now().After(deadline) {
				t.Fatalf("no task of 50 %s in 20s:\n%s", until, c.describe(at))
			}
		}
		c.removeService(id)
		states := map[api.TaskState]int{}
		for _, task := range at {
			states[task.Status.State]++
		}
		t.Logf("removed the service at its first %s task, with %d tasks: %v", until, len(at), states)

		c.waitTasks(id, "all tasks of the removed service gone", 30*time.Second, func(ts []*api.Task) bool { return len(ts) == 0 })
		// Nothing is left on the nodes: not in the store, not on the agents.
		for _, n := range c.nodes() {
			var left, held []*api.Task
			if !pollUntil(15*time.Second, func() bool {
				left, held = c.nodeTasks(n), agentTasks(t, n.n)
				return len(left) == 0 && len(held) == 0
			}) {
				t.Errorf("node %s: the store still assigns it:\n%sits agent still holds:\n%s", n.hostname, c.describe(left), c.describe(held))
			}
		}
	}
}

func TestInProcessScaleDownPrefersPendingTasks(t *testing.T) {
	c := newTestCluster(t, 2)
	w1, w2 := c.worker("w1"), c.worker("w2")
	c.setLabel(w1, "pin", "yes")
	c.setLabel(w2, "pin", "yes")
	// 4 replicas, 2 per pinned worker at most: both workers are full.
	id := c.createService("pinned", svcReplicas(4), svcConstraints("node.labels.pin==yes"), svcMaxReplicas(2))
	tasks := c.waitRunning(id, 4, 20*time.Second)

	// Drain the worker with slot 1: its two slots get replacements that fit
	// nowhere (the other worker is full), so slot 1 is PENDING and a higher
	// slot runs. Scale down by slot number would stop a running task.
	var drained, other *cnode = w1, w2
	for _, task := range tasks {
		if task.Slot == 1 && task.NodeID == w2.id {
			drained, other = w2, w1
		}
	}
	c.setAvailability(drained, api.NodeAvailabilityDrain)
	tasks = c.waitTasks(id, "2 running and 2 pending", 20*time.Second, func(ts []*api.Task) bool {
		cur := currentTasks(ts)
		return len(cur) == 4 && len(runningTasks(cur)) == 2 && len(tasksInState(cur, api.TaskStatePending)) == 2
	})
	keep := runningTasks(tasks)
	if err := c.onlyOn(keep, other); err != nil {
		t.Fatal(err)
	}
	pendingSlots := []uint64{}
	for _, task := range tasksInState(currentTasks(tasks), api.TaskStatePending) {
		pendingSlots = append(pendingSlots, task.Slot)
	}
	slices.Sort(pendingSlots)
	t.Logf("pending slots %v after draining %s", pendingSlots, drained.hostname)
	if pendingSlots[0] != 1 {
		t.Fatalf("slot 1 should be pending:\n%s", c.describe(tasks))
	}

	c.scaleService(id, 2)
	tasks = c.waitTasks(id, "the pending tasks gone", 20*time.Second, func(ts []*api.Task) bool {
		return len(tasksInState(ts, api.TaskStatePending)) == 0 && len(currentTasks(ts)) == 2
	})
	if got, want := taskIDs(currentTasks(tasks)), taskIDs(keep); !slices.Equal(got, want) {
		t.Fatalf("scale down 4->2 kept %v, want the running %v:\n%s", got, want, c.describe(tasks))
	}
	if len(runningTasks(tasks)) != 2 {
		t.Fatalf("scale down stopped a running task:\n%s", c.describe(tasks))
	}
}

func TestInProcessTaskHistoryLimit(t *testing.T) {
	c := newTestCluster(t, 1, withHistoryLimit(2))
	id := c.createService("crashloop", svcEnv("SIM_EXIT=1"), svcRestart(api.RestartOnAny, 100*time.Millisecond, 0, 0))

	// The reaper runs after a replacement is created, so a slot may hold
	// current + 3 for an instant; it must not stay so.
	const keepLimit = 3
	const overFor = 300 * time.Millisecond
	seen := map[string]bool{}
	var overSince time.Time
	overOldest, maxSeen := "", 0
	var tasks []*api.Task
	ok := pollUntil(20*time.Second, func() bool {
		tasks = c.tasks(id)
		for _, task := range tasks {
			seen[task.ID] = true
		}
		maxSeen = max(maxSeen, len(tasks))
		if len(tasks) > keepLimit+1 {
			t.Fatalf("slot holds %d tasks, limit 2 + current:\n%s", len(tasks), c.describe(tasks))
		}
		if len(tasks) > keepLimit {
			oldest := tasksBySlot(tasks)[1][0].ID
			if oldest != overOldest {
				overOldest, overSince = oldest, time.Now()
			} else if time.Since(overSince) > overFor {
				t.Fatalf("slot kept %d tasks for over %s, limit 2 + current:\n%s", len(tasks), overFor, c.describe(tasks))
			}
		} else {
			overOldest = ""
		}
		return len(seen) >= 10
	})
	if !ok {
		t.Fatalf("only %d tasks in 20s of a crash loop with a 100ms restart delay:\n%s", len(seen), c.describe(tasks))
	}
	if maxSeen < keepLimit {
		t.Errorf("the slot never held 3 tasks: history kept %d", maxSeen-1)
	}
	t.Logf("%d tasks seen in the slot, at most %d at once", len(seen), maxSeen)
}

func TestInProcessNodeDownAndBack(t *testing.T) {
	c := newTestCluster(t, 2)
	w1 := c.worker("w1")
	const replicas = 6
	id := c.createService("web", svcReplicas(replicas))
	tasks := c.waitRunning(id, replicas, 20*time.Second)
	lost := tasksPerNode(runningTasks(tasks))[w1.id]
	if len(lost) == 0 {
		t.Fatalf("%d replicas on 3 nodes put none on w1:\n%s", replicas, c.describe(tasks))
	}

	c.stopNode(w1)
	c.waitNodeState(w1, api.NodeStatusDown, 10*time.Second)
	tasks = c.waitTasks(id, fmt.Sprintf("%d running elsewhere", replicas), 20*time.Second, func(ts []*api.Task) bool {
		r := runningTasks(ts)
		return len(r) == replicas && len(tasksPerNode(r)[w1.id]) == 0
	})
	for _, task := range tasksPerNode(tasks)[w1.id] {
		if task.DesiredState != api.TaskStateShutdown {
			t.Errorf("task %s on the DOWN node has desired state %s, want SHUTDOWN", task.ID, task.DesiredState)
		}
	}

	c.restartNode(w1)
	c.waitNodeState(w1, api.NodeStatusReady, 10*time.Second)
	// Its agent learns the old tasks are to stop, and stops them.
	tasks = c.waitTasks(id, "the old tasks on w1 stopped", 20*time.Second, func(ts []*api.Task) bool {
		for _, task := range tasksPerNode(ts)[w1.id] {
			if task.Status.State <= api.TaskStateRunning || task.DesiredState != api.TaskStateShutdown {
				return false
			}
		}
		return true
	})
	for _, task := range tasksPerNode(tasks)[w1.id] {
		t.Logf("old task %s on w1: %s (desired %s) %q", task.ID, task.Status.State, task.DesiredState, task.Status.Message)
	}
	if !pollUntil(10*time.Second, func() bool {
		for _, task := range agentTasks(t, w1.n) {
			if task.Status.State <= api.TaskStateRunning {
				return false
			}
		}
		return true
	}) {
		t.Errorf("w1's agent still runs tasks:\n%s", c.describe(agentTasks(t, w1.n)))
	}
	// No duplicate: one running task per slot, none on w1.
	err := holdsFor(time.Second, func() error {
		ts := c.tasks(id)
		r := runningTasks(ts)
		slots := tasksBySlot(r)
		if len(r) != replicas || len(slots) != replicas || len(tasksPerNode(r)[w1.id]) != 0 {
			return fmt.Errorf("want %d running tasks, one per slot, none on w1:\n%s", replicas, c.describe(ts))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
