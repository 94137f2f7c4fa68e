// Package replicated is the orchestrator of replicated services: it keeps
// slots 1..replicas of each such service occupied by a task that runs the
// service's task spec, on a node that is not lost.
//
// New builds an Orchestrator and starts nothing; Run is a leader-only loop
// (see orchestrator.Run): it reconciles every replicated service, then
// reacts to changes of services, of tasks that leave their slot, and of
// nodes that are lost. What one reconcile of a service does is planService's
// doc; tasks whose service is gone get DesiredState REMOVE.
package replicated

import (
	"context"
	"log/slog"
	"slices"
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

// Orchestrator reconciles replicated services with their tasks.
type Orchestrator struct {
	store  *store.MemoryStore
	clock  orchestrator.Clock
	update orchestrator.Updater
	log    *slog.Logger
}

// New returns an orchestrator of the replicated services in s.
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
	o.log = o.log.With("module", "orchestrator/replicated")
	return o
}

// Run reconciles until ctx ends (then it returns nil) or a fatal error.
func (o *Orchestrator) Run(ctx context.Context) error {
	return orchestrator.Run(ctx, o.store, o.clock, o.log, o)
}

// Reconcile plans every replicated service, and REMOVE for the slotted
// tasks of services that no longer exist. Run calls it.
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
		byService := map[string][]*api.Task{}
		for _, t := range tasks {
			if t.Slot != 0 {
				byService[t.ServiceID] = append(byService[t.ServiceID], t)
			}
		}
		node := orchestrator.Nodes(tx)
		now := o.clock.Now()
		var writes []orchestrator.Write
		for _, svc := range services {
			if orchestrator.IsReplicated(svc) {
				writes = append(writes, o.plan(svc, byService[svc.ID], node, now)...)
			}
			delete(byService, svc.ID)
		}
		for _, ts := range byService {
			writes = append(writes, orchestrator.RemoveAll(ts)...)
		}
		return writes, nil
	})
}

type slotKey struct {
	service string
	slot    uint64
}

// Handle reconciles the replicated services that changed, whose tasks left
// their slot (deleted, or stopped by someone else), or that had tasks on a
// node that was lost; and removes the tasks of deleted services. Run calls it.
func (o *Orchestrator) Handle(ctx context.Context, changes []store.Change) error {
	var (
		services = map[string]bool{}
		removed  = map[string]bool{}
		slots    = map[slotKey]bool{}
		nodes    = map[string]bool{}
	)
	for _, c := range changes {
		for _, ev := range c.Events {
			switch obj := ev.Object.(type) {
			case *api.Service:
				if !orchestrator.IsReplicated(obj) {
					continue
				}
				if ev.Action == api.WatchActionKindRemove {
					removed[obj.ID] = true
					delete(services, obj.ID)
				} else {
					services[obj.ID] = true
				}
			case *api.Task:
				if obj.Slot != 0 && orchestrator.LeftCurrent(ev) {
					slots[slotKey{obj.ServiceID, obj.Slot}] = true
				}
			case *api.Node:
				if ev.Action == api.WatchActionKindRemove ||
					ev.Action == api.WatchActionKindUpdate && !orchestrator.NodeLost(ev.OldObject.(*api.Node)) && orchestrator.NodeLost(obj) {
					nodes[obj.ID] = true
				}
			}
		}
	}
	if len(services)+len(removed)+len(slots)+len(nodes) == 0 {
		return nil
	}
	var stranded map[string]int // per lost node, its current tasks
	err := orchestrator.Converge(ctx, o.store, func(tx store.ReadTx) ([]orchestrator.Write, error) {
		stranded = map[string]int{}
		dirty := map[string]bool{}
		for id := range services {
			dirty[id] = true
		}
		for k := range slots {
			if dirty[k.service] || removed[k.service] {
				continue
			}
			ts, err := store.Find[*api.Task](tx, store.BySlot(k.service, k.slot))
			if err != nil {
				return nil, err
			}
			if !slices.ContainsFunc(ts, orchestrator.IsCurrent) {
				dirty[k.service] = true
			}
		}
		for id := range nodes {
			ts, err := store.Find[*api.Task](tx, store.ByNodeID(id))
			if err != nil {
				return nil, err
			}
			for _, t := range ts {
				if t.Slot != 0 && orchestrator.IsCurrent(t) && !removed[t.ServiceID] {
					dirty[t.ServiceID] = true
					stranded[id]++
				}
			}
		}
		node := orchestrator.Nodes(tx)
		now := o.clock.Now()
		var writes []orchestrator.Write
		for id := range removed {
			ts, err := store.Find[*api.Task](tx, store.ByServiceID(id))
			if err != nil {
				return nil, err
			}
			writes = append(writes, orchestrator.RemoveAll(ts)...)
		}
		for id := range dirty {
			ts, err := store.Find[*api.Task](tx, store.ByServiceID(id))
			if err != nil {
				return nil, err
			}
			switch svc := store.Get[*api.Service](tx, id); {
			case svc == nil:
				writes = append(writes, orchestrator.RemoveAll(ts)...)
			case orchestrator.IsReplicated(svc):
				writes = append(writes, o.plan(svc, ts, node, now)...)
			}
		}
		return writes, nil
	})
	for id, n := range stranded {
		o.log.Info("node lost; replacing its tasks elsewhere", "node.id", id, "tasks", n)
	}
	return err
}

func (o *Orchestrator) plan(svc *api.Service, tasks []*api.Task, node func(string) *api.Node, now time.Time) []orchestrator.Write {
	p := planService(svc, tasks, node, o.update, now)
	if len(p.writes) > 0 {
		o.log.Debug("reconciling service", "service.id", svc.ID, "created", p.created, "removed", p.removed,
			"moved", p.moved, "updated", p.refreshed)
	}
	return p.writes
}
