package agent

import (
	"context"
	"log/slog"
	"maps"
	"math/rand/v2"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
)

// Status reporting. Task managers hand every new status to the reporter,
// which sends them to the dispatcher with UpdateTaskStatus in batches: it
// waits statusFlushDelay after the first status of a batch so that the
// transitions of many tasks share a request, and keeps only the latest
// status per task (the store keeps one status per task anyway; the states
// a task skipped on the wire it passed through on the node). A failed send
// is retried with backoff, at once when a new session starts.
//
// Statuses outlive sessions: a status not yet accepted by a dispatcher is
// sent on the next session, and each new session gets the latest status of
// every task the agent runs, so a dispatcher (or a new leader) that lost or
// never saw a report learns it. That covers an agent restart too: the
// statuses loaded from the task DB are sent once the first session is open.
const (
	statusFlushDelay  = 50 * time.Millisecond
	statusBatchMax    = 1000
	statusSendTimeout = 10 * time.Second
)

// reporter sends task statuses to the dispatcher of the current session.
type reporter struct {
	log        *slog.Logger
	flushDelay time.Duration
	batchMax   int
	pendingCh  chan struct{} // a status is pending (capacity 1)
	sessionCh  chan struct{} // a new session is there (capacity 1)

	mu      sync.Mutex
	latest  map[string]*api.TaskStatus // live tasks: re-sent on every new session
	pending map[string]*api.TaskStatus // not accepted by a dispatcher yet
	target  *reportTarget              // nil between sessions
}

type reportTarget struct {
	client    api.DispatcherClient
	sessionID string
}

func newReporter(log *slog.Logger) *reporter {
	return &reporter{
		log:        log,
		flushDelay: statusFlushDelay,
		batchMax:   statusBatchMax,
		pendingCh:  make(chan struct{}, 1),
		sessionCh:  make(chan struct{}, 1),
		latest:     map[string]*api.TaskStatus{},
		pending:    map[string]*api.TaskStatus{},
	}
}

func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// update queues task id's new status (the reporter keeps s).
func (r *reporter) update(id string, s *api.TaskStatus) {
	r.mu.Lock()
	r.latest[id] = s
	r.pending[id] = s
	r.mu.Unlock()
	notify(r.pendingCh)
}

// load takes in statuses from the task DB: they are sent with the first
// session.
func (r *reporter) load(id string, s *api.TaskStatus) {
	r.mu.Lock()
	r.latest[id] = s
	r.mu.Unlock()
}

// forget stops re-sending task id's status on new sessions; a status still
// pending is sent all the same.
func (r *reporter) forget(id string) {
	r.mu.Lock()
	delete(r.latest, id)
	r.mu.Unlock()
}

// setSession makes the reporter send to a new session, starting with the
// latest status of every task.
func (r *reporter) setSession(client api.DispatcherClient, sessionID string) {
	r.mu.Lock()
	r.target = &reportTarget{client: client, sessionID: sessionID}
	maps.Copy(r.pending, r.latest)
	r.mu.Unlock()
	notify(r.sessionCh)
}

// clearSession stops sending to session sessionID.
func (r *reporter) clearSession(sessionID string) {
	r.mu.Lock()
	if r.target != nil && r.target.sessionID == sessionID {
		r.target = nil
	}
	r.mu.Unlock()
}

// next takes a batch of pending statuses and where to send them; nil when
// there is nothing to send or nobody to send it to. full says the batch
// left statuses behind.
func (r *reporter) next() (batch []*api.UpdateTaskStatusRequest_TaskStatusUpdate, target *reportTarget, full bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.target == nil || len(r.pending) == 0 {
		return nil, nil, false
	}
	for id, s := range r.pending {
		if len(batch) == r.batchMax {
			return batch, r.target, true
		}
		batch = append(batch, &api.UpdateTaskStatusRequest_TaskStatusUpdate{TaskID: id, Status: s})
	}
	return batch, r.target, false
}

// done drops the statuses of batch from the pending ones, unless a newer
// status replaced one meanwhile.
func (r *reporter) done(batch []*api.UpdateTaskStatusRequest_TaskStatusUpdate) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, u := range batch {
		if r.pending[u.TaskID] == u.Status {
			delete(r.pending, u.TaskID)
		}
	}
}

// refused reports whether the dispatcher refused the batch itself: sending
// it again will not help. Such a batch is dropped; the statuses of live
// tasks go again with the next session.
func refused(err error) bool {
	switch status.Code(err) {
	case codes.InvalidArgument, codes.PermissionDenied, codes.FailedPrecondition, codes.Unimplemented:
		return true
	}
	return false
}

// run sends statuses until ctx ends.
func (r *reporter) run(ctx context.Context) {
	attempt := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.pendingCh:
			// Let the transitions of other tasks join the batch.
			if !sleepReal(ctx, r.flushDelay, nil) {
				return
			}
		case <-r.sessionCh:
		}
		for {
			batch, target, full := r.next()
			if batch == nil {
				break
			}
			err := r.send(ctx, target, batch)
			if ctx.Err() != nil {
				return
			}
			if err == nil {
				r.done(batch)
				attempt = 0
				if full {
					continue
				}
				break
			}
			if refused(err) {
				r.log.Warn("dispatcher refused task statuses; they are sent again with the next session",
					"session.id", target.sessionID, "statuses", len(batch), "error", err)
				r.done(batch)
				break
			}
			wait := retryWait(attempt)
			attempt++
			r.log.Debug("cannot report task statuses", "session.id", target.sessionID,
				"statuses", len(batch), "error", err, "retry_in", wait)
			// A new session retries at once.
			if !sleepReal(ctx, wait, r.sessionCh) {
				return
			}
		}
	}
}

func (r *reporter) send(ctx context.Context, target *reportTarget, batch []*api.UpdateTaskStatusRequest_TaskStatusUpdate) error {
	ctx, cancel := context.WithTimeout(ctx, statusSendTimeout)
	defer cancel()
	_, err := target.client.UpdateTaskStatus(ctx, &api.UpdateTaskStatusRequest{SessionID: target.sessionID, Updates: batch})
	return err
}

// Retries of task steps and status reports, in real time: the wait before
// retry n (0-based) is a uniformly random time in [0, min(maxRetryWait,
// baseRetryWait * 2^n)), as for reconnects (see backoff).
const (
	baseRetryWait = 100 * time.Millisecond
	maxRetryWait  = 10 * time.Second
)

func retryWait(attempt int) time.Duration {
	window := maxRetryWait
	if attempt < 16 {
		window = min(maxRetryWait, baseRetryWait<<attempt)
	}
	return time.Duration(rand.Float64() * float64(window))
}

// sleepReal waits d in real time, or until wake (if not nil) is signalled;
// false if ctx ended first.
func sleepReal(ctx context.Context, d time.Duration, wake <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-wake:
		return true
	case <-ctx.Done():
		return false
	}
}
