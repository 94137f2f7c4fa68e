package scheduler

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/api/constraint"
)

// reason is why a filter rejects a node, as a verb phrase for one node and
// for several: "lacks memory" / "lack memory".
type reason struct{ one, many string }

var (
	reasonDown     = reason{"is down", "are down"}
	reasonNotReady = reason{"is not ready", "are not ready"}
	reasonPaused   = reason{"is paused", "are paused"}
	reasonDrained  = reason{"is drained", "are drained"}
	reasonNoMemory = reason{"lacks memory", "lack memory"}
	reasonNoCPU    = reason{"lacks CPU", "lack CPU"}
)

// filter rejects nodes that cannot take a task of one placement group.
type filter interface {
	// check returns ok, or the reason n cannot take the task.
	check(n *nodeInfo) (r reason, ok bool)
}

// readyFilter keeps nodes whose agent is connected and READY.
type readyFilter struct{}

func (readyFilter) check(n *nodeInfo) (reason, bool) {
	switch n.node.Status.State {
	case api.NodeStatusReady:
		return reason{}, true
	case api.NodeStatusDown:
		return reasonDown, false
	}
	return reasonNotReady, false
}

// availabilityFilter keeps ACTIVE nodes: PAUSE and DRAIN take no new tasks.
type availabilityFilter struct{}

func (availabilityFilter) check(n *nodeInfo) (reason, bool) {
	switch n.node.Spec.Availability {
	case api.NodeAvailabilityPause:
		return reasonPaused, false
	case api.NodeAvailabilityDrain:
		return reasonDrained, false
	}
	return reason{}, true
}

// constraintFilter keeps nodes that satisfy every placement constraint.
type constraintFilter struct {
	cs  []constraint.Constraint
	why []reason // why[i]: the node does not satisfy cs[i]
}

func newConstraintFilter(exprs []string) (*constraintFilter, error) {
	cs, err := constraint.ParseAll(exprs)
	if err != nil {
		return nil, err
	}
	f := &constraintFilter{cs: cs, why: make([]reason, len(cs))}
	for i, c := range cs {
		op := "=="
		if c.Operator == constraint.NotEqual {
			op = "!="
		}
		text := c.Key + op + c.Value
		f.why[i] = reason{"does not satisfy constraint " + text, "do not satisfy constraint " + text}
	}
	return f, nil
}

func (f *constraintFilter) check(n *nodeInfo) (reason, bool) {
	for i, c := range f.cs {
		if !c.Match(constraint.NodeAttribute(n.node, c.Key)) {
			return f.why[i], false
		}
	}
	return reason{}, true
}

// maxReplicasFilter keeps nodes that run fewer than max tasks of the service.
type maxReplicasFilter struct {
	service string
	max     int
	why     reason
}

func newMaxReplicasFilter(service string, max uint64) *maxReplicasFilter {
	return &maxReplicasFilter{service: service, max: int(max), why: reason{
		fmt.Sprintf("already runs the maximum of %d replicas per node", max),
		fmt.Sprintf("already run the maximum of %d replicas per node", max),
	}}
}

func (f *maxReplicasFilter) check(n *nodeInfo) (reason, bool) {
	if n.byService[f.service] >= f.max {
		return f.why, false
	}
	return reason{}, true
}

// resourceFilter keeps nodes whose free CPU and memory cover the reservation.
type resourceFilter struct{ cpu, mem int64 }

func (f resourceFilter) check(n *nodeInfo) (reason, bool) {
	cpu, mem := n.capacity()
	if f.mem > 0 && f.mem > mem-n.reservedMem {
		return reasonNoMemory, false
	}
	if f.cpu > 0 && f.cpu > cpu-n.reservedCPU {
		return reasonNoCPU, false
	}
	return reason{}, true
}

// hostPortFilter keeps nodes where none of the task's host-mode ports is
// published by another task.
type hostPortFilter struct {
	keys []string
	why  []reason // why[i]: keys[i] is taken
}

func newHostPortFilter(ports string) *hostPortFilter {
	f := &hostPortFilter{keys: strings.Split(ports, ",")}
	for _, k := range f.keys {
		f.why = append(f.why, reason{"has host port " + k + " in use", "have host port " + k + " in use"})
	}
	return f
}

func (f *hostPortFilter) check(n *nodeInfo) (reason, bool) {
	for i, k := range f.keys {
		if n.ports[k] > 0 {
			return f.why[i], false
		}
	}
	return reason{}, true
}

// pipeline is the filters of one placement group, in order. The filters from
// index dynamic on depend on what runs on the node, so they are checked again
// after each task placed there; the others do not change during a pass.
type pipeline struct {
	filters []filter
	dynamic int
}

// newPipeline builds the filters for tasks like t.
func newPipeline(t *api.Task) (*pipeline, error) {
	p := &pipeline{filters: []filter{readyFilter{}, availabilityFilter{}}}
	var maxReplicas uint64
	if pl := t.Spec.Placement; pl != nil {
		if len(pl.Constraints) > 0 {
			f, err := newConstraintFilter(pl.Constraints)
			if err != nil {
				return nil, err
			}
			p.filters = append(p.filters, f)
		}
		maxReplicas = pl.MaxReplicas
	}
	p.dynamic = len(p.filters)
	if maxReplicas > 0 {
		p.filters = append(p.filters, newMaxReplicasFilter(t.ServiceID, maxReplicas))
	}
	if ports := hostPorts(t); ports != "" {
		p.filters = append(p.filters, newHostPortFilter(ports))
	}
	if cpu, mem := reservation(t); cpu > 0 || mem > 0 {
		p.filters = append(p.filters, resourceFilter{cpu: cpu, mem: mem})
	}
	return p, nil
}

// check runs the filters from index from on; when one rejects the node it
// returns its index and reason.
func (p *pipeline) check(n *nodeInfo, from int) (stage int, r reason, ok bool) {
	for i := from; i < len(p.filters); i++ {
		if r, ok := p.filters[i].check(n); !ok {
			return i, r, false
		}
	}
	return 0, reason{}, true
}

// rejections counts the nodes each filter rejected, for the message of tasks
// that fit nowhere.
type rejections struct {
	tally map[reason]*rejection
}

type rejection struct {
	r     reason
	stage int
	nodes int
}

func (rs *rejections) add(stage int, r reason) {
	if rs.tally == nil {
		rs.tally = map[reason]*rejection{}
	}
	x := rs.tally[r]
	if x == nil {
		x = &rejection{r: r, stage: stage}
		rs.tally[r] = x
	}
	x.nodes++
}

// message says why no node fits: the most common reasons first, then in
// filter order.
func (rs *rejections) message() string {
	if len(rs.tally) == 0 {
		return "no suitable node (the cluster has no nodes)"
	}
	xs := make([]*rejection, 0, len(rs.tally))
	for _, x := range rs.tally {
		xs = append(xs, x)
	}
	slices.SortFunc(xs, func(a, b *rejection) int {
		if c := cmp.Compare(b.nodes, a.nodes); c != 0 {
			return c
		}
		if c := cmp.Compare(a.stage, b.stage); c != 0 {
			return c
		}
		return strings.Compare(a.r.one, b.r.one)
	})
	var sb strings.Builder
	sb.WriteString("no suitable node (")
	for i, x := range xs {
		if i > 0 {
			sb.WriteString(", ")
		}
		if x.nodes == 1 {
			sb.WriteString("1 node ")
			sb.WriteString(x.r.one)
		} else {
			fmt.Fprintf(&sb, "%d nodes %s", x.nodes, x.r.many)
		}
	}
	sb.WriteString(")")
	return sb.String()
}
