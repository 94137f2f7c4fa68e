package orchestrator

import (
	"context"
	"errors"
	"fmt"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/manager/store"
)

// A Write is one atomic step of a plan. It runs in one store.Batch update:
// all of its changes are committed or none.
type Write func(tx store.Tx) error

// ErrChanged is returned by a Write that found the store changed since its
// plan was read; the write is skipped and the plan must be made again.
var ErrChanged = errors.New("the store changed since the plan was read")

// maxAttempts bounds how many times Converge plans again after losing races.
const maxAttempts = 10

// SetDesired moves t's desired state to d, if t is still as the plan read it:
// it exists with the same desired state and node (its status may have moved
// on: status reports do not invalidate a plan).
func SetDesired(t *api.Task, d api.TaskState) Write {
	id, was, node := t.ID, t.DesiredState, t.NodeID
	return func(tx store.Tx) error {
		cur := store.Get[*api.Task](tx, id)
		if cur == nil || cur.DesiredState != was || cur.NodeID != node {
			return fmt.Errorf("%w: task %s", ErrChanged, id)
		}
		cur.DesiredState = d
		return tx.Update(cur)
	}
}

// Create adds a new task.
func Create(t *api.Task) Write {
	return func(tx store.Tx) error { return tx.Create(t) }
}

// Replace shuts old down and creates next in the same write, so a slot
// never has two wanted tasks. (Waiting until old has actually stopped before
// next starts, for stop-first rolling updates, is an Updater's business.)
func Replace(old, next *api.Task) Write {
	stop := SetDesired(old, api.TaskStateShutdown)
	return func(tx store.Tx) error {
		if err := stop(tx); err != nil {
			return err
		}
		return tx.Create(next)
	}
}

// Commit applies writes in store batches (as few proposals as
// store.MaxTransactionBytes allows). A write that finds the store changed
// (ErrChanged, or the store's ErrSequenceConflict, ErrNotExist, ErrExist) is
// skipped, and so are the writes of a proposal that lost a race when applied;
// changed reports either, and the caller should read again and plan again.
// err is the first other error (the context ended, a proposal failed); the
// proposals committed before it stay.
func Commit(ctx context.Context, s *store.MemoryStore, writes []Write) (changed bool, err error) {
	if len(writes) == 0 {
		return false, nil
	}
	_, err = s.Batch(ctx, func(b *store.Batch) error {
		for _, w := range writes {
			err := b.Update(func(tx store.Tx) error {
				ct := &countingTx{Tx: tx}
				err := w(ct)
				if err != nil && ct.writes == 0 && raced(err) {
					// Nothing was written: note the race and let the
					// batch go on without a rollback.
					changed = true
					return nil
				}
				return err
			})
			if err != nil {
				if raced(err) {
					changed = true
					continue
				}
				return err
			}
		}
		return nil
	})
	if err != nil && raced(err) {
		return true, nil
	}
	return changed, err
}

func raced(err error) bool {
	return errors.Is(err, ErrChanged) || errors.Is(err, store.ErrSequenceConflict) ||
		errors.Is(err, store.ErrNotExist) || errors.Is(err, store.ErrExist)
}

// Converge makes a plan from a consistent view and commits it, and starts
// over while the store changed under the plan (at most a few times: then it
// returns an error wrapping store.ErrSequenceConflict). plan must only read.
func Converge(ctx context.Context, s *store.MemoryStore, plan func(tx store.ReadTx) ([]Write, error)) error {
	for attempt := 1; ; attempt++ {
		var (
			writes []Write
			err    error
		)
		s.View(func(tx store.ReadTx) { writes, err = plan(tx) })
		if err != nil {
			return err
		}
		changed, err := Commit(ctx, s, writes)
		if err != nil || !changed {
			return err
		}
		if attempt == maxAttempts {
			return fmt.Errorf("%w: other writers changed the tasks %d times in a row", store.ErrSequenceConflict, attempt)
		}
	}
}

// countingTx counts the writes made through it.
type countingTx struct {
	store.Tx
	writes int
}

func (t *countingTx) Create(o api.StoreObject) error { t.writes++; return t.Tx.Create(o) }
func (t *countingTx) Update(o api.StoreObject) error { t.writes++; return t.Tx.Update(o) }
func (t *countingTx) Delete(kind, id string) error   { t.writes++; return t.Tx.Delete(kind, id) }

// Nodes looks nodes up in tx, each once.
func Nodes(tx store.ReadTx) func(id string) *api.Node {
	seen := map[string]*api.Node{}
	return func(id string) *api.Node {
		n, ok := seen[id]
		if !ok {
			n = store.Get[*api.Node](tx, id)
			seen[id] = n
		}
		return n
	}
}

// RemoveAll asks every task to stop and be deleted (DesiredState REMOVE):
// the tasks of a deleted service.
func RemoveAll(tasks []*api.Task) []Write {
	var writes []Write
	for _, t := range tasks {
		if t.DesiredState < api.TaskStateRemove {
			writes = append(writes, SetDesired(t, api.TaskStateRemove))
		}
	}
	return writes
}

// LeftCurrent reports whether a task event takes a current task away:
// deleted, or its desired state raised past RUNNING.
func LeftCurrent(ev store.Event) bool {
	switch ev.Action {
	case api.WatchActionKindRemove:
		return IsCurrent(ev.Object.(*api.Task))
	case api.WatchActionKindUpdate:
		return IsCurrent(ev.OldObject.(*api.Task)) && !IsCurrent(ev.Object.(*api.Task))
	}
	return false
}

// SlotTasks returns the tasks of t's slot, history included: the tasks of
// its service with its slot (replicated), or with its node (global, slot 0).
func SlotTasks(tx store.ReadTx, t *api.Task) ([]*api.Task, error) {
	if t.Slot != 0 {
		return store.Find[*api.Task](tx, store.BySlot(t.ServiceID, t.Slot))
	}
	ts, err := store.Find[*api.Task](tx, store.ByNodeID(t.NodeID))
	if err != nil {
		return nil, err
	}
	out := ts[:0]
	for _, o := range ts {
		if o.ServiceID == t.ServiceID && o.Slot == 0 {
			out = append(out, o)
		}
	}
	return out, nil
}
