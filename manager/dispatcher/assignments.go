package dispatcher

import (
	"context"
	"fmt"
	"reflect"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/manager/store"
)

// Assignments
//
// Run's goroutine holds the dispatcher's only store watch. It hands every
// task change that concerns a node with an open Assignments stream to that
// stream's subscriber (Dispatcher.assigns, by node ID): the task itself when
// it is (still) assigned to the node and changed in a way the agent cares
// about, a "gone" marker when it was deleted or left the node. Subscribers
// keep only the latest item per task, so a stream that cannot keep up holds
// at most one item per task of its node. Each stream's handler goroutine
// turns the items into messages; the fan-out costs Run a map lookup per
// event, and the encoding is spread over the handlers.

const (
	// DefaultAssignmentsBatchWindow is the least time between two
	// incremental messages of a stream (see Config.AssignmentsBatchWindow).
	DefaultAssignmentsBatchWindow = 100 * time.Millisecond
	// DefaultAssignmentsBatchMax is the most changes in one incremental
	// message, and the number of waiting changes that makes a stream send
	// before its window ends (see Config.AssignmentsBatchMax).
	DefaultAssignmentsBatchMax = 1000
)

var errAssignmentsReplaced = status.Error(codes.Aborted,
	"replaced by a newer assignments stream of the same node")

// assigned says whether the agent of t's node must be given t: the
// scheduler (or the global orchestrator) placed it there and it has at
// least reached ASSIGNED.
func assigned(t *api.Task) bool {
	return t != nil && t.NodeID != "" && t.Status.State >= api.TaskStateAssigned
}

// sameForAgent says whether two versions of a task are the same for the
// agent that runs it: everything but the observed status (and the store's
// metadata). Status changes, whoever makes them, are not sent.
func sameForAgent(a, b *api.Task) bool {
	if a.NodeID != b.NodeID || a.DesiredState != b.DesiredState || a.SpecVersion != b.SpecVersion ||
		a.ServiceID != b.ServiceID || a.Slot != b.Slot || a.JobIteration != b.JobIteration {
		return false
	}
	x, y := *a, *b
	x.Meta, y.Meta = api.Meta{}, api.Meta{}
	x.Status, y.Status = api.TaskStatus{}, api.TaskStatus{}
	// Both come from decoding a store transaction, so equal fields have
	// equal representations (nil stays nil); a false difference would only
	// send one UPDATE too many.
	return reflect.DeepEqual(&x, &y)
}

// assignItem is the latest thing a stream has to tell its agent about one
// task.
type assignItem struct {
	version uint64    // store version of the change
	task    *api.Task // nil: the task is no longer the node's (deleted or moved)
}

// assignSub is one node's Assignments stream, as Run's fan-out sees it.
type assignSub struct {
	nodeID string
	ctx    context.Context // ends with the session, or when replaced
	cancel context.CancelCauseFunc
	notify chan struct{}

	mu sync.Mutex
	// resync asks the handler for a COMPLETE message built from the store
	// (set at registration and after Run's watch was restarted); base is
	// the store version Run had handed out then.
	resync  bool
	base    uint64
	pending map[string]assignItem // by task ID; only the latest per task
}

func (a *assignSub) wake() {
	select {
	case a.notify <- struct{}{}:
	default:
	}
}

// routeTasks hands the task changes of c to the Assignments streams of the
// nodes they concern. Changes made by the dispatcher's own status flush are
// recognised without comparing the task (l.own).
func (l *loop) routeTasks(c store.Change) {
	d := l.d
	var touched map[*assignSub]struct{}
	d.mu.RLock()
	for _, ev := range c.Events {
		t, ok := ev.Object.(*api.Task)
		if !ok {
			continue
		}
		var cur, old *api.Task
		statusOnly := false
		switch ev.Action {
		case api.WatchActionKindCreate:
			cur = t
		case api.WatchActionKindUpdate:
			cur = t
			old, _ = ev.OldObject.(*api.Task)
			if r, ok := l.own[t.ID]; ok && old != nil && old.Meta.Version >= r {
				delete(l.own, t.ID)
				statusOnly = old.Meta.Version == r
			}
		default:
			old = t
			delete(l.own, t.ID)
		}
		if len(d.assigns) == 0 {
			continue
		}
		push := func(nodeID string, it assignItem) {
			sub := d.assigns[nodeID]
			if sub == nil {
				return
			}
			sub.mu.Lock()
			sub.pending[t.ID] = it
			sub.mu.Unlock()
			if touched == nil {
				touched = map[*assignSub]struct{}{}
			}
			touched[sub] = struct{}{}
		}
		curIn, oldIn := assigned(cur), assigned(old)
		moved := oldIn && (!curIn || old.NodeID != cur.NodeID)
		if curIn && (!oldIn || moved || (!statusOnly && d.assigns[cur.NodeID] != nil && !sameForAgent(old, cur))) {
			push(cur.NodeID, assignItem{version: c.Version, task: cur})
		}
		if moved {
			push(old.NodeID, assignItem{version: c.Version})
		}
	}
	d.assignVersion.Store(c.Version)
	d.mu.RUnlock()
	for sub := range touched {
		sub.wake()
	}
}

