package store

import (
	"context"
	"fmt"

	"github.com/flotilla/flotilla/api"
)

// Batch writes many objects in as few proposals as MaxTransactionBytes
// allows. Each Update call is atomic; the batch as a whole is not: when Batch
// returns an error, the proposals committed before it stay.
type Batch struct {
	s   *MemoryStore
	ctx context.Context
	tx  *writeTx
	// committed counts the Update calls whose writes were committed.
	committed int
	pending   int
}

// Batch runs cb, which calls b.Update any number of times, and commits what
// is still pending when cb returns. It returns the number of Update calls
// whose writes were committed and the first error.
func (s *MemoryStore) Batch(ctx context.Context, cb func(b *Batch) error) (int, error) {
	b := &Batch{s: s, ctx: ctx, tx: s.newWriteTx()}
	defer func() { b.tx.txn.Abort() }()
	if err := cb(b); err != nil {
		return b.committed, err
	}
	return b.committed, b.flush()
}

// Update runs cb as one atomic part of the batch. Later calls see the writes
// of earlier ones. If cb fails, none of its writes are kept and its error is
// returned; the batch can go on.
func (b *Batch) Update(cb func(Tx) error) error {
	mark, size := len(b.tx.actions), b.tx.size
	if err := cb(b.tx); err != nil {
		b.rollback(mark, size)
		return err
	}
	if b.tx.size-size > MaxTransactionBytes {
		b.rollback(mark, size)
		return fmt.Errorf("%w: one batch update of %d bytes exceeds the %d byte limit of a proposal",
			ErrInvalid, b.tx.size-size, MaxTransactionBytes)
	}
	b.pending++
	if b.tx.size > MaxTransactionBytes && mark > 0 {
		// This update pushed the proposal over the limit: commit what came
		// before it, and start the next proposal with it.
		rest := append([]api.StoreAction(nil), b.tx.actions[mark:]...)
		restSize := b.tx.size - size
		b.tx.actions, b.tx.size = b.tx.actions[:mark], size
		b.pending--
		if err := b.flush(); err != nil {
			return err
		}
		b.tx.actions, b.tx.size = rest, restSize
		b.replay()
		b.pending = 1
	}
	if b.tx.size >= MaxTransactionBytes {
		return b.flush()
	}
	return nil
}

// flush proposes the pending writes and starts over on the new state.
func (b *Batch) flush() error {
	if len(b.tx.actions) == 0 {
		return nil
	}
	actions := b.tx.actions
	b.tx.txn.Abort()
	b.tx = b.s.newWriteTx()
	if err := b.s.propose(b.ctx, actions); err != nil {
		b.pending = 0
		return err
	}
	b.committed += b.pending
	b.pending = 0
	return nil
}

// rollback drops the writes after mark by rebuilding the private snapshot
// from the store and the writes before mark (memdb has no partial abort).
func (b *Batch) rollback(mark, size int) {
	actions := b.tx.actions[:mark]
	b.tx.txn.Abort()
	b.tx = b.s.newWriteTx()
	b.tx.actions, b.tx.size = actions, size
	b.replay()
}

// replay writes the recorded actions into the (fresh) private snapshot.
func (b *Batch) replay() {
	for i := range b.tx.actions {
		a := &b.tx.actions[i]
		// These writes succeeded on an equal snapshot, so they succeed again.
		_ = write(b.tx.txn, a.Kind, a.Target.StoreObject(), nil, 0)
	}
}
