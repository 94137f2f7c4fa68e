package orchestrator

import (
	"time"

	gogoproto "github.com/gogo/protobuf/proto"
	"github.com/gogo/protobuf/types"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/api/identity"
)

// NewTask is a new task of svc in NEW state, wanted RUNNING: in slot (a
// replicated service) or on nodeID (a global service; "" lets the scheduler
// place it).
func NewTask(svc *api.Service, slot uint64, nodeID string, now time.Time) *api.Task {
	ts, _ := types.TimestampProto(now)
	t := &api.Task{
		ID:                 identity.NewID(),
		ServiceID:          svc.ID,
		Slot:               slot,
		NodeID:             nodeID,
		Spec:               *svc.Spec.Task.Copy(),
		ServiceAnnotations: *svc.Spec.Annotations.Copy(),
		SpecVersion:        svc.SpecVersion,
		DesiredState:       api.TaskStateRunning,
		Status:             api.TaskStatus{State: api.TaskStateNew, Timestamp: ts, Message: "created"},
	}
	// The task carries its ports: the executor publishes host-mode ones on
	// its node, and the scheduler keeps two tasks with the same host port
	// off one node.
	switch {
	case svc.Endpoint != nil:
		t.Endpoint = svc.Endpoint.Copy()
	case svc.Spec.Endpoint != nil && len(svc.Spec.Endpoint.Ports) > 0:
		t.Endpoint = &api.Endpoint{Spec: svc.Spec.Endpoint.Copy()}
		for _, p := range svc.Spec.Endpoint.Ports {
			t.Endpoint.Ports = append(t.Endpoint.Ports, p.Copy())
		}
	}
	return t
}

// IsCurrent reports whether t is still wanted (DesiredState at most RUNNING).
func IsCurrent(t *api.Task) bool { return t.DesiredState <= api.TaskStateRunning }

// Ended reports whether t is past RUNNING: it completed, failed, was
// rejected, shut down or orphaned. Nothing of it runs any more.
func Ended(t *api.Task) bool { return t.Status.State > api.TaskStateRunning }

// Live reports whether t may have a container on its node: assigned and not
// ended. A task that is not live can be deleted without leaking anything.
func Live(t *api.Task) bool {
	return t.Status.State >= api.TaskStateAssigned && !Ended(t)
}

// IsReplicated and IsGlobal tell the service modes the orchestrators own
// (jobs are not theirs).
func IsReplicated(s *api.Service) bool { return s.Spec.Mode.GetReplicated() != nil }

// IsGlobal: see IsReplicated.
func IsGlobal(s *api.Service) bool { return s.Spec.Mode.GetGlobal() != nil }

// Newer orders tasks by creation: the later Meta.CreatedAt, then the greater
// ID (so that the order is total).
func Newer(a, b *api.Task) bool {
	if c := compareTimestamps(a.Meta.CreatedAt, b.Meta.CreatedAt); c != 0 {
		return c > 0
	}
	return a.ID > b.ID
}

// Current splits tasks by key into each key's current task (the newest
// current one) and the surplus: other current tasks with the same key, which
// should not exist and are to be shut down.
func Current[K comparable](tasks []*api.Task, key func(*api.Task) K) (current map[K]*api.Task, surplus []*api.Task) {
	current = map[K]*api.Task{}
	for _, t := range tasks {
		if !IsCurrent(t) {
			continue
		}
		k := key(t)
		cur, ok := current[k]
		switch {
		case !ok:
			current[k] = t
		case Newer(t, cur):
			current[k] = t
			surplus = append(surplus, cur)
		default:
			surplus = append(surplus, t)
		}
	}
	return current, surplus
}

// SpecCheck tells whether tasks run the spec of their service.
type SpecCheck struct {
	svc *api.Service
	// equal caches the answer per task SpecVersion: every task made at a
	// SpecVersion carries the service's spec of that version, so one
	// comparison answers for all of them (proto.Equal is reflective and
	// costs microseconds; a service may have 100k tasks).
	equal map[uint64]bool
}

// NewSpecCheck checks tasks against svc.
func NewSpecCheck(svc *api.Service) *SpecCheck {
	return &SpecCheck{svc: svc, equal: map[uint64]bool{}}
}

// Outdated reports whether t must be replaced to run its service's task
// spec. A change of the service that leaves the task spec alone (replicas,
// labels) bumps SpecVersion but outdates nothing.
func (c *SpecCheck) Outdated(t *api.Task) bool {
	if t.SpecVersion == c.svc.SpecVersion {
		return false
	}
	eq, ok := c.equal[t.SpecVersion]
	if !ok {
		eq = gogoproto.Equal(&t.Spec, &c.svc.Spec.Task)
		c.equal[t.SpecVersion] = eq
	}
	return !eq
}

// StatusTime is when t's status was last reported, or when the task was
// last written if the report carried no time.
func StatusTime(t *api.Task) time.Time {
	ts := t.Status.Timestamp
	if ts == nil {
		ts = t.Meta.UpdatedAt
	}
	if ts == nil {
		return time.Time{}
	}
	tm, err := types.TimestampFromProto(ts)
	if err != nil {
		return time.Time{}
	}
	return tm
}

func compareTimestamps(a, b *types.Timestamp) int {
	var as, bs int64
	var an, bn int32
	if a != nil {
		as, an = a.Seconds, a.Nanos
	}
	if b != nil {
		bs, bn = b.Seconds, b.Nanos
	}
	switch {
	case as != bs:
		if as < bs {
			return -1
		}
		return 1
	case an != bn:
		if an < bn {
			return -1
		}
		return 1
	}
	return 0
}
