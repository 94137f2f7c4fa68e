package containerd

import (
	"context"
	"strings"

	v1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	"google.golang.org/protobuf/proto"
)

// oomKilled reports whether the kernel's OOM killer killed a process of the
// task's cgroup, from the cgroup's counters as the shim reports them (they
// last until the task is deleted, so an exit that happened while the agent
// was down is classified too). Unknown (no metrics): false.
func (c *Controller) oomKilled(ctx context.Context) bool {
	_, t, err := c.loadTask(ctx)
	if err != nil {
		return false
	}
	m, err := t.Metrics(ctx)
	if err != nil || m == nil || m.Data == nil {
		c.log.Debug("no cgroup metrics to tell an OOM kill", "error", err)
		return false
	}
	switch url := m.Data.GetTypeUrl(); {
	case strings.HasSuffix(url, "cgroups.v1.Metrics"):
		var s v1.Metrics
		if err := proto.Unmarshal(m.Data.GetValue(), &s); err != nil {
			return false
		}
		return s.GetMemoryOomControl().GetOomKill() > 0
	case strings.HasSuffix(url, "cgroups.v2.Metrics"):
		var s v2.Metrics
		if err := proto.Unmarshal(m.Data.GetValue(), &s); err != nil {
			return false
		}
		return s.GetMemoryEvents().GetOomKill() > 0
	}
	return false
}
