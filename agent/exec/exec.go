// Package exec is the boundary between the agent and whatever runs tasks on
// a node (DESIGN.md §4).
//
// An Executor describes the node: what it is (hostname, platform), what it
// has (CPU, memory) and what runs its tasks (the engine). The agent sends
// that description to the dispatcher each time it opens a session.
//
// Task execution arrives with the next issue: Executor will also make a
// Controller for a task (Prepare, Start, Wait, Shutdown, Terminate, Remove,
// Close), and this package will hold the one pure step function that
// advances a task by one state given its desired state and its Controller.
// Optional capabilities (logs, health, ports) will be separate interfaces
// found by type assertion, so a small executor stays small.
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
