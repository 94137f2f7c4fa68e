package sim

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/flotilla/flotilla/agent/exec"
	"github.com/flotilla/flotilla/api"
)

// Simulated health checks. A task whose container spec has a health check
// (swarmctl service create --health-cmd ... --health-interval ...) is checked
// on that schedule by the agent (exec.ContainerHealth); its checks pass,
// unless the spec's environment (or labels) has
//
//	SIM_UNHEALTHY_AFTER=N   the checks after the Nth fail (exit 1)
//
// so that tests can have a task turn unhealthy and be replaced.
const UnhealthyAfterEnv = "SIM_UNHEALTHY_AFTER"

// healthPlan is a simulated task's health check.
type healthPlan struct {
	cfg            *exec.HealthConfig // nil: none
	unhealthyAfter int                // -1: always passes
	probes         atomic.Int64
}

func planHealth(c *api.ContainerSpec) (*healthPlan, error) {
	p := &healthPlan{unhealthyAfter: -1}
	if c == nil {
		return p, nil
	}
	if h := exec.HealthConfigFromSpec(c.Healthcheck); h.Enabled() {
		if _, err := h.Command(); err != nil {
			return nil, err
		}
		p.cfg = h
	}
	if v, ok := envOrLabel(c, UnhealthyAfterEnv); ok {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 0 {
			return nil, fmt.Errorf("%s=%q: want a number of checks (0 or more)", UnhealthyAfterEnv, v)
		}
		p.unhealthyAfter = n
	}
	return p, nil
}

// HealthCheck returns the task's simulated check; nil without one
// (exec.ContainerHealth).
func (c *Controller) HealthCheck(context.Context) (*exec.HealthCheck, error) {
	p := c.health
	if p == nil || p.cfg == nil {
		return nil, nil
	}
	return p.cfg.Check(p.probe), nil
}

func (p *healthPlan) probe(context.Context) (exec.ProbeResult, error) {
	n := p.probes.Add(1)
	if p.unhealthyAfter >= 0 && n > int64(p.unhealthyAfter) {
		return exec.ProbeResult{ExitCode: 1, Output: fmt.Sprintf("sim: check %d fails (%s=%d)\n", n, UnhealthyAfterEnv, p.unhealthyAfter)}, nil
	}
	return exec.ProbeResult{Output: fmt.Sprintf("sim: check %d passes\n", n)}, nil
}

var _ exec.ContainerHealth = (*Controller)(nil)
