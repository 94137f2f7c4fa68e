package orchestrator

import (
	"net"
	"strings"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/api/constraint"
)

// NodeMatches reports whether n satisfies every constraint (an empty list
// matches every node). Attributes: node.id, node.hostname (the description's
// hostname), node.role ("manager" or "worker", the current role),
// node.ip (the address the agent connects from, without a port),
// node.platform.os, node.platform.arch, node.labels.NAME (the spec's labels;
// the name is matched exactly, else ignoring case since constraint keys are
// lower-cased). An absent attribute reads as "".
func NodeMatches(cs []constraint.Constraint, n *api.Node) bool {
	for _, c := range cs {
		if !c.Match(nodeAttribute(n, c.Key)) {
			return false
		}
	}
	return true
}

func nodeAttribute(n *api.Node, key string) string {
	switch key {
	case "node.id":
		return n.ID
	case "node.hostname":
		if n.Description != nil {
			return n.Description.Hostname
		}
		return ""
	case "node.role":
		if n.Role == api.NodeRoleManager {
			return "manager"
		}
		return "worker"
	case "node.ip":
		if host, _, err := net.SplitHostPort(n.Status.Addr); err == nil {
			return host
		}
		return n.Status.Addr
	case "node.platform.os":
		if n.Description != nil && n.Description.Platform != nil {
			return n.Description.Platform.OS
		}
		return ""
	case "node.platform.arch":
		if n.Description != nil && n.Description.Platform != nil {
			return n.Description.Platform.Architecture
		}
		return ""
	}
	name, ok := strings.CutPrefix(key, "node.labels.")
	if !ok {
		return ""
	}
	labels := n.Spec.Annotations.Labels
	if v, ok := labels[name]; ok {
		return v
	}
	for k, v := range labels {
		if strings.EqualFold(k, name) {
			return v
		}
	}
	return ""
}

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
