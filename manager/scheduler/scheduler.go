// Package scheduler places tasks on nodes: it gives each task that is NEW or
// PENDING with desired state RUNNING a node and moves it to ASSIGNED, or
// leaves it PENDING with a message that says why it fits nowhere.
//
// # Shape
//
// New builds a Scheduler and starts nothing. Run is a leader-only loop: it
// reads the store once (ViewAndWatch), then follows its changes. Run's
// goroutine owns all the scheduler's state; nothing else touches it.
//
// The state is one nodeInfo per node (its record, the CPU and memory its tasks
// reserve, how many tasks it runs in total and per service) and the pending
// tasks, grouped by placement group: tasks of one service with the same
// placement and reservations, and so the same feasible nodes. A task holds its
// reservation on its node from ASSIGNED until it actually stops (state past
// RUNNING) or is deleted, whatever its desired state: a task being shut down
// still uses its memory. Only tasks still desired RUNNING count for spreading
// and for max replicas.
//
// # Placement
//
// A pass places the pending tasks of the groups that may have changed. Per
// group, a pipeline of filters (filter.go, each with one job: node ready,
// availability ACTIVE, constraints, max replicas, resources) runs once over
// every node; nodes that pass go into a min-heap ordered by (tasks of the
// service on the node, tasks on the node, node ID). Each task takes the
// heap's top node; the node's counts grow and, if the group's dynamic filters
// (max replicas, resources) still pass, it sifts down, else it leaves the heap
// and is counted under the filter that rejected it. A pass costs
// O(G·N·F + T·log N) for G groups, N nodes, F filters and T tasks, instead of
// O(T·N) for scoring every node for every task: 100,000 tasks of one service
// on 1,000 nodes are one scan of the nodes and 100,000 heap operations.
// Unlike Nomad, which samples log2(N) nodes per task to bound scoring, the
// heap keeps the spread exact at the same O(log N) per task; only groups of a
// single task (many one-replica services) pay the O(N) scan per task.
//
// Tasks whose node is preset (global services) go first and only check the
// filters against their node. Tasks that fit nowhere stay (or become) PENDING
// with "no suitable node (2 nodes lack memory, 1 node is drained)", each node
// counted under the first filter that rejected it; a task whose message did
// not change is not written again.
//
// # When passes run
//
// Passes run when something may have changed the answer: new pending tasks
// (their groups only), and for every waiting group a node added, changed or
// removed, or a task releasing what it held (it stopped, was deleted, or is
// no longer desired running). Changes of other tasks (an assigned task moving
// to RUNNING, our own writes) trigger nothing. A pass is debounced: the first
// relevant change arms a timer (50 ms) and the changes that arrive meanwhile
// are coalesced into one pass and one commit; when many new tasks arrive
// (largeBatch) the pass runs at once. So a task waits at most about the
// debounce before it is placed, and the scheduler makes at most one commit
// per debounce interval when changes trickle in.
//
// # Commits
//
// A pass's decisions are written with store.Batch (as few proposals as the
// proposal size allows). Each task's update re-reads the task and applies
// only if it is still NEW/PENDING, desired RUNNING and unassigned (or on its
// preset node). Decisions are applied to the node infos when made; those not
// committed (a proposal refused for a conflicting write is retried a few
// times on fresh reads first) are rolled back and their tasks placed again
// after a short delay.
package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/manager/store"
)

const (
	// defaultDebounce is how long changes are coalesced before a pass.
	defaultDebounce = 50 * time.Millisecond
	// defaultLargeBatch is how many new pending tasks start a pass at once.
	defaultLargeBatch = 4096
	// defaultRetryDelay is how long after a failed commit its tasks are placed again.
	defaultRetryDelay = 200 * time.Millisecond
	// commitAttempts bounds the retries of a batch refused for a conflicting write.
	commitAttempts = 3
)

// Scheduler assigns pending tasks to nodes. See the package documentation.
type Scheduler struct {
	store *store.MemoryStore
	log   *slog.Logger
	now   func() time.Time

	debounce   time.Duration
	largeBatch int
	retryDelay time.Duration

	// The rest is owned by Run's goroutine.
	nodes  map[string]*nodeInfo
	uses   map[string]use    // task ID -> what the task holds on its node
	groups map[string]*group // pending tasks by placement group
	// groupOf is the group key of each pending task.
	groupOf map[string]string
	// dirty are the groups the next pass looks at; dirtyAll: every group.
	dirty    map[string]bool
	dirtyAll bool
	// fresh counts tasks that became pending since the last pass.
	fresh int

	// applied is the version of the last change taken in; passed is the
	// version the last pass decided at (tests read it from other goroutines).
	applied uint64
	passed  atomic.Uint64
}

// New returns a Scheduler that reads and writes s. It starts nothing.
func New(s *store.MemoryStore, logger *slog.Logger) *Scheduler {
	if logger == nil {
		logger = slog.Default()
	}
	return &Scheduler{
		store:      s,
		log:        logger.With("module", "scheduler"),
		now:        time.Now,
		debounce:   defaultDebounce,
		largeBatch: defaultLargeBatch,
		retryDelay: defaultRetryDelay,
	}
}

// errWatchLost ends a loop whose store watch was closed under it (it fell
// behind, or the store was restored from a snapshot): Run reads the store again.
var errWatchLost = errors.New("store watch ended")

