package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"time"

	gogoproto "github.com/gogo/protobuf/proto"
	"github.com/gogo/protobuf/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/manager/store"
)

// Task status reports
//
// UpdateTaskStatus checks a report against the store and queues what it
// accepts in memory (the latest status per task); Run's goroutine writes the
// queue to the store in one store batch per StatusFlushInterval, for all
// nodes together: one proposal per flush unless the batch outgrows
// store.MaxTransactionBytes. The flush checks each status again against the
// task as the transaction reads it (the task may have moved on, been
// deleted, or another writer may have raced the batch: ErrSequenceConflict
// retries what was not committed).
//
// Durability: the RPC returns once the statuses are queued, as SwarmKit's
// does; they are in the store after the next flush, at most
// StatusFlushInterval later. A status queued on a leader that stops leading
// before the flush is lost; the agent repairs it with its next report of
// the task (each transition is reported), and should report the current
// status of its tasks again whenever it opens a new session, which costs
// nothing when they are already recorded (duplicates are ignored). A flush
// that fails for another reason (a proposal error) queues its statuses
// again for the next flush.

// DefaultStatusFlushInterval is the default Config.StatusFlushInterval.
const DefaultStatusFlushInterval = 100 * time.Millisecond

// statusFlushMax bounds the statuses one flush writes, so that Run, which
// is blocked while it writes, keeps up with its watch and its node
// expiries: a bigger queue is written in batches of this size, back to back
// with Run's other work in between. The usual load (a few transitions per
// node per interval) is far below it and goes in one batch.
var statusFlushMax = 10000

// queuedStatus is a status accepted from a node, waiting for the flush.
type queuedStatus struct {
	taskID string
	nodeID string
	status api.TaskStatus
}

// agentState says whether an agent may report state s: the states from
// ACCEPTED to REJECTED. The manager owns those before (NEW, PENDING,
// ASSIGNED) and ORPHANED; REMOVE is only ever a desired state.
func agentState(s api.TaskState) bool {
	if _, ok := api.TaskState_name[int32(s)]; !ok {
		return false
	}
	return s >= api.TaskStateAccepted && s <= api.TaskStateRejected
}

// advances says whether next is news about a task whose status is cur: a
// later state, or the same state with something else changed (a message,
// the container's exit code, health). AppliedBy and AppliedAt are the
// dispatcher's and are not compared.
func advances(cur, next *api.TaskStatus) bool {
	if next.State != cur.State {
		return next.State > cur.State
	}
	a, b := *cur, *next
	a.AppliedBy, a.AppliedAt = "", nil
	b.AppliedBy, b.AppliedAt = "", nil
	return !gogoproto.Equal(&a, &b)
}

// checkSession returns nil if sessionID is nodeID's current session.
func (d *Dispatcher) checkSession(nodeID, sessionID string) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if !d.running {
		return errNotRunning
	}
	s := d.sessions[sessionID]
	if s == nil || s.nodeID != nodeID || s.dead {
		return errBadSession(sessionID)
	}
	return nil
}

// UpdateTaskStatus queues the calling node's status reports for the next
// flush (see above). The whole request is refused with PermissionDenied if
// one of its tasks belongs to another node, and with InvalidArgument if one
// has no task ID or status, or a state the agent does not own (it may
// report ACCEPTED to REJECTED; FAILED or REJECTED straight from ASSIGNED is
// fine). A status that would move its task backwards, or that repeats the
// task's status, is ignored (a duplicate or reordered report), and so is
// the status of a task no longer in the store (deleted by the task reaper
// after its last report). The task's status gets AppliedBy = the calling
// node and AppliedAt = the time the dispatcher received it.
func (d *Dispatcher) UpdateTaskStatus(ctx context.Context, req *api.UpdateTaskStatusRequest) (*api.UpdateTaskStatusResponse, error) {
	nodeID, err := d.cfg.Identify(ctx)
	if err != nil {
		return nil, err
	}
	if err := d.checkSession(nodeID, req.SessionID); err != nil {
		return nil, err
	}
	for i, u := range req.Updates {
		if u == nil || u.TaskID == "" || u.Status == nil {
			return nil, status.Errorf(codes.InvalidArgument, "update %d has no task ID or no status", i)
		}
		if !agentState(u.Status.State) {
			return nil, status.Errorf(codes.InvalidArgument,
				"task %s: state %v cannot be reported by an agent", u.TaskID, u.Status.State)
		}
	}
	now := d.clock.Now()
	at, err := types.TimestampProto(now)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "timestamp: %v", err)
	}
	accepted := make([]queuedStatus, 0, len(req.Updates))
	var denied, owner string
	gone := 0
	d.cfg.Store.View(func(tx store.ReadTx) {
		for _, u := range req.Updates {
			t := store.Get[*api.Task](tx, u.TaskID)
			if t == nil {
				gone++
				continue
			}
			if t.NodeID != nodeID {
				denied, owner = u.TaskID, t.NodeID
				return
			}
			if !advances(&t.Status, u.Status) {
				continue
			}
			st := *u.Status
			st.AppliedBy, st.AppliedAt = nodeID, at
			accepted = append(accepted, queuedStatus{taskID: u.TaskID, nodeID: nodeID, status: st})
		}
	})
	if denied != "" {
		d.log.Warn("node reported the status of a task that is not assigned to it: request refused",
			"node.id", nodeID, "task.id", denied, "task.node", owner, "updates", len(req.Updates))
		return nil, status.Errorf(codes.PermissionDenied, "task %s is not assigned to node %s", denied, nodeID)
	}
	if gone > 0 {
		d.log.Debug("status reports of tasks no longer in the store ignored", "node.id", nodeID, "tasks", gone)
	}
	d.enqueue(accepted, now, false)
	return &api.UpdateTaskStatusResponse{}, nil
}

