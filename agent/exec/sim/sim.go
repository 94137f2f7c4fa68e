// Package sim is the simulated executor: tasks "run" with no container, so
// in-process clusters and the scale simulator can exercise the whole control
// plane on one machine. It is never a silent default: a node uses it only
// when asked to (--executor sim).
//
// For now it only describes the node; running simulated tasks arrives with
// task execution.
package sim

import (
	"context"
	"maps"

	"github.com/flotilla/flotilla/agent/exec"
	"github.com/flotilla/flotilla/api"
)

// Name is the executor's name in EngineDescription.Executor.
const Name = "sim"

// Executor is the simulated executor.
type Executor struct {
	hostname string
	labels   map[string]string
}

var _ exec.Executor = (*Executor)(nil)

// New returns a simulated executor for a node named hostname whose engine
// carries labels (copied).
func New(hostname string, labels map[string]string) *Executor {
	return &Executor{hostname: hostname, labels: maps.Clone(labels)}
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
