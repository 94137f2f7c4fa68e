// Package exec is the boundary between the agent and whatever runs tasks on
// a node (DESIGN.md §4).
//
// An Executor describes the node (what it is, what it has, what runs its
// tasks; sent to the dispatcher with each new session) and makes a
// Controller for each task assigned to the node. A Controller drives one
// task's container (or whatever stands for it): Prepare, Start, Wait,
// Shutdown, Terminate, Remove, Close.
//
// Do is the task state machine: one pure function that, given a task (its
// observed status and desired state) and its Controller, performs at most
// one transition and returns the new status. The agent's task runner calls
// it in a loop, one goroutine per task, and reports each new status:
//
//	for {
//		status, err := exec.Do(ctx, task, ctlr)
//		// record and report status if it changed, then:
//		// err == nil: call again at once
//		// ErrTaskNoop: wait for the task (its desired state) to change
//		// ErrTaskRetry: call again after a backoff
//	}
//
// Optional capabilities are separate interfaces a Controller may also
// implement, found by type assertion, so a small executor stays small.
// ContainerStatuser (container ID and PID in the reported status),
// PortStatuser (the host ports the task publishes, in the reported status),
// ControllerLogs (the task's stdout and stderr, see logs.go) and
// ContainerHealth (a health check the agent runs on its schedule while the
// task runs, see health.go).
//
// Implementations: agent/exec/sim (tasks run without containers, for
// in-process tests and the scale simulator; never a silent default) and,
// later, agent/exec/containerd.
package exec

import (
	"context"
	"fmt"
	"runtime"

	"github.com/flotilla/flotilla/api"
)

// Executor runs the tasks of one node.
type Executor interface {
	// Describe reports the node as the cluster should see it. It is called
	// for every new session, so changes (more memory, new labels) reach the
	// managers on the next reconnect.
	Describe(ctx context.Context) (*api.NodeDescription, error)
	// Controller makes the controller of task t. It must not start
	// anything: the agent also calls it for a task it finds in its task DB
	// after a restart, whose container may already run (the controller
	// then adopts it: Prepare and Start answer ErrTaskPrepared and
	// ErrTaskStarted, Wait waits for the running container). An error means
	// the task cannot run on this node: it is rejected (or, if it was
	// running, failed).
	Controller(t *api.Task) (Controller, error)
}

// TaskCleaner is an optional Executor capability: the tasks it keeps
// something for on the node (containers, state), and removing all of one
// task's. The agent removes, when it starts, those its task DB does not know:
// left by a task DB that was lost or replaced.
type TaskCleaner interface {
	Tasks(ctx context.Context) ([]string, error)
	RemoveTask(ctx context.Context, id string) error
}

// HostDescription describes the machine the process runs on: the hostname
// given, the platform (runtime GOOS/GOARCH), all its CPUs (in nano-CPUs) and
// total memory, and the executor's name in the engine description.
func HostDescription(hostname, executor string) (*api.NodeDescription, error) {
	mem, err := totalMemory()
	if err != nil {
		return nil, fmt.Errorf("describe host: total memory: %w", err)
	}
	return &api.NodeDescription{
		Hostname:  hostname,
		Platform:  &api.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH},
		Resources: &api.Resources{NanoCPUs: int64(runtime.NumCPU()) * 1e9, MemoryBytes: mem},
		Engine:    &api.EngineDescription{Executor: executor},
	}, nil
}
