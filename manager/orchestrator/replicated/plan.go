package replicated

import (
	"cmp"
	"math"
	"slices"
	"sort"
	"time"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/manager/orchestrator"
)

// plan is what one reconcile of one service writes, and a summary to log.
type plan struct {
	writes                             []orchestrator.Write
	created, removed, moved, refreshed int
}

// planService brings svc's slots to its spec. tasks are the service's tasks
// (all of them; history is ignored), node looks up nodes.
//
//   - A slot is occupied when it has a current task (orchestrator.Current);
//     surplus current tasks in a slot are shut down.
//   - More occupied slots than replicas: the slots scaleDown picks lose their
//     task, with DesiredState REMOVE (a scaled-down slot's task is deleted by
//     the task reaper once stopped; a replaced task gets SHUTDOWN and stays
//     as the slot's history).
//   - A kept slot whose task is on a lost node (removed, DOWN, drained) gets a
//     replacement, unassigned: the scheduler places it elsewhere.
//   - A kept slot whose task runs an old task spec is offered to the Updater,
//     which picks the ones replaced now.
//   - Fewer occupied slots than replicas: new tasks fill the lowest free slots.
func planService(svc *api.Service, tasks []*api.Task, node func(string) *api.Node, update orchestrator.Updater, now time.Time) plan {
	var p plan
	want := svc.Spec.Mode.GetReplicated().GetReplicas()
	slotted := make([]*api.Task, 0, len(tasks))
	for _, t := range tasks {
		if t.Slot != 0 {
			slotted = append(slotted, t)
		}
	}
	current, surplus := orchestrator.Current(slotted, func(t *api.Task) uint64 { return t.Slot })
	for _, t := range surplus {
		p.writes = append(p.writes, orchestrator.SetDesired(t, api.TaskStateShutdown))
	}
	occupied := make([]*api.Task, 0, len(current))
	for _, t := range current {
		occupied = append(occupied, t)
	}
	slices.SortFunc(occupied, func(a, b *api.Task) int { return cmp.Compare(a.Slot, b.Slot) })

	if n := len(occupied); uint64(n) > want {
		gone := scaleDown(occupied, node, n-int(want))
		for _, t := range gone {
			p.writes = append(p.writes, orchestrator.SetDesired(t, api.TaskStateRemove))
		}
		p.removed = len(gone)
		goneIDs := make(map[string]bool, len(gone))
		for _, t := range gone {
			goneIDs[t.ID] = true
		}
		occupied = slices.DeleteFunc(occupied, func(t *api.Task) bool { return goneIDs[t.ID] })
	}

	check := orchestrator.NewSpecCheck(svc)
	var outdated []*api.Task
	for _, t := range occupied {
		if t.NodeID != "" && orchestrator.NodeLost(node(t.NodeID)) {
			p.writes = append(p.writes, orchestrator.Replace(t, orchestrator.NewTask(svc, t.Slot, "", now)))
			p.moved++
			continue
		}
		if check.Outdated(t) {
			outdated = append(outdated, t)
		}
	}
	if len(outdated) > 0 {
		for _, t := range update(svc, outdated) {
			p.writes = append(p.writes, orchestrator.Replace(t, orchestrator.NewTask(svc, t.Slot, "", now)))
			p.refreshed++
		}
	}

	for slot, missing := uint64(1), int64(want)-int64(len(occupied)); missing > 0; slot++ {
		if _, ok := current[slot]; ok {
			continue
		}
		p.writes = append(p.writes, orchestrator.Create(orchestrator.NewTask(svc, slot, "", now)))
		p.created++
		missing--
	}
	return p
}

// scaleDown picks the n tasks (of occupied, in slot order) whose slots go,
// in SwarmKit's order of preference:
//
//  1. tasks that are not running (not yet started, ended, or on a lost node)
//     before running ones; among them unassigned tasks first;
//  2. tasks on the nodes that run the most replicas of the service, so that
//     what stays is balanced: each task counts as the k-th copy on its node
//     (running tasks and lower slots count first) and higher k goes first;
//  3. higher slots first.
func scaleDown(occupied []*api.Task, node func(string) *api.Node, n int) []*api.Task {
	type candidate struct {
		t       *api.Task
		running bool
		copy    int
	}
	cs := make([]candidate, len(occupied))
	for i, t := range occupied {
		cs[i] = candidate{t: t, running: t.Status.State == api.TaskStateRunning &&
			t.NodeID != "" && !orchestrator.NodeLost(node(t.NodeID))}
	}
	// Number the copies per node: running first, then by slot (cs is in
	// slot order and the sort is stable).
	sort.SliceStable(cs, func(i, j int) bool { return cs[i].running && !cs[j].running })
	perNode := map[string]int{}
	for i := range cs {
		if id := cs[i].t.NodeID; id != "" {
			perNode[id]++
			cs[i].copy = perNode[id]
		} else {
			cs[i].copy = math.MaxInt
		}
	}
	sort.SliceStable(cs, func(i, j int) bool {
		a, b := cs[i], cs[j]
		if a.running != b.running {
			return !a.running
		}
		if a.copy != b.copy {
			return a.copy > b.copy
		}
		return a.t.Slot > b.t.Slot
	})
	gone := make([]*api.Task, n)
	for i := range gone {
		gone[i] = cs[i].t
	}
	return gone
}