// resyncAssignsLocked makes every stream send a COMPLETE message again: Run
// restarted its watch and may have missed changes. d.mu is held.
func (l *loop) resyncAssignsLocked(version uint64) {
	d := l.d
	d.assignVersion.Store(version)
	clear(l.own)
	for _, sub := range d.assigns {
		sub.mu.Lock()
		clear(sub.pending)
		sub.resync, sub.base = true, version
		sub.mu.Unlock()
		sub.wake()
	}
}

// Assignments streams the calling node's tasks: first a COMPLETE message
// with every task assigned to it (NodeID is the node, state at least
// ASSIGNED, whatever the desired state), then INCREMENTAL messages: UPDATE
// with the whole task when one is assigned to the node or changes in
// anything but its status, REMOVE (with the task ID only) when one is
// deleted or leaves the node. Status changes are never sent: the agent
// reported them itself, or they are the manager's business.
//
// Incremental messages are sent at most once per AssignmentsBatchWindow
// (the first change after a quiet window goes out at once, the ones that
// follow wait for the window to end and go together), and at once when
// AssignmentsBatchMax changes are waiting; a message carries at most
// AssignmentsBatchMax changes. ResultsIn is "<store version>.<message
// number>": the store version the agent's set reflects, and the message's
// rank in the stream; AppliesTo is the previous message's ResultsIn.
//
// The stream belongs to the session: it ends with the session and with the
// same status (Aborted when the session is replaced, DeadlineExceeded when
// the node is marked DOWN, NotFound when it is removed, Unavailable when Run
// ends), and with Aborted when the node opens another Assignments stream.
func (d *Dispatcher) Assignments(req *api.AssignmentsRequest, stream api.Dispatcher_AssignmentsServer) error {
	nodeID, err := d.cfg.Identify(stream.Context())
	if err != nil {
		return err
	}
	d.mu.Lock()
	if !d.running {
		d.mu.Unlock()
		return errNotRunning
	}
	s := d.sessions[req.SessionID]
	if s == nil || s.nodeID != nodeID || s.dead {
		d.mu.Unlock()
		return errBadSession(req.SessionID)
	}
	ctx, cancel := context.WithCancelCause(s.ctx)
	sub := &assignSub{
		nodeID:  nodeID,
		ctx:     ctx,
		cancel:  cancel,
		notify:  make(chan struct{}, 1),
		resync:  true,
		base:    d.assignVersion.Load(),
		pending: map[string]assignItem{},
	}
	old := d.assigns[nodeID]
	d.assigns[nodeID] = sub
	d.mu.Unlock()
	defer cancel(nil)
	if old != nil {
		old.cancel(errAssignmentsReplaced)
	}
	defer func() {
		d.mu.Lock()
		if d.assigns[nodeID] == sub {
			delete(d.assigns, nodeID)
		}
		d.mu.Unlock()
	}()
	a := &assignStream{d: d, sub: sub, stream: stream, known: map[string]uint64{}, spare: map[string]assignItem{}}
	defer a.stopTimer()
	return a.run()
}

// assignStream is the handler side of one Assignments stream.
type assignStream struct {
	d      *Dispatcher
	sub    *assignSub
	stream api.Dispatcher_AssignmentsServer
	// known is what the agent was given: task ID -> store version of the
	// task as sent (or as it was when a later change was not worth sending).
	known    map[string]uint64
	spare    map[string]assignItem
	seq      uint64
	last     string // ResultsIn of the last message
	lastSend time.Time
	timer    Timer
	timerAt  time.Time
}

