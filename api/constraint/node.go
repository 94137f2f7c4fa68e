package constraint

import (
	"net"
	"strings"

	"github.com/flotilla/flotilla/api"
)

// MatchNode reports whether n satisfies every constraint (an empty list
// matches every node). Attributes: node.id, node.hostname (the description's
// hostname), node.role ("manager" or "worker", the current role),
// node.ip (the address the agent connects from, without a port),
// node.platform.os, node.platform.arch, node.labels.NAME (the spec's labels;
// the name is matched exactly, else ignoring case since constraint keys are
// lower-cased). An absent attribute reads as "".
func MatchNode(cs []Constraint, n *api.Node) bool {
	for _, c := range cs {
		if !c.Match(NodeAttribute(n, c.Key)) {
			return false
		}
	}
	return true
}

// NodeAttribute is the value a constraint key names on a node; "" when the
// node has none.
func NodeAttribute(n *api.Node, key string) string {
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
