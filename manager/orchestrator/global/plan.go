package global

import (
	"slices"
	"time"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/api/constraint"
	"github.com/flotilla/flotilla/manager/orchestrator"
)

// plan is what one reconcile of one service writes, and a summary to log.
type plan struct {
	writes                             []orchestrator.Write
	created, stopped, refreshed, extra int
}

// planService brings svc's tasks on the nodes nodeIDs to its spec. tasks are
// the service's tasks on those nodes (history included; it is ignored), node
// looks nodes up (nil: removed).
//
//   - A node's current task is the newest current task of the service on it;
//     surplus current tasks are shut down.
//   - A node whose task must stop (removed, DOWN, drained, or no longer
//     matching the placement constraints) has it shut down (SHUTDOWN); global
//     tasks are not replaced elsewhere. A paused node keeps it.
//   - A task that runs an old task spec is offered to the Updater, and the
//     ones it picks are replaced on the same node.
//   - A node without a current task gets one if it is open (READY and ACTIVE)
//     and matches the constraints: created with NodeID set, in state NEW; the
//     scheduler moves it to ASSIGNED if the node has room.
func planService(svc *api.Service, nodeIDs []string, tasks []*api.Task, node func(string) *api.Node, update orchestrator.Updater, now time.Time) plan {
	var p plan
	fits := fitter(svc)
	current, surplus := orchestrator.Current(tasks, func(t *api.Task) string { return t.NodeID })
	for _, t := range surplus {
		p.writes = append(p.writes, orchestrator.SetDesired(t, api.TaskStateShutdown))
		p.extra++
	}
	ids := slices.Clone(nodeIDs)
	for id := range current {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)

	check := orchestrator.NewSpecCheck(svc)
	var outdated []*api.Task
	for _, id := range ids {
		n := node(id)
		t := current[id]
		switch {
		case t != nil && (id == "" || orchestrator.NodeLost(n) || !fits(n)):
			p.writes = append(p.writes, orchestrator.SetDesired(t, api.TaskStateShutdown))
			p.stopped++
		case t != nil:
			if check.Outdated(t) {
				outdated = append(outdated, t)
			}
		case orchestrator.NodeOpen(n) && fits(n):
			p.writes = append(p.writes, orchestrator.Create(orchestrator.NewTask(svc, 0, id, now)))
			p.created++
		}
	}
	if len(outdated) > 0 {
		for _, t := range update(svc, outdated) {
			p.writes = append(p.writes, orchestrator.Replace(t, orchestrator.NewTask(svc, 0, t.NodeID, now)))
			p.refreshed++
		}
	}
	return p
}

// fitter returns whether a node matches svc's placement constraints.
func fitter(svc *api.Service) func(*api.Node) bool {
	var cs []constraint.Constraint
	if pl := svc.Spec.Task.Placement; pl != nil {
		var err error
		if cs, err = constraint.ParseAll(pl.Constraints); err != nil {
			// Validated when the service was written: a service whose
			// constraints do not parse matches no node.
			return func(*api.Node) bool { return false }
		}
	}
	return func(n *api.Node) bool { return n != nil && constraint.MatchNode(cs, n) }
}