// Run places tasks until ctx ends; then it returns nil. It must run on the
// leader only, and one Run at a time.
func (s *Scheduler) Run(ctx context.Context) error {
	for {
		w, err := s.resync()
		if err != nil {
			return fmt.Errorf("scheduler: read the store: %w", err)
		}
		err = s.loop(ctx, w)
		w.Close()
		if ctx.Err() != nil {
			return nil
		}
		if !errors.Is(err, errWatchLost) {
			return err
		}
		s.log.Info("store watch ended; reading the store again", "err", err)
	}
}

// resync reads every node and task and starts a watch at that snapshot.
func (s *Scheduler) resync() (*store.Watch, error) {
	var (
		nodes []*api.Node
		tasks []*api.Task
		ferr  error
	)
	w, version, err := s.store.ViewAndWatch(func(tx store.ReadTx) {
		nodes, ferr = store.Find[*api.Node](tx, store.All())
		if ferr == nil {
			tasks, ferr = store.Find[*api.Task](tx, store.All())
		}
	})
	if err == nil {
		err = ferr
	}
	if err != nil {
		if w != nil {
			w.Close()
		}
		return nil, err
	}
	s.nodes = make(map[string]*nodeInfo, len(nodes))
	s.uses = make(map[string]use, len(tasks))
	s.groups = map[string]*group{}
	s.groupOf = map[string]string{}
	s.dirty = map[string]bool{}
	for _, n := range nodes {
		s.setNode(n)
	}
	for _, t := range tasks {
		s.setTask(t)
	}
	s.dirtyAll = true
	s.applied = version
	s.log.Debug("scheduler state loaded", "nodes", len(nodes), "tasks.pending", len(s.groupOf))
	return w, nil
}

func (s *Scheduler) loop(ctx context.Context, w *store.Watch) error {
	// The first pass runs at once: tasks may have waited for a new leader.
	timer := time.NewTimer(0)
	defer timer.Stop()
	armed := true
	for {
		select {
		case <-ctx.Done():
			return nil
		case c, ok := <-w.C:
			if !ok {
				return fmt.Errorf("%w: %v", errWatchLost, w.Err())
			}
			s.apply(c)
			switch {
			case s.fresh >= s.largeBatch:
				if err := s.drain(w); err != nil {
					return err
				}
				if s.pass(ctx) && !armed {
					timer.Reset(s.retryDelay)
					armed = true
				}
			case !armed && s.due():
				timer.Reset(s.debounce)
				armed = true
			}
		case <-timer.C:
			armed = false
			// Take in every change made so far, our last commits included, so
			// that the pass decides on the latest state it can know.
			if err := s.drain(w); err != nil {
				return err
			}
			if s.pass(ctx) {
				timer.Reset(s.retryDelay)
				armed = true
			}
		}
	}
}

// drain applies the changes already queued on the watch.
func (s *Scheduler) drain(w *store.Watch) error {
	for {
		select {
		case c, ok := <-w.C:
			if !ok {
				return fmt.Errorf("%w: %v", errWatchLost, w.Err())
			}
			s.apply(c)
		default:
			return nil
		}
	}
}

// due reports whether a pass has something to do.
func (s *Scheduler) due() bool {
	return len(s.groups) > 0 && (s.dirtyAll || len(s.dirty) > 0)
}

// apply follows one store change.
func (s *Scheduler) apply(c store.Change) {
	s.applied = c.Version
	for _, e := range c.Events {
		switch o := e.Object.(type) {
		case *api.Node:
			if e.Action == api.WatchActionKindRemove {
				s.removeNode(o.ID)
			} else {
				s.setNode(o)
			}
			// Any node change may make room or change why tasks wait.
			s.dirtyAll = true
		case *api.Task:
			if e.Action == api.WatchActionKindRemove {
				if s.setUse(o.ID, use{}, false) {
					s.dirtyAll = true
				}
				s.removePending(o.ID)
			} else {
				s.setTask(o)
			}
		}
	}
}

// setTask brings the state in line with a task's latest record.
func (s *Scheduler) setTask(t *api.Task) {
	u, holds := usage(t)
	if s.setUse(t.ID, u, holds) {
		s.dirtyAll = true
	}
	if isPending(t) {
		s.addPending(t)
	} else {
		s.removePending(t.ID)
	}
}

// isPending reports whether t is the scheduler's to place.
func isPending(t *api.Task) bool {
	return t.DesiredState == api.TaskStateRunning &&
		(t.Status.State == api.TaskStateNew || t.Status.State == api.TaskStatePending)
}

// addPending records t as pending; a task new to the set makes its group dirty.
func (s *Scheduler) addPending(t *api.Task) {
	if key, ok := s.groupOf[t.ID]; ok {
		// The task's spec does not change: it stays in its group.
		s.groups[key].tasks[t.ID] = t
		return
	}
	key := groupKey(t)
	g := s.groups[key]
	if g == nil {
		g = newGroup(key, t)
		s.groups[key] = g
	}
	g.tasks[t.ID] = t
	s.groupOf[t.ID] = key
	s.dirty[key] = true
	s.fresh++
}

func (s *Scheduler) removePending(id string) {
	key, ok := s.groupOf[id]
	if !ok {
		return
	}
	delete(s.groupOf, id)
	g := s.groups[key]
	delete(g.tasks, id)
	if len(g.tasks) == 0 {
		delete(s.groups, key)
		delete(s.dirty, key)
	}
}
