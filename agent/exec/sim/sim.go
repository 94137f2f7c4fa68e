// Package sim is the simulated executor: tasks "run" with no container, so
// in-process clusters and the scale simulator can exercise the whole control
// plane on one machine. It is never a silent default: a node uses it only
// when asked to (--executor sim).
//
// A simulated task prepares and starts at once and then runs until it is
// shut down or terminated; nothing is kept outside the agent's memory, so a
// controller made for a task the agent's task DB says is running (after an
// agent restart) simply carries on running it.
//
// Exit codes can be simulated: a task whose container spec has the
// environment variable SIM_EXIT=<code> (swarmctl service create --env
// SIM_EXIT=3), or the container label SIM_EXIT, exits with that code as
// soon as it runs: 0 completes it, anything else fails it (useful to
// exercise restart policies). An unparsable value rejects the task.
//
// Output can be simulated too (SIM_LOG and friends, see logs.go): the
// controller implements exec.ControllerLogs over lines kept in memory. So
// can health checks (SIM_UNHEALTHY_AFTER, see health.go).
package sim

import (
	"context"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"sync"

	"github.com/flotilla/flotilla/agent/exec"
	"github.com/flotilla/flotilla/api"
)

// Name is the executor's name in EngineDescription.Executor.
const Name = "sim"

// ExitEnv is the environment variable (or container label) that makes a
// simulated task exit with the code it holds.
const ExitEnv = "SIM_EXIT"

// Executor is the simulated executor.
type Executor struct {
	hostname string
	labels   map[string]string

	mu   sync.Mutex
	logs map[string]*taskLog // by task ID, until the task is removed
}

var _ exec.Executor = (*Executor)(nil)

// New returns a simulated executor for a node named hostname whose engine
// carries labels (copied).
func New(hostname string, labels map[string]string) *Executor {
	return &Executor{hostname: hostname, labels: maps.Clone(labels), logs: map[string]*taskLog{}}
}

// Describe reports the real host's platform and resources under the given
// hostname, with engine "sim" and the executor's labels.
func (e *Executor) Describe(ctx context.Context) (*api.NodeDescription, error) {
	d, err := exec.HostDescription(e.hostname, Name)
	if err != nil {
		return nil, err
	}
	if len(e.labels) > 0 {
		d.Engine.Labels = maps.Clone(e.labels)
	}
	return d, nil
}

// Controller makes the controller of a simulated task.
func (e *Executor) Controller(t *api.Task) (exec.Controller, error) {
	c := &Controller{stopped: make(chan struct{})}
	code, ok, err := exitCode(t.Spec.Container)
	if err != nil {
		return nil, fmt.Errorf("task %s: %w", t.ID, err)
	}
	if ok {
		c.exit = &code
	}
	if c.plan, err = planLogs(t); err != nil {
		return nil, fmt.Errorf("task %s: %w", t.ID, err)
	}
	if c.health, err = planHealth(t.Spec.Container); err != nil {
		return nil, fmt.Errorf("task %s: %w", t.ID, err)
	}
	c.log, c.forget = e.taskLog(t.ID)
	return c, nil
}

// taskLog returns the output of task id, kept across its controllers, and
// the function that forgets it.
func (e *Executor) taskLog(id string) (*taskLog, func()) {
	e.mu.Lock()
	defer e.mu.Unlock()
	l := e.logs[id]
	if l == nil {
		l = newTaskLog()
		e.logs[id] = l
	}
	return l, func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		if e.logs[id] == l {
			delete(e.logs, id)
		}
	}
}

// envOrLabel reads key from the container spec: its environment first (the
// last entry wins, as in a shell), then its labels.
func envOrLabel(c *api.ContainerSpec, key string) (string, bool) {
	if c == nil {
		return "", false
	}
	val, found := "", false
	for _, kv := range c.Env {
		if v, ok := strings.CutPrefix(kv, key+"="); ok {
			val, found = v, true
		}
	}
	if !found {
		val, found = c.Labels[key]
	}
	return val, found
}

// exitCode reads SIM_EXIT from the container spec: its environment first,
// then its labels.
func exitCode(c *api.ContainerSpec) (code int, ok bool, err error) {
	val, found := envOrLabel(c, ExitEnv)
	if !found {
		return 0, false, nil
	}
	code, err = strconv.Atoi(strings.TrimSpace(val))
	if err != nil || code < 0 || code > 255 {
		return 0, false, fmt.Errorf("%s=%q: want an exit code from 0 to 255", ExitEnv, val)
	}
	return code, true, nil
}

// Controller is a simulated task: Prepare and Start succeed at once; Wait
// blocks until Shutdown or Terminate (then returns nil) or, with SIM_EXIT,
// returns the simulated exit at once.
type Controller struct {
	exit    *int // SIM_EXIT, if set
	stopped chan struct{}
	plan    logPlan
	health  *healthPlan // see health.go
	log     *taskLog
	forget  func() // drops log from the executor

	mu        sync.Mutex
	calls     map[string]int
	isStopped bool
}

var _ exec.Controller = (*Controller)(nil)

func (c *Controller) record(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.calls == nil {
		c.calls = map[string]int{}
	}
	c.calls[name]++
}

// Calls reports how many times method name ("prepare", "start", "wait",
// "shutdown", "terminate", "remove", "close") was called: the simulator's
// equivalent of looking at the containers.
func (c *Controller) Calls(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls[name]
}

// Prepare does nothing.
func (c *Controller) Prepare(context.Context) error { c.record("prepare"); return nil }

// Start does nothing but print (see logs.go): the task "runs" from now on.
func (c *Controller) Start(context.Context) error {
	c.record("start")
	if !c.log.begin() {
		return nil // started before (an earlier controller): printed already
	}
	if c.exit != nil || c.plan.interval == 0 {
		c.log.run(c.plan, c.stopped)
		if c.exit != nil {
			c.log.exit()
		}
		return nil
	}
	go c.log.run(c.plan, c.stopped)
	return nil
}

// Wait returns the SIM_EXIT exit (nil for 0, an *exec.ExitError otherwise)
// at once if the task has one; otherwise it blocks until the task is shut
// down or terminated (nil: a simulated task stops cleanly) or ctx ends.
func (c *Controller) Wait(ctx context.Context) error {
	c.record("wait")
	if c.exit != nil {
		if *c.exit == 0 {
			return nil
		}
		return &exec.ExitError{Code: *c.exit}
	}
	select {
	case <-c.stopped:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Shutdown stops the task; Wait returns nil.
func (c *Controller) Shutdown(context.Context) error { c.record("shutdown"); c.stop(); return nil }

// Terminate stops the task as Shutdown does.
func (c *Controller) Terminate(context.Context) error { c.record("terminate"); c.stop(); return nil }

// Remove forgets the task's output: a simulated task leaves nothing else
// behind.
func (c *Controller) Remove(context.Context) error {
	c.record("remove")
	c.log.exit()
	c.forget()
	return nil
}

// Close does nothing; the task, if running, "keeps running".
func (c *Controller) Close() error { c.record("close"); return nil }

func (c *Controller) stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.isStopped {
		c.isStopped = true
		close(c.stopped)
		c.log.exit()
	}
}
