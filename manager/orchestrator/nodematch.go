package orchestrator

import (
	"github.com/flotilla/flotilla/api"
)

// NodeLost reports whether the tasks on a node must stop: the node was
// removed from the store (n is nil), is DOWN, or is drained. A paused node
// keeps its tasks.
func NodeLost(n *api.Node) bool {
	return n == nil || n.Status.State == api.NodeStatusDown || n.Spec.Availability == api.NodeAvailabilityDrain
}

// NodeOpen reports whether a node takes new tasks: READY and ACTIVE.
func NodeOpen(n *api.Node) bool {
	return n != nil && n.Status.State == api.NodeStatusReady && n.Spec.Availability == api.NodeAvailabilityActive
}