func (a *assignStream) run() error {
	d := a.d
	sctx := a.stream.Context()
	for {
		a.sub.mu.Lock()
		resync, base, n := a.sub.resync, a.sub.base, len(a.sub.pending)
		a.sub.resync = false
		a.sub.mu.Unlock()
		if resync {
			if err := a.complete(base); err != nil {
				return err
			}
			continue
		}
		if n > 0 {
			now := d.clock.Now()
			due := a.lastSend.Add(d.cfg.AssignmentsBatchWindow)
			if n >= d.cfg.AssignmentsBatchMax || !now.Before(due) {
				if err := a.flush(now); err != nil {
					return err
				}
				continue
			}
			a.arm(due)
		}
		var fired <-chan time.Time
		if a.timer != nil {
			fired = a.timer.C()
		}
		select {
		case <-sctx.Done():
			return status.FromContextError(sctx.Err()).Err()
		case <-a.sub.ctx.Done():
			return ended(a.sub.ctx)
		case <-a.sub.notify:
		case <-fired:
			a.timer = nil
		}
	}
}

func (a *assignStream) arm(at time.Time) {
	if a.timer != nil {
		if a.timerAt.Equal(at) {
			return
		}
		a.timer.Stop()
	}
	a.timer, a.timerAt = a.d.clock.TimerAt(at), at
}

func (a *assignStream) stopTimer() {
	if a.timer != nil {
		a.timer.Stop()
		a.timer = nil
	}
}

func (a *assignStream) resultsIn(version uint64) string {
	s := fmt.Sprintf("%d.%d", version, a.seq)
	a.seq++
	return s
}

func taskChange(t *api.Task, action api.AssignmentChange_Action) *api.AssignmentChange {
	return &api.AssignmentChange{Assignment: &api.Assignment{Item: &api.Assignment_Task{Task: t}}, Action: action}
}

// complete sends the node's whole set of tasks, read from the store. The
// items Run hands over from then on are at least as new as base; those the
// snapshot already reflects are recognised by the task's version.
func (a *assignStream) complete(base uint64) error {
	d := a.d
	var (
		tasks []*api.Task
		err   error
	)
	d.cfg.Store.View(func(tx store.ReadTx) { tasks, err = store.Find[*api.Task](tx, store.ByNodeID(a.sub.nodeID)) })
	if err != nil {
		return status.Errorf(codes.Internal, "read the node's tasks: %v", err)
	}
	clear(a.known)
	changes := make([]*api.AssignmentChange, 0, len(tasks))
	for _, t := range tasks {
		if !assigned(t) {
			continue
		}
		a.known[t.ID] = t.Meta.Version
		changes = append(changes, taskChange(t, api.AssignmentActionUpdate))
	}
	msg := &api.AssignmentsMessage{Type: api.AssignmentsComplete, ResultsIn: a.resultsIn(base), Changes: changes}
	if err := a.stream.Send(msg); err != nil {
		return err
	}
	a.last, a.lastSend = msg.ResultsIn, d.clock.Now()
	d.log.Debug("sent the complete set of assignments", "node.id", a.sub.nodeID, "tasks", len(changes))
	return nil
}

// flush sends what is waiting, in messages of at most AssignmentsBatchMax
// changes.
func (a *assignStream) flush(now time.Time) error {
	d := a.d
	a.sub.mu.Lock()
	items := a.sub.pending
	a.sub.pending = a.spare
	version := d.assignVersion.Load()
	a.sub.mu.Unlock()
	defer func() {
		clear(items)
		a.spare = items
	}()

	var changes []*api.AssignmentChange
	for id, it := range items {
		v, ok := a.known[id]
		if ok && it.version <= v {
			continue // the complete set already had this version or a later one
		}
		switch {
		case it.task != nil:
			a.known[id] = it.version
			changes = append(changes, taskChange(it.task, api.AssignmentActionUpdate))
		case ok:
			delete(a.known, id)
			changes = append(changes, taskChange(&api.Task{ID: id}, api.AssignmentActionRemove))
		}
	}
	if len(changes) == 0 {
		return nil
	}
	for len(changes) > 0 {
		n := min(len(changes), d.cfg.AssignmentsBatchMax)
		msg := &api.AssignmentsMessage{
			Type:      api.AssignmentsIncremental,
			AppliesTo: a.last,
			ResultsIn: a.resultsIn(version),
			Changes:   changes[:n],
		}
		if err := a.stream.Send(msg); err != nil {
			return err
		}
		a.last = msg.ResultsIn
		changes = changes[n:]
	}
	a.lastSend = now
	return nil
}
