package taskreaper

import (
	"slices"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/manager/orchestrator"
)

// keepOf is how many old tasks a slot keeps: the retention limit (negative:
// all), raised to the restart MaxAttempts of the slot's newest task so that
// the restart supervisor can count attempts; none for a global service's
// node that was removed (no task will ever run there again).
func keepOf(tasks []*api.Task, limit int64, globalNodeGone bool) int64 {
	if globalNodeGone {
		return 0
	}
	if limit < 0 {
		return -1
	}
	var newest *api.Task
	for _, t := range tasks {
		if newest == nil || orchestrator.Newer(t, newest) {
			newest = t
		}
	}
	if newest != nil {
		if m := newest.Spec.Restart.GetMaxAttempts(); m > uint64(limit) {
			return int64(m)
		}
	}
	return limit
}

// reapSlot picks the tasks of one slot (a replicated slot, or a global
// service's tasks on one node) to delete. A task is deleted only when it is
// dead: nothing of it can run, because it never reached a node (state before
// ASSIGNED), it ended (past RUNNING), or its node was removed.
//
//   - tasks with DesiredState REMOVE, and every task of a service that is
//     gone, once dead;
//   - history (not current, not REMOVE) beyond the newest keep (negative:
//     no limit), oldest first, once dead.
func reapSlot(tasks []*api.Task, keep int64, serviceGone bool, nodeGone, nodeDown func(string) bool) []*api.Task {
	dead := func(t *api.Task) bool {
		return !orchestrator.Live(t) || t.NodeID != "" && nodeGone(t.NodeID)
	}
	// A task to remove whose node is DOWN can go at once: when the node
	// comes back, its agent stops whatever its complete assignment set no
	// longer holds.
	removable := func(t *api.Task) bool {
		return dead(t) || t.NodeID != "" && nodeDown(t.NodeID)
	}
	var reap, history []*api.Task
	for _, t := range tasks {
		switch {
		case serviceGone || t.DesiredState == api.TaskStateRemove:
			if removable(t) {
				reap = append(reap, t)
			}
		case !orchestrator.IsCurrent(t):
			history = append(history, t)
		}
	}
	if keep < 0 || int64(len(history)) <= keep {
		return reap
	}
	slices.SortFunc(history, func(a, b *api.Task) int {
		if orchestrator.Newer(a, b) {
			return -1
		}
		return 1
	})
	for _, t := range history[keep:] {
		if dead(t) {
			reap = append(reap, t)
		}
	}
	return reap
}
