package scheduler

import (
	"cmp"
	"container/heap"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/flotilla/flotilla/api"
)

// group is the pending tasks of one placement group: tasks of one service with
// the same placement and reservations, and so the same feasible nodes.
type group struct {
	key     string
	service string
	// preset: the tasks come with their node (global services).
	preset bool
	// spec is one of the group's tasks; its placement and reservations are
	// the group's.
	spec  *api.Task
	tasks map[string]*api.Task
	// waiting is why the group's tasks last fit nowhere ("" if they did).
	waiting string
}

func newGroup(key string, t *api.Task) *group {
	return &group{key: key, service: t.ServiceID, preset: t.NodeID != "", spec: t, tasks: map[string]*api.Task{}}
}

// groupKey identifies t's placement group.
func groupKey(t *api.Task) string {
	b := make([]byte, 0, 64)
	b = append(b, t.ServiceID...)
	b = append(b, 0)
	if t.NodeID != "" {
		b = append(b, 'g')
	} else {
		b = append(b, 'r')
	}
	var placement, reservations []byte
	if p := t.Spec.Placement; p != nil {
		placement, _ = p.Marshal()
	}
	if r := t.Spec.Resources; r != nil && r.Reservations != nil {
		reservations, _ = r.Reservations.Marshal()
	}
	b = binary.AppendUvarint(b, uint64(len(placement)))
	b = append(b, placement...)
	b = binary.AppendUvarint(b, uint64(len(reservations)))
	b = append(b, reservations...)
	b = append(b, hostPorts(t)...)
	return string(b)
}