// enqueue adds statuses to the queue, keeping the latest per task (a
// report replaces a queued one of the same task unless it goes backwards;
// with retry, statuses of a failed flush give way to any queued since), and
// sets the flush time when the queue was empty.
func (d *Dispatcher) enqueue(sts []queuedStatus, now time.Time, retry bool) {
	if len(sts) == 0 {
		return
	}
	d.smu.Lock()
	wasEmpty := len(d.squeue) == 0
	for _, q := range sts {
		if cur, ok := d.squeue[q.taskID]; ok && (q.status.State < cur.status.State || retry) {
			continue
		}
		d.squeue[q.taskID] = q
	}
	if wasEmpty {
		d.sflushAt = now.Add(d.cfg.StatusFlushInterval)
	}
	d.smu.Unlock()
	if wasEmpty {
		select {
		case d.skick <- struct{}{}:
		default:
		}
	}
}

// armStatus arms the flush timer when statuses are waiting.
func (l *loop) armStatus() {
	d := l.d
	d.smu.Lock()
	n, at := len(d.squeue), d.sflushAt
	d.smu.Unlock()
	if n == 0 {
		return
	}
	if l.stimer != nil {
		if l.stimerAt.Equal(at) {
			return
		}
		l.stimer.Stop()
	}
	l.stimer, l.stimerAt = d.clock.TimerAt(at), at
}

// taskWrite is one queued status in a flush.
type taskWrite struct {
	q       queuedStatus
	read    uint64 // version of the task the write was made from
	changed bool
	done    bool
}

var errTaskWrite = errors.New("task status write")

// flushStatuses writes the queued statuses in one store batch, retrying
// those that lost a race with another writer. Each status is checked again
// against the task the transaction reads. The writes committed are noted in
// l.own, so that routeTasks knows their changes are status-only.
func (l *loop) flushStatuses() {
	d := l.d
	d.smu.Lock()
	queue := d.squeue
	var pending []*taskWrite
	if len(queue) <= statusFlushMax {
		d.squeue = make(map[string]queuedStatus, len(queue))
		pending = make([]*taskWrite, 0, len(queue))
		for _, q := range queue {
			pending = append(pending, &taskWrite{q: q})
		}
	} else {
		// Take a batch; the rest is due at once.
		pending = make([]*taskWrite, 0, statusFlushMax)
		for id, q := range queue {
			pending = append(pending, &taskWrite{q: q})
			delete(queue, id)
			if len(pending) == statusFlushMax {
				break
			}
		}
		d.sflushAt = d.clock.Now()
	}
	d.smu.Unlock()
	if len(pending) == 0 {
		return
	}
	queued := len(pending)
	var (
		err     error
		written int
	)
	for attempt := 0; attempt < writeAttempts && len(pending) > 0; attempt++ {
		var calls []*taskWrite // Update calls that succeeded, in order
		var committed int
		committed, err = d.cfg.Store.Batch(l.ctx, func(b *store.Batch) error {
			for _, w := range pending {
				w.changed = false
				uerr := b.Update(func(tx store.Tx) error {
					t := store.Get[*api.Task](tx, w.q.taskID)
					if t == nil || t.NodeID != w.q.nodeID || !advances(&t.Status, &w.q.status) {
						return nil
					}
					w.read = t.Meta.Version
					t.Status = w.q.status
					if err := tx.Update(t); err != nil {
						return fmt.Errorf("%w: %w", errTaskWrite, err)
					}
					w.changed = true
					return nil
				})
				switch {
				case uerr == nil:
					calls = append(calls, w)
				case errors.Is(uerr, errTaskWrite):
					d.log.Warn("cannot write a task status", "task.id", w.q.taskID, "err", uerr)
					w.done = true
				default:
					return uerr // a proposal failed
				}
			}
			return nil
		})
		for i, w := range calls {
			if i < committed && w.changed {
				l.own[w.q.taskID] = w.read
				written++
			}
			if i < committed || !w.changed {
				w.done = true
			}
		}
		next := pending[:0]
		for _, w := range pending {
			if !w.done {
				next = append(next, w)
			}
		}
		pending = next
		if err == nil || !errors.Is(err, store.ErrSequenceConflict) {
			break
		}
		d.log.Debug("task status batch conflicted with another write; retrying", "err", err)
	}
	d.log.Debug("task statuses flushed", "queued", queued, "written", written, "failed", len(pending))
	if len(pending) == 0 || l.ctx.Err() != nil {
		return
	}
	d.log.Warn("cannot write task statuses; trying again at the next flush", "err", err, "tasks", len(pending))
	again := make([]queuedStatus, len(pending))
	for i, w := range pending {
		again[i] = w.q
	}
	d.enqueue(again, d.clock.Now(), true)
}
