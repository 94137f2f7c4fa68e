package scheduler

import (
	"context"
	"errors"

	"github.com/gogo/protobuf/types"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/manager/store"
)

// decision is what a pass decided for one task.
type decision struct {
	t *api.Task // the task as the pass saw it
	// node is where the task goes; "" leaves it PENDING with msg.
	node string
	msg  string

	// Outcome of the last attempt.
	wrote   bool // the update wrote the task
	skipped bool // the task had changed and no longer wanted this decision
	done    bool // committed, or nothing to commit
}

// update writes the decision if the task still wants it.
func (d *decision) update(tx store.Tx, now *types.Timestamp) error {
	d.wrote, d.skipped = false, false
	t := store.Get[*api.Task](tx, d.t.ID)
	if t == nil || !isPending(t) || t.NodeID != d.t.NodeID {
		d.skipped = true
		return nil
	}
	if d.node == "" {
		if t.Status.State == api.TaskStatePending && t.Status.Message == d.msg {
			return nil
		}
		t.Status = api.TaskStatus{State: api.TaskStatePending, Message: d.msg, Timestamp: now}
	} else {
		t.NodeID = d.node
		t.Status = api.TaskStatus{State: api.TaskStateAssigned, Message: "scheduled", Timestamp: now}
	}
	d.wrote = true
	return tx.Update(t)
}

// commit writes the decisions in as few proposals as the store allows. A
// proposal refused because another writer changed one of its tasks meanwhile
// is made again from fresh reads, a few times. It returns the decisions that
// were not committed and the error that stopped them.
func (s *Scheduler) commit(ctx context.Context, ds []*decision) (notDone []*decision, err error) {
	pending := ds
	for attempt := 0; attempt < commitAttempts && len(pending) > 0; attempt++ {
		now, _ := types.TimestampProto(s.now())
		// ok are the updates that succeeded, in order; the batch committed
		// the first `committed` of them. Those that wrote nothing are done
		// whether or not they were committed.
		ok := make([]*decision, 0, len(pending))
		var committed int
		committed, err = s.store.Batch(ctx, func(b *store.Batch) error {
			for _, d := range pending {
				if uerr := b.Update(func(tx store.Tx) error { return d.update(tx, now) }); uerr != nil {
					return uerr
				}
				ok = append(ok, d)
			}
			return nil
		})
		for i, d := range ok {
			if i < committed || !d.wrote {
				d.done = true
			}
		}
		next := make([]*decision, 0, len(pending)-min(committed, len(pending)))
		for _, d := range pending {
			if !d.done {
				next = append(next, d)
			}
		}
		pending = next
		if err == nil || !errors.Is(err, store.ErrSequenceConflict) {
			break
		}
		s.log.Debug("scheduling decisions conflicted with another write; retrying", "err", err, "tasks", len(pending))
	}
	if len(pending) == 0 {
		return nil, nil
	}
	return pending, err
}