// sorted returns the group's tasks by slot, then ID: lower slots are placed first.
func (g *group) sorted() []*api.Task {
	ts := make([]*api.Task, 0, len(g.tasks))
	for _, t := range g.tasks {
		ts = append(ts, t)
	}
	slices.SortFunc(ts, func(a, b *api.Task) int {
		if c := cmp.Compare(a.Slot, b.Slot); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return ts
}

// pass places the pending tasks of the groups that may have changed and
// commits the decisions. It reports whether some could not be committed: the
// caller runs another pass after a delay.
func (s *Scheduler) pass(ctx context.Context) (retry bool) {
	defer s.passed.Store(s.applied)
	keys := s.dirtyGroups()
	s.dirty, s.dirtyAll, s.fresh = map[string]bool{}, false, 0
	if len(keys) == 0 {
		return false
	}
	start := time.Now()
	var ds []*decision
	for _, k := range keys {
		s.placeGroup(s.groups[k], &ds)
	}
	if len(ds) == 0 {
		return false
	}
	decided := time.Since(start)
	failed, err := s.commit(ctx, ds)
	if ctx.Err() != nil {
		return false
	}
	notDone := make(map[*decision]bool, len(failed))
	for _, d := range failed {
		notDone[d] = true
	}
	placed, waiting := 0, 0
	for _, d := range ds {
		switch {
		case notDone[d] && d.node != "":
			// Undo the decision; the task is placed again.
			s.setUse(d.t.ID, use{}, false)
			s.addPending(d.t)
		case notDone[d]:
			if key, ok := s.groupOf[d.t.ID]; ok {
				s.dirty[key] = true
			}
		case d.skipped && d.node != "":
			// The task changed under the pass (its change is on the way):
			// it holds nothing.
			s.setUse(d.t.ID, use{}, false)
		case d.node != "":
			placed++
		case d.wrote:
			waiting++
		}
	}
	if s.log.Enabled(ctx, slog.LevelDebug) {
		s.log.Debug(fmt.Sprintf("scheduled %d tasks in %v", placed, time.Since(start).Round(time.Microsecond)),
			"tasks.scheduled", placed, "tasks.pending", waiting, "tasks.failed", len(failed),
			"groups", len(keys), "decide", decided, "commit", time.Since(start)-decided)
	}
	if err != nil {
		s.log.Warn("cannot commit scheduling decisions; retrying", "err", err, "tasks", len(failed))
	}
	return len(failed) > 0
}

// dirtyGroups returns the keys of the groups a pass looks at: groups of
// preset tasks first (their node is theirs), then by key.
func (s *Scheduler) dirtyGroups() []string {
	var keys []string
	if s.dirtyAll {
		keys = make([]string, 0, len(s.groups))
		for k := range s.groups {
			keys = append(keys, k)
		}
	} else {
		for k := range s.dirty {
			if s.groups[k] != nil {
				keys = append(keys, k)
			}
		}
	}
	slices.SortFunc(keys, func(a, b string) int {
		pa, pb := s.groups[a].preset, s.groups[b].preset
		if pa != pb {
			if pa {
				return -1
			}
			return 1
		}
		return strings.Compare(a, b)
	})
	return keys
}

// placeGroup decides for every task of g.
func (s *Scheduler) placeGroup(g *group, ds *[]*decision) {
	tasks := g.sorted()
	p, err := newPipeline(g.spec)
	if err != nil {
		msg := fmt.Sprintf("invalid placement constraint: %v", err)
		for _, t := range tasks {
			s.wait(t, msg, ds)
		}
		s.noteWaiting(g, len(tasks), msg)
		return
	}
	if g.preset {
		s.placePreset(g, p, tasks, ds)
		return
	}

	// Filter every node once for the whole group: O(N·F).
	h := &candidates{service: g.service}
	var rej rejections
	for _, n := range s.nodes {
		if n.node == nil {
			continue
		}
		if stage, r, ok := p.check(n, 0); !ok {
			rej.add(stage, r)
			continue
		}
		h.items = append(h.items, candidate{n: n, service: n.byService[g.service]})
	}
	heap.Init(h)
	// Then O(log N) per task.
	for i, t := range tasks {
		if h.Len() == 0 {
			msg := rej.message()
			for _, t := range tasks[i:] {
				s.wait(t, msg, ds)
			}
			s.noteWaiting(g, len(tasks)-i, msg)
			return
		}
		c := &h.items[0]
		s.assign(t, c.n.id, ds)
		c.service++
		if stage, r, ok := p.check(c.n, p.dynamic); !ok {
			heap.Pop(h)
			rej.add(stage, r)
		} else {
			heap.Fix(h, 0)
		}
	}
	s.noteWaiting(g, 0, "")
}

// placePreset decides for tasks whose node is preset: only that node is checked.
func (s *Scheduler) placePreset(g *group, p *pipeline, tasks []*api.Task, ds *[]*decision) {
	waiting, msg := 0, ""
	for _, t := range tasks {
		n := s.nodes[t.NodeID]
		switch {
		case n == nil || n.node == nil:
			msg = fmt.Sprintf("node %s is not in the cluster", t.NodeID)
		default:
			if _, r, ok := p.check(n, 0); !ok {
				msg = fmt.Sprintf("node %s %s", t.NodeID, r.one)
			} else {
				s.assign(t, n.id, ds)
				continue
			}
		}
		s.wait(t, msg, ds)
		waiting++
	}
	if waiting > 0 && msg != g.waiting {
		s.log.Debug("tasks cannot run on their node", "service.id", g.service, "tasks", waiting, "reason", msg)
	}
	g.waiting = msg
}

// assign decides t goes to node, and counts it there at once.
func (s *Scheduler) assign(t *api.Task, node string, ds *[]*decision) {
	cpu, mem := reservation(t)
	s.setUse(t.ID, use{node: node, service: t.ServiceID, cpu: cpu, mem: mem, ports: hostPorts(t), active: true}, true)
	s.removePending(t.ID)
	*ds = append(*ds, &decision{t: t, node: node})
}

// wait leaves t pending with msg; only a changed message is written.
func (s *Scheduler) wait(t *api.Task, msg string, ds *[]*decision) {
	if t.Status.State == api.TaskStatePending && t.Status.Message == msg {
		return
	}
	*ds = append(*ds, &decision{t: t, msg: msg})
}

// noteWaiting logs, once, that tasks of g fit nowhere, and when the reason
// changes (at debug: counts change with every node that comes and goes).
func (s *Scheduler) noteWaiting(g *group, tasks int, msg string) {
	switch {
	case msg == g.waiting:
	case g.waiting == "":
		s.log.Info("tasks cannot be placed", "service.id", g.service, "tasks", tasks, "reason", msg)
	case msg == "":
		s.log.Debug("tasks can be placed again", "service.id", g.service)
	default:
		s.log.Debug("tasks cannot be placed", "service.id", g.service, "tasks", tasks, "reason", msg)
	}
	g.waiting = msg
}

// candidate is a feasible node in a group's heap; service caches the node's
// count of the group's service.
type candidate struct {
	n       *nodeInfo
	service int
}

// candidates is a min-heap of feasible nodes: fewest tasks of the service,
// then fewest tasks, then node ID (so ties break the same way every time).
type candidates struct {
	service string
	items   []candidate
}

func (h *candidates) Len() int { return len(h.items) }

func (h *candidates) Less(i, j int) bool {
	a, b := &h.items[i], &h.items[j]
	if a.service != b.service {
		return a.service < b.service
	}
	if a.n.active != b.n.active {
		return a.n.active < b.n.active
	}
	return a.n.id < b.n.id
}

func (h *candidates) Swap(i, j int) { h.items[i], h.items[j] = h.items[j], h.items[i] }

func (h *candidates) Push(x any) { h.items = append(h.items, x.(candidate)) }

func (h *candidates) Pop() any {
	last := h.items[len(h.items)-1]
	h.items = h.items[:len(h.items)-1]
	return last
}
