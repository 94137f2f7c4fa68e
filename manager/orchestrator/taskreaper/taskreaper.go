// Package taskreaper deletes tasks nobody needs any more: old history
// beyond the cluster's TaskHistoryRetentionLimit, tasks asked to be removed
// (DesiredState REMOVE), and tasks of deleted services, each once nothing of
// it can run any more (reapSlot, keepOf).
//
// New builds a Reaper and starts nothing; Run is a leader-only loop (see
// orchestrator.Run): it reaps the whole store, then the slots whose tasks
// changed, the tasks of removed services and nodes, and the whole store
// again when the retention limit changes. Deletes go in store batches.
package taskreaper

import (
	"context"
	"log/slog"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/api/defaults"
	"github.com/flotilla/flotilla/manager/orchestrator"
	"github.com/flotilla/flotilla/manager/store"
)

// Config holds a Reaper's dependencies; the zero value of each field is a
// sensible default.
type Config struct {
	// Clock times retries after errors; nil means the real clock.
	Clock orchestrator.Clock
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

// Reaper deletes old and removed tasks.
type Reaper struct {
	store *store.MemoryStore
	clock orchestrator.Clock
	log   *slog.Logger
	// limit is the retention limit the last reconcile used.
	limit int64
}

// New returns a task reaper of the tasks in s.
func New(s *store.MemoryStore, cfg Config) *Reaper {
	r := &Reaper{store: s, clock: cfg.Clock, log: cfg.Logger}
	if r.clock == nil {
		r.clock = orchestrator.RealClock()
	}
	if r.log == nil {
		r.log = slog.Default()
	}
	r.log = r.log.With("module", "orchestrator/taskreaper")
	return r
}

// Run reaps until ctx ends (then it returns nil) or a fatal error.
func (r *Reaper) Run(ctx context.Context) error {
	return orchestrator.Run(ctx, r.store, r.clock, r.log, r)
}

// slotKey names a slot: a replicated service's slot, or (slot 0) a global
// service's node.
type slotKey struct {
	service string
	slot    uint64
	node    string
}

func keyOf(t *api.Task) slotKey {
	if t.Slot != 0 {
		return slotKey{service: t.ServiceID, slot: t.Slot}
	}
	return slotKey{service: t.ServiceID, node: t.NodeID}
}

// Reconcile reaps every slot. Run calls it.
func (r *Reaper) Reconcile(ctx context.Context) error {
	return orchestrator.Converge(ctx, r.store, func(tx store.ReadTx) ([]orchestrator.Write, error) {
		r.limit = retentionLimit(tx)
		tasks, err := store.Find[*api.Task](tx, store.All())
		if err != nil {
			return nil, err
		}
		slots := map[slotKey][]*api.Task{}
		for _, t := range tasks {
			k := keyOf(t)
			slots[k] = append(slots[k], t)
		}
		return r.plan(tx, slots), nil
	})
}

// Handle reaps the slots with a task that is not current and changed, the
// tasks of removed services and nodes, and everything when the retention
// limit changed. Run calls it.
func (r *Reaper) Handle(ctx context.Context, changes []store.Change) error {
	var (
		keys     = map[slotKey]bool{}
		services = map[string]bool{}
		nodes    = map[string]bool{}
	)
	for _, c := range changes {
		for _, ev := range c.Events {
			switch obj := ev.Object.(type) {
			case *api.Task:
				// History and removed tasks, and tasks that ended (of a
				// service that may be gone).
				if ev.Action != api.WatchActionKindRemove && !orchestrator.IsCurrent(obj) ||
					ev.Action == api.WatchActionKindUpdate && orchestrator.Ended(obj) {
					keys[keyOf(obj)] = true
				}
			case *api.Service:
				if ev.Action == api.WatchActionKindRemove {
					services[obj.ID] = true
				}
			case *api.Node:
				if ev.Action == api.WatchActionKindRemove || obj.Status.State == api.NodeStatusDown {
					nodes[obj.ID] = true
				}
			case *api.Cluster:
				if ev.Action != api.WatchActionKindRemove && limitOf(obj) != r.limit {
					return r.Reconcile(ctx)
				}
			}
		}
	}
	if len(keys)+len(services)+len(nodes) == 0 {
		return nil
	}
	return orchestrator.Converge(ctx, r.store, func(tx store.ReadTx) ([]orchestrator.Write, error) {
		slots := map[slotKey][]*api.Task{}
		add := func(ts []*api.Task) {
			for _, t := range ts {
				slots[keyOf(t)] = nil
			}
		}
		for id := range services {
			ts, err := store.Find[*api.Task](tx, store.ByServiceID(id))
			if err != nil {
				return nil, err
			}
			add(ts)
		}
		for id := range nodes {
			ts, err := store.Find[*api.Task](tx, store.ByNodeID(id))
			if err != nil {
				return nil, err
			}
			add(ts)
		}
		for k := range keys {
			slots[k] = nil
		}
		for k := range slots {
			ts, err := slotTasks(tx, k)
			if err != nil {
				return nil, err
			}
			slots[k] = ts
		}
		return r.plan(tx, slots), nil
	})
}

// plan picks the deletes of the given slots (each with all its tasks).
func (r *Reaper) plan(tx store.ReadTx, slots map[slotKey][]*api.Task) []orchestrator.Write {
	node := orchestrator.Nodes(tx)
	nodeGone := func(id string) bool { return node(id) == nil }
	nodeDown := func(id string) bool {
		n := node(id)
		return n != nil && n.Status.State == api.NodeStatusDown
	}
	services := map[string]bool{}
	var writes []orchestrator.Write
	for k, ts := range slots {
		if len(ts) == 0 {
			continue
		}
		exists, ok := services[k.service]
		if !ok {
			exists = store.Get[*api.Service](tx, k.service) != nil
			services[k.service] = exists
		}
		keep := keepOf(ts, r.limit, k.slot == 0 && k.node != "" && nodeGone(k.node))
		for _, t := range reapSlot(ts, keep, !exists, nodeGone, nodeDown) {
			writes = append(writes, deleteTask(t.ID))
		}
	}
	if len(writes) > 0 {
		r.log.Debug("deleting tasks", "tasks", len(writes))
	}
	return writes
}

// slotTasks returns the tasks of a slot.
func slotTasks(tx store.ReadTx, k slotKey) ([]*api.Task, error) {
	var (
		ts  []*api.Task
		err error
	)
	switch {
	case k.slot != 0:
		return store.Find[*api.Task](tx, store.BySlot(k.service, k.slot))
	case k.node != "":
		ts, err = store.Find[*api.Task](tx, store.ByNodeID(k.node))
	default:
		ts, err = store.Find[*api.Task](tx, store.ByServiceID(k.service))
	}
	if err != nil {
		return nil, err
	}
	out := ts[:0]
	for _, t := range ts {
		if keyOf(t) == k {
			out = append(out, t)
		}
	}
	return out, nil
}

// deleteTask deletes a task, unless it came back to life meanwhile (it is
// current and its service exists, or it is live on an existing node that
// will still stop it).
func deleteTask(id string) orchestrator.Write {
	return func(tx store.Tx) error {
		t := store.Get[*api.Task](tx, id)
		if t == nil {
			return nil
		}
		n := store.Get[*api.Node](tx, t.NodeID)
		removedOnDownNode := t.DesiredState == api.TaskStateRemove && n != nil && n.Status.State == api.NodeStatusDown
		if orchestrator.IsCurrent(t) && store.Get[*api.Service](tx, t.ServiceID) != nil ||
			orchestrator.Live(t) && n != nil && !removedOnDownNode {
			return orchestrator.ErrChanged
		}
		return tx.Delete(api.KindTask, id)
	}
}

// retentionLimit is the cluster's task history retention limit.
func retentionLimit(tx store.ReadTx) int64 {
	clusters, err := store.Find[*api.Cluster](tx, store.All())
	if err != nil || len(clusters) == 0 {
		return defaults.TaskHistoryRetentionLimit
	}
	return limitOf(clusters[0])
}

func limitOf(c *api.Cluster) int64 { return c.Spec.Orchestration.TaskHistoryRetentionLimit }
