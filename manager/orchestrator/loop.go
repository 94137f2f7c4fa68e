package orchestrator

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/flotilla/flotilla/manager/store"
)

// A Reactor is the logic of a leader-only loop; Run drives it. Its methods
// are called from one goroutine.
type Reactor interface {
	// Reconcile repairs the whole store. Run calls it when it starts (a new
	// leader must repair whatever happened before) and whenever its watch
	// was lost, after starting a new watch: nothing changed after the
	// reconcile's view is missed.
	Reconcile(ctx context.Context) error
	// Handle reacts to the changes that arrived since the last call, all of
	// them at once so that it can coalesce them.
	Handle(ctx context.Context, changes []store.Change) error
}

// A Timed reactor also acts at times of its choosing (restart delays).
type Timed interface {
	Reactor
	// Next is when Tick should run next; the zero time means never.
	Next() time.Time
	// Tick runs at or after Next.
	Tick(ctx context.Context) error
}

// Backoff bounds of Run after an error.
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 10 * time.Second
	// maxDrain bounds how many waiting changes one Handle gets.
	maxDrain = 256
)

// Run drives r until ctx ends, then returns nil. An error of r that wraps
// store.ErrInvalid (a write the store refuses: a bug that retrying repeats)
// ends Run with it; any other error is logged and, after a backoff, Run starts
// over with a new watch and a full Reconcile.
func Run(ctx context.Context, s *store.MemoryStore, clock Clock, log *slog.Logger, r Reactor) error {
	backoff := minBackoff
	for {
		reconciled, err := runWatch(ctx, s, clock, r)
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, store.ErrInvalid):
			return err
		case errors.Is(err, store.ErrWatchOverflow), errors.Is(err, store.ErrWatchReset):
			log.Info("store watch lost; reconciling everything again", "err", err)
			backoff = minBackoff
			continue
		}
		if reconciled {
			backoff = minBackoff
		}
		log.Warn("reconcile failed; starting over", "err", err, "retry_in", backoff)
		t := clock.TimerAt(clock.Now().Add(backoff))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C():
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// runWatch is one watch's life: reconcile, then react until an error.
func runWatch(ctx context.Context, s *store.MemoryStore, clock Clock, r Reactor) (reconciled bool, err error) {
	w, _, err := s.ViewAndWatch(func(store.ReadTx) {})
	if err != nil {
		return false, err
	}
	defer w.Close()
	if err := r.Reconcile(ctx); err != nil {
		return false, err
	}
	timed, _ := r.(Timed)
	var (
		timer Timer
		armed time.Time
	)
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		var fire <-chan time.Time
		if timed != nil {
			if next := timed.Next(); !next.Equal(armed) {
				if timer != nil {
					timer.Stop()
					timer = nil
				}
				armed = next
				if !next.IsZero() {
					timer = clock.TimerAt(next)
				}
			}
			if timer != nil {
				fire = timer.C()
			}
		}
		select {
		case <-ctx.Done():
			return true, ctx.Err()
		case c, ok := <-w.C:
			if !ok {
				return true, w.Err()
			}
			if err := r.Handle(ctx, drain(c, w.C)); err != nil {
				return true, err
			}
		case <-fire:
			timer, armed = nil, time.Time{}
			if err := timed.Tick(ctx); err != nil {
				return true, err
			}
		}
	}
}

// drain returns first and the changes already waiting on c.
func drain(first store.Change, c <-chan store.Change) []store.Change {
	changes := []store.Change{first}
	for len(changes) < maxDrain {
		select {
		case ch, ok := <-c:
			if !ok {
				return changes
			}
			changes = append(changes, ch)
		default:
			return changes
		}
	}
	return changes
}
