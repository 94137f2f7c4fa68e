// Package global is the orchestrator of global services: one task per
// eligible node.
//
// New builds an Orchestrator and starts nothing; Run is a leader-only loop
// (see orchestrator.Run): it reconciles every global service on every node,
// then reacts to changes of services, of nodes, and of tasks that stop being
// current. What one reconcile does is planService's doc; tasks whose service
// is gone get DesiredState REMOVE.
package global

import (
	"context"
	"log/slog"
	"time"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/manager/orchestrator"
	"github.com/flotilla/flotilla/manager/store"
)

// Config holds an Orchestrator's dependencies; the zero value of each field
// is a sensible default.
type Config struct {
	// Clock stamps new tasks; nil means the real clock.
	Clock orchestrator.Clock
	// Updater picks which out-of-date tasks are replaced now; nil means
	// orchestrator.AllAtOnce.
	Updater orchestrator.Updater
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

// Orchestrator reconciles global services with their tasks.
type Orchestrator struct {
	store  *store.MemoryStore
	clock  orchestrator.Clock
	update orchestrator.Updater
	log    *slog.Logger
}

// New returns an orchestrator of the global services in s.
func New(s *store.MemoryStore, cfg Config) *Orchestrator {
	o := &Orchestrator{store: s, clock: cfg.Clock, update: cfg.Updater, log: cfg.Logger}
	if o.clock == nil {
		o.clock = orchestrator.RealClock()
	}
	if o.update == nil {
		o.update = orchestrator.AllAtOnce
	}
	if o.log == nil {
		o.log = slog.Default()
	}
	o.log = o.log.With("module", "orchestrator/global")
	return o
}

// Run reconciles until ctx ends (then it returns nil) or a fatal error.
func (o *Orchestrator) Run(ctx context.Context) error {
	return orchestrator.Run(ctx, o.store, o.clock, o.log, o)
}

// Reconcile plans every global service on every node, and REMOVE for the
// unslotted tasks of services that no longer exist. Run calls it.
func (o *Orchestrator) Reconcile(ctx context.Context) error {
	return orchestrator.Converge(ctx, o.store, func(tx store.ReadTx) ([]orchestrator.Write, error) {
		services, err := store.Find[*api.Service](tx, store.All())
		if err != nil {
			return nil, err
		}
		tasks, err := store.Find[*api.Task](tx, store.All())
		if err != nil {
			return nil, err
		}
		ids, node, err := allNodes(tx)
		if err != nil {
			return nil, err
		}
		byService := map[string][]*api.Task{}
		for _, t := range tasks {
			if t.Slot == 0 {
				byService[t.ServiceID] = append(byService[t.ServiceID], t)
			}
		}
		now := o.clock.Now()
		var writes []orchestrator.Write
		for _, svc := range services {
			if orchestrator.IsGlobal(svc) {
				writes = append(writes, o.plan(svc, ids, byService[svc.ID], node, now)...)
			}
			delete(byService, svc.ID)
		}
		for _, ts := range byService {
			writes = append(writes, orchestrator.RemoveAll(ts)...)
		}
		return writes, nil
	})
}

// Handle reconciles the global services that changed (on every node), the
// nodes that changed or whose task stopped being current (for every global
// service), and removes the tasks of deleted services. Run calls it.
func (o *Orchestrator) Handle(ctx context.Context, changes []store.Change) error {
	var (
		services = map[string]bool{}
		removed  = map[string]bool{}
		nodes    = map[string]bool{}
	)
	for _, c := range changes {
		for _, ev := range c.Events {
			switch obj := ev.Object.(type) {
			case *api.Service:
				if !orchestrator.IsGlobal(obj) {
					continue
				}
				if ev.Action == api.WatchActionKindRemove {
					removed[obj.ID] = true
					delete(services, obj.ID)
				} else {
					services[obj.ID] = true
				}
			case *api.Task:
				if obj.Slot == 0 && obj.NodeID != "" && orchestrator.LeftCurrent(ev) {
					nodes[obj.NodeID] = true
				}
			case *api.Node:
				nodes[obj.ID] = true
			}
		}
	}
	if len(services)+len(removed)+len(nodes) == 0 {
		return nil
	}
	return orchestrator.Converge(ctx, o.store, func(tx store.ReadTx) ([]orchestrator.Write, error) {
		now := o.clock.Now()
		var writes []orchestrator.Write
		for id := range removed {
			ts, err := store.Find[*api.Task](tx, store.ByServiceID(id))
			if err != nil {
				return nil, err
			}
			writes = append(writes, orchestrator.RemoveAll(ts)...)
		}
		if len(services) > 0 {
			ids, node, err := allNodes(tx)
			if err != nil {
				return nil, err
			}
			for id := range services {
				ts, err := store.Find[*api.Task](tx, store.ByServiceID(id))
				if err != nil {
					return nil, err
				}
				ts = unslotted(ts)
				switch svc := store.Get[*api.Service](tx, id); {
				case svc == nil:
					writes = append(writes, orchestrator.RemoveAll(ts)...)
				case orchestrator.IsGlobal(svc):
					writes = append(writes, o.plan(svc, ids, ts, node, now)...)
				}
			}
		}
		if len(nodes) == 0 {
			return writes, nil
		}
		all, err := store.Find[*api.Service](tx, store.All())
		if err != nil {
			return nil, err
		}
		node := orchestrator.Nodes(tx)
		for id := range nodes {
			ts, err := store.Find[*api.Task](tx, store.ByNodeID(id))
			if err != nil {
				return nil, err
			}
			byService := map[string][]*api.Task{}
			for _, t := range unslotted(ts) {
				byService[t.ServiceID] = append(byService[t.ServiceID], t)
			}
			for _, svc := range all {
				if orchestrator.IsGlobal(svc) && !services[svc.ID] {
					writes = append(writes, o.plan(svc, []string{id}, byService[svc.ID], node, now)...)
				}
			}
		}
		return writes, nil
	})
}

func (o *Orchestrator) plan(svc *api.Service, nodeIDs []string, tasks []*api.Task, node func(string) *api.Node, now time.Time) []orchestrator.Write {
	p := planService(svc, nodeIDs, tasks, node, o.update, now)
	if len(p.writes) > 0 {
		o.log.Debug("reconciling service", "service.id", svc.ID, "created", p.created, "stopped", p.stopped,
			"updated", p.refreshed, "surplus", p.extra)
	}
	return p.writes
}

// allNodes lists the IDs of every node, and a lookup that serves them.
func allNodes(tx store.ReadTx) ([]string, func(string) *api.Node, error) {
	nodes, err := store.Find[*api.Node](tx, store.All())
	if err != nil {
		return nil, nil, err
	}
	ids := make([]string, len(nodes))
	byID := make(map[string]*api.Node, len(nodes))
	for i, n := range nodes {
		ids[i] = n.ID
		byID[n.ID] = n
	}
	return ids, func(id string) *api.Node { return byID[id] }, nil
}

func unslotted(ts []*api.Task) []*api.Task {
	out := ts[:0]
	for _, t := range ts {
		if t.Slot == 0 {
			out = append(out, t)
		}
	}
	return out
}
