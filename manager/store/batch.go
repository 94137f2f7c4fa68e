package store

import (
	"context"
	"fmt"
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
	if err := cb(b); err != nil {
		return b.committed, err
	}
	return b.committed, b.flush()
}

// Update runs cb as one atomic part of the batch. Later calls see the writes
// of earlier ones. If cb fails, none of its writes are kept and its error is
// returned; the batch can go on. cb may run twice (when its writes start a
// new proposal, it runs again on the state that includes the previous one),
// so it must only read and write through tx.
func (b *Batch) Update(cb func(Tx) error) error {
	mark, size := b.tx.actions(), len(b.tx.buf)
	if err := cb(b.tx); err != nil {
		b.tx.rollback(mark)
		return err
	}
	if len(b.tx.buf)-size > MaxTransactionBytes {
		b.tx.rollback(mark)
		return fmt.Errorf("%w: one batch update of %d bytes exceeds the %d byte limit of a proposal",
			ErrInvalid, len(b.tx.buf)-size, MaxTransactionBytes)
	}
	b.pending++
	if len(b.tx.buf) > MaxTransactionBytes && mark > 0 {
		// This update pushed the proposal over the limit: commit what came
		// before it, then run it again on the state that now includes that
		// (its writes may depend on objects the flushed part wrote).
		b.tx.rollback(mark)
		b.pending--
		if err := b.flush(); err != nil {
			return err
		}
		return b.Update(cb)
	}
	if len(b.tx.buf) >= MaxTransactionBytes {
		return b.flush()
	}
	return nil
}

// flush proposes the pending writes and starts over on the new state.
func (b *Batch) flush() error {
	if b.tx.actions() == 0 {
		return nil
	}
	prev := b.tx
	err := b.s.proposer.Propose(b.ctx, prev.buf)
	// The next transaction starts from the state after the proposal, so
	// later updates read what it wrote.
	b.tx = b.s.newWriteTx()
	b.tx.sizeLike(prev)
	if err != nil {
		b.pending = 0
		return err
	}
	b.committed += b.pending
	b.pending = 0
	return nil
}
