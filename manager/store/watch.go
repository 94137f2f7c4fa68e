package store

import (
	"errors"
	"fmt"
	"sync"

	"github.com/flotilla/flotilla/api"
)

// Errors that end a watch; the watcher must list again and start a new one.
var (
	// ErrWatchOverflow: the watcher fell too far behind and was dropped.
	ErrWatchOverflow = errors.New("watch fell behind the store and was closed")
	// ErrWatchReset: the store was replaced by a snapshot.
	ErrWatchReset = errors.New("store was restored from a snapshot")
	// ErrHistoryGone: a resume version older than the retained history.
	ErrHistoryGone = errors.New("resume version is older than the retained watch history")
)

// Event is one change to one object. Objects are shared with the store and
// other watchers: never modify them (copy first).
type Event struct {
	Action    api.WatchActionKind
	Object    api.StoreObject
	OldObject api.StoreObject
}

// Change is everything one transaction changed.
type Change struct {
	Version uint64
	Events  []Event
}

const (
	// defaultHistory is how many changes are kept for resuming watches, and
	// defaultHistoryEvents how many events they may hold together: a change
	// of a 10,000-task batch holds 10,000 events (each with the old and new
	// object), and 4,096 of those would keep every version of every task.
	// The newest change is always kept.
	defaultHistory       = 4096
	defaultHistoryEvents = 1 << 15
	// subscriberBuffer is how many changes a watcher may lag before it is dropped.
	subscriberBuffer = 1024
)

// Watch is one subscription to store changes.
type Watch struct {
	// C delivers changes in order; it is closed when the watch ends.
	C <-chan Change

	c      chan Change
	q      *watchQueue
	mu     sync.Mutex
	err    error
	closed bool
}

// Err says why C was closed: nil after Close, else ErrWatchOverflow or ErrWatchReset.
func (w *Watch) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// Close ends the watch. Safe to call more than once and concurrently with publishing.
func (w *Watch) Close() {
	w.q.remove(w, nil)
}

type watchQueue struct {
	mu      sync.Mutex
	subs    map[*Watch]struct{}
	history []Change // history[start:] are retained, oldest first
	start   int
	limit   int
	// events counts the events of the retained changes, at most eventLimit
	// (unless the newest change alone has more).
	events, eventLimit int
	// floor is the version before the oldest change in history: a resume from
	// any version >= floor can be served.
	floor uint64
	last  uint64
}

func newWatchQueue(limit, eventLimit int) *watchQueue {
	return &watchQueue{subs: map[*Watch]struct{}{}, limit: limit, eventLimit: eventLimit}
}

func (q *watchQueue) publish(c Change) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.history = append(q.history, c)
	q.events += len(c.Events)
	for n := len(q.history) - q.start; n > q.limit || (q.events > q.eventLimit && n > 1); n-- {
		old := q.history[q.start]
		q.history[q.start] = Change{} // let its objects go
		q.start++
		q.floor = old.Version
		q.events -= len(old.Events)
	}
	if q.start > 64 && q.start > len(q.history)/2 {
		q.history = append(make([]Change, 0, 2*(len(q.history)-q.start)), q.history[q.start:]...)
		q.start = 0
	}
	q.last = c.Version
	for w := range q.subs {
		select {
		case w.c <- c:
		default:
			q.removeLocked(w, ErrWatchOverflow)
		}
	}
}

// reset drops history and ends every watch: the state was replaced.
func (q *watchQueue) reset(version uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.history, q.start, q.events, q.floor, q.last = nil, 0, 0, version, version
	for w := range q.subs {
		q.removeLocked(w, ErrWatchReset)
	}
}

func (q *watchQueue) remove(w *Watch, err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.removeLocked(w, err)
}

func (q *watchQueue) removeLocked(w *Watch, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	w.closed = true
	w.err = err
	delete(q.subs, w)
	close(w.c)
}

// subscribe starts a watch. With from != 0 it first returns the retained
// changes after version from.
func (q *watchQueue) subscribe(from uint64) ([]Change, *Watch, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	var replay []Change
	if from != 0 && from < q.last {
		if from < q.floor {
			return nil, nil, fmt.Errorf("%w: asked for changes after %d, history starts after %d",
				ErrHistoryGone, from, q.floor)
		}
		for _, c := range q.history[q.start:] {
			if c.Version > from {
				replay = append(replay, c)
			}
		}
	}
	c := make(chan Change, subscriberBuffer)
	w := &Watch{C: c, c: c, q: q}
	q.subs[w] = struct{}{}
	return replay, w, nil
}

// Watch subscribes to changes. With from != 0, the changes after version from
// that are still in history come first (in the returned slice); a from older
// than the history fails with ErrHistoryGone. version is the store version at
// which the watch starts.
func (s *MemoryStore) Watch(from uint64) (replay []Change, w *Watch, version uint64, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	replay, w, err = s.queue.subscribe(from)
	return replay, w, s.version.Load(), err
}

// ViewAndWatch runs cb on a snapshot and starts a watch at exactly that
// snapshot: every later change arrives on the watch, none is in both.
func (s *MemoryStore) ViewAndWatch(cb func(ReadTx)) (*Watch, uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cb(readTx{txn: s.db.Load().Txn(false)})
	_, w, err := s.queue.subscribe(0)
	return w, s.version.Load(), err
}
