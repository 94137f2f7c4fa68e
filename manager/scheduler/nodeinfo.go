package scheduler

import (
	"strconv"
	"strings"

	"github.com/flotilla/flotilla/api"
)

// use is what one task holds on its node.
type use struct {
	node    string
	service string
	cpu     int64 // reserved nano CPUs
	mem     int64 // reserved memory bytes
	// ports are the host-mode ports the task publishes on its node
	// ("8080/tcp", comma-separated; a string keeps use comparable).
	ports string
	// active: the task is still desired running, so it counts for spreading
	// and max replicas. A task being stopped keeps its reservation until it
	// has stopped, but no longer counts as a replica.
	active bool
}

// usage says what t holds: a task holds its reservation on its node from
// ASSIGNED until it stops (any state past RUNNING) or is deleted.
func usage(t *api.Task) (use, bool) {
	if t.NodeID == "" || t.Status.State < api.TaskStateAssigned || t.Status.State > api.TaskStateRunning {
		return use{}, false
	}
	cpu, mem := reservation(t)
	return use{
		node:    t.NodeID,
		service: t.ServiceID,
		cpu:     cpu,
		mem:     mem,
		ports:   hostPorts(t),
		active:  t.DesiredState <= api.TaskStateRunning,
	}, true
}

// hostPorts are the host-mode ports with a fixed number that t publishes on
// its node, as "8080/tcp" keys joined by commas ("" for none). Two tasks
// with a common key cannot share a node.
func hostPorts(t *api.Task) string {
	var ports []*api.PortConfig
	if t.Endpoint != nil {
		ports = t.Endpoint.Ports
		if len(ports) == 0 && t.Endpoint.Spec != nil {
			ports = t.Endpoint.Spec.Ports
		}
	}
	var keys []string
	for _, p := range ports {
		if p.PublishMode == api.PublishModeHost && p.PublishedPort != 0 {
			keys = append(keys, portKey(p))
		}
	}
	return strings.Join(keys, ",")
}

func portKey(p *api.PortConfig) string {
	return strconv.FormatUint(uint64(p.PublishedPort), 10) + "/" + strings.ToLower(p.Protocol.String())
}

// reservation is the CPU and memory a task reserves.
func reservation(t *api.Task) (cpu, mem int64) {
	if r := t.Spec.Resources; r != nil && r.Reservations != nil {
		return r.Reservations.NanoCPUs, r.Reservations.MemoryBytes
	}
	return 0, 0
}

// nodeInfo is a node's record and what its tasks hold.
type nodeInfo struct {
	id string
	// node is nil while tasks name a node the store does not have (yet or
	// any more); such a node takes no tasks.
	node *api.Node

	reservedCPU int64
	reservedMem int64
	// holding counts the tasks that hold a reservation here.
	holding int
	// active counts those still desired running, in total and per service.
	active    int
	byService map[string]int
	// ports counts the tasks holding each host port ("8080/tcp").
	ports map[string]int
}

func newNodeInfo(id string) *nodeInfo {
	return &nodeInfo{id: id, byService: map[string]int{}}
}

func (n *nodeInfo) holdPorts(keys string, delta int) {
	if keys == "" {
		return
	}
	if n.ports == nil {
		n.ports = map[string]int{}
	}
	for _, k := range strings.Split(keys, ",") {
		if c := n.ports[k] + delta; c > 0 {
			n.ports[k] = c
		} else {
			delete(n.ports, k)
		}
	}
}

// capacity is the node's total CPU and memory.
func (n *nodeInfo) capacity() (cpu, mem int64) {
	if d := n.node.Description; d != nil && d.Resources != nil {
		return d.Resources.NanoCPUs, d.Resources.MemoryBytes
	}
	return 0, 0
}

func (n *nodeInfo) hold(u use) {
	n.reservedCPU += u.cpu
	n.reservedMem += u.mem
	n.holding++
	n.holdPorts(u.ports, 1)
	if u.active {
		n.active++
		n.byService[u.service]++
	}
}

func (n *nodeInfo) release(u use) {
	n.reservedCPU -= u.cpu
	n.reservedMem -= u.mem
	n.holding--
	n.holdPorts(u.ports, -1)
	if u.active {
		n.active--
		if c := n.byService[u.service] - 1; c > 0 {
			n.byService[u.service] = c
		} else {
			delete(n.byService, u.service)
		}
	}
}

// info returns the node's info, making a placeholder for an unknown node.
func (s *Scheduler) info(id string) *nodeInfo {
	n := s.nodes[id]
	if n == nil {
		n = newNodeInfo(id)
		s.nodes[id] = n
	}
	return n
}

func (s *Scheduler) setNode(node *api.Node) {
	s.info(node.ID).node = node
}

func (s *Scheduler) removeNode(id string) {
	n := s.nodes[id]
	if n == nil {
		return
	}
	if n.holding == 0 {
		delete(s.nodes, id)
		return
	}
	// Its tasks are still in the store; keep counting them until they go.
	n.node = nil
}

// setUse records what task id holds (nothing when holds is false) and reports
// whether it released anything it held before.
func (s *Scheduler) setUse(id string, u use, holds bool) (released bool) {
	old, had := s.uses[id]
	if had && holds && old == u {
		return false
	}
	if had {
		n := s.nodes[old.node]
		n.release(old)
		if n.node == nil && n.holding == 0 {
			delete(s.nodes, old.node)
		}
	}
	if holds {
		s.info(u.node).hold(u)
		s.uses[id] = u
	} else {
		delete(s.uses, id)
	}
	return had
}
