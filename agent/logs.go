package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gogo/protobuf/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/agent/exec"
	"github.com/flotilla/flotilla/api"
)

// Task logs. While a session is open the agent also keeps a
// LogBroker.ListenSubscriptions stream open to the same manager (reopened
// after the usual backoff when it fails). For each subscription it is sent it
// opens a PublishLogs stream and runs, for every task it holds that the
// subscription selects, the task controller's Logs (exec.ControllerLogs),
// one goroutine per task; their lines go to one sender that batches them
// (logBatchLines, logBatchBytes) into PublishLogsMessages. Without follow it
// sends close once every task's Logs has returned; with follow it runs until
// the manager sends close, and tasks of the subscription's services that
// start meanwhile join it. A task whose controller has no Logs is reported
// in a notice. The streams end with the session.
//
// Backpressure: the sender blocks on the stream (gRPC flow control), the
// line channel (logQueue) fills, and each task's Logs blocks in publish: a
// slow client slows the reading of the log files, nothing is dropped.

const (
	logQueue      = 256
	logBatchLines = 512
	logBatchBytes = 256 << 10
)

// logRegistry holds the controllers of the tasks the worker runs, for Logs.
// Task managers add their controller when they make it and remove it before
// they close it; remove waits for the Logs calls under way.
type logRegistry struct {
	mu      sync.Mutex
	tasks   map[string]*logTask
	changed chan struct{} // closed and replaced when a task is added
}

type logTask struct {
	id, serviceID string
	ctlr          exec.Controller
	ctx           context.Context // ends when the task is removed
	cancel        context.CancelFunc
	calls         sync.WaitGroup
}

func newLogRegistry() *logRegistry {
	return &logRegistry{tasks: map[string]*logTask{}, changed: make(chan struct{})}
}

func (r *logRegistry) add(t *api.Task, c exec.Controller) {
	ctx, cancel := context.WithCancel(context.Background())
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tasks[t.ID] = &logTask{id: t.ID, serviceID: t.ServiceID, ctlr: c, ctx: ctx, cancel: cancel}
	close(r.changed)
	r.changed = make(chan struct{})
}

func (r *logRegistry) remove(id string) {
	r.mu.Lock()
	lt := r.tasks[id]
	delete(r.tasks, id)
	r.mu.Unlock()
	if lt != nil {
		lt.cancel()
		lt.calls.Wait()
	}
}

// matching lists the tasks sel selects, with the channel closed at the next
// addition.
func (r *logRegistry) matching(sel *api.LogSelector) ([]*logTask, <-chan struct{}) {
	services, tasks := map[string]bool{}, map[string]bool{}
	for _, id := range sel.GetServiceIDs() {
		services[id] = true
	}
	for _, id := range sel.GetTaskIDs() {
		tasks[id] = true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*logTask
	for _, lt := range r.tasks {
		if tasks[lt.id] || services[lt.serviceID] {
			out = append(out, lt)
		}
	}
	return out, r.changed
}

// logs runs lt's Logs under ctx and the task's own life (publish gets the
// context of the call, so that removing the task unblocks it too); false if
// the task is being removed.
func (r *logRegistry) logs(ctx context.Context, lt *logTask, cl exec.ControllerLogs, opts exec.LogsOptions, publish func(context.Context, exec.LogEntry) error) (bool, error) {
	r.mu.Lock()
	if r.tasks[lt.id] != lt {
		r.mu.Unlock()
		return false, nil
	}
	lt.calls.Add(1)
	r.mu.Unlock()
	defer lt.calls.Done()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(lt.ctx, cancel)
	defer stop()
	return true, cl.Logs(ctx, opts, func(e exec.LogEntry) error { return publish(ctx, e) })
}

// logSubscriptions keeps a ListenSubscriptions stream open on conn until
// ctx ends (the session's end).
func (a *Agent) logSubscriptions(ctx context.Context, conn *grpc.ClientConn, addr string) {
	client := api.NewLogBrokerClient(conn)
	rnd := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	for attempt := 0; ; {
		start := time.Now()
		err := a.listenSubscriptions(ctx, client)
		if ctx.Err() != nil {
			return
		}
		if status.Code(err) == codes.Unimplemented {
			a.log.Info("the manager does not relay task logs (an older version?)", "manager", addr)
			return
		}
		if time.Since(start) >= backoffResetAfter {
			attempt = 0
		}
		wait := backoff(attempt, rnd)
		attempt++
		a.log.Debug("log subscriptions stream ended", "manager", addr, "error", err, "retry_in", wait)
		if !sleepReal(ctx, wait, nil) {
			return
		}
	}
}

// listenSubscriptions reads one ListenSubscriptions stream and runs the
// subscriptions it brings until it fails or ctx ends; it returns when they
// have all stopped.
func (a *Agent) listenSubscriptions(ctx context.Context, client api.LogBrokerClient) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.ListenSubscriptions(ctx, &api.ListenSubscriptionsRequest{})
	if err != nil {
		return err
	}
	type running struct {
		cancel context.CancelFunc
		done   chan struct{}
	}
	var (
		mu   sync.Mutex
		subs = map[string]*running{}
		wg   sync.WaitGroup
	)
	defer wg.Wait()
	defer cancel()
	for {
		m, err := stream.Recv()
		if err != nil {
			return err
		}
		mu.Lock()
		if old := subs[m.ID]; old != nil {
			// Closed, or sent again (the manager lost track of this
			// node's part): the old run stops either way.
			old.cancel()
			delete(subs, m.ID)
		}
		if m.Close {
			mu.Unlock()
			continue
		}
		sctx, scancel := context.WithCancel(ctx)
		r := &running{cancel: scancel, done: make(chan struct{})}
		subs[m.ID] = r
		mu.Unlock()
		wg.Go(func() {
			defer close(r.done)
			defer scancel()
			err := a.publishLogs(sctx, client, m)
			if err != nil && sctx.Err() == nil {
				a.log.Debug("log subscription ended with an error", "subscription", m.ID, "error", err)
			}
			mu.Lock()
			if subs[m.ID] == r {
				delete(subs, m.ID)
			}
			mu.Unlock()
		})
	}
}

// logItem is a line or a notice on its way to the sender.
type logItem struct {
	msg    *api.LogMessage
	notice *api.LogNotice
}

// publishLogs runs one subscription: the tasks' Logs, and the sender.
func (a *Agent) publishLogs(ctx context.Context, client api.LogBrokerClient, sub *api.SubscriptionMessage) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.PublishLogs(ctx)
	if err != nil {
		return err
	}
	opts := logsOptions(sub.Options)
	items := make(chan logItem, logQueue)
	var producers sync.WaitGroup
	var open atomic.Int64 // producers not finished (+1 for the follower while it runs)
	allDone := make(chan struct{})
	done := func() {
		if open.Add(-1) == 0 {
			close(allDone)
		}
	}
	send := func(ctx context.Context, it logItem) error {
		select {
		case items <- it:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	started := map[string]bool{}
	start := func(lt *logTask, o exec.LogsOptions) {
		started[lt.id] = true
		open.Add(1)
		producers.Go(func() {
			defer done()
			a.taskLogs(ctx, sub.ID, lt, o, send)
		})
	}
	tasks, changed := a.worker.logs.matching(sub.Selector)
	open.Add(1) // until the tasks are started (and, with follow, for good)
	for _, lt := range tasks {
		start(lt, opts)
	}
	if opts.Follow {
		// Tasks that start later: everything they log is new.
		later := opts
		later.Tail = 0
		producers.Go(func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-changed:
				}
				var tasks []*logTask
				tasks, changed = a.worker.logs.matching(sub.Selector)
				for _, lt := range tasks {
					if !started[lt.id] {
						start(lt, later)
					}
				}
			}
		})
	} else {
		done()
	}
	defer producers.Wait()
	defer cancel()

	// The sender.
	var (
		batch []*api.LogMessage
		notes []*api.LogNotice
		size  int
	)
	flush := func(closing bool) error {
		if len(batch) == 0 && len(notes) == 0 && !closing {
			return nil
		}
		err := stream.Send(&api.PublishLogsMessage{SubscriptionID: sub.ID, Messages: batch, Notices: notes, Close: closing})
		batch, notes, size = nil, nil, 0
		return err
	}
	take := func(it logItem) {
		if it.msg != nil {
			batch = append(batch, it.msg)
			size += len(it.msg.Data) + 64
		} else {
			notes = append(notes, it.notice)
		}
	}
	for {
		select {
		case it := <-items:
			take(it)
		more:
			for len(batch) < logBatchLines && size < logBatchBytes {
				select {
				case it := <-items:
					take(it)
				default:
					break more
				}
			}
			if err := flush(false); err != nil {
				return streamErr(stream, err)
			}
		case <-allDone:
			// Every producer has queued its last item.
		drain:
			for {
				select {
				case it := <-items:
					take(it)
					if len(batch) >= logBatchLines || size >= logBatchBytes {
						if err := flush(false); err != nil {
							return streamErr(stream, err)
						}
					}
				default:
					break drain
				}
			}
			if err := flush(true); err != nil {
				return streamErr(stream, err)
			}
			_, err := stream.CloseAndRecv()
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// streamErr is the real error of a failed Send (the status comes with Recv).
func streamErr(stream api.LogBroker_PublishLogsClient, err error) error {
	if errors.Is(err, io.EOF) {
		if _, rerr := stream.CloseAndRecv(); rerr != nil {
			return rerr
		}
	}
	return err
}

// taskLogs publishes one task's lines (or a notice why it cannot).
func (a *Agent) taskLogs(ctx context.Context, subID string, lt *logTask, opts exec.LogsOptions, send func(context.Context, logItem) error) {
	notice := func(format string, args ...any) {
		_ = send(ctx, logItem{notice: &api.LogNotice{TaskID: lt.id, Message: fmt.Sprintf(format, args...)}})
	}
	cl, ok := lt.ctlr.(exec.ControllerLogs)
	if !ok {
		notice("task %s: this node's executor keeps no logs", lt.id)
		return
	}
	publish := func(ctx context.Context, e exec.LogEntry) error {
		ts, err := types.TimestampProto(e.Time)
		if err != nil {
			ts = types.TimestampNow()
		}
		return send(ctx, logItem{msg: &api.LogMessage{
			Context:   api.LogContext{ServiceID: lt.serviceID, TaskID: lt.id},
			Timestamp: ts,
			Stream:    apiStream(e.Stream),
			Data:      append([]byte(nil), e.Data...),
		}})
	}
	live, err := a.worker.logs.logs(ctx, lt, cl, opts, publish)
	if !live || ctx.Err() != nil || err == nil || errors.Is(err, context.Canceled) {
		return
	}
	a.log.Debug("cannot read task logs", "task.id", lt.id, "subscription", subID, "error", err)
	notice("task %s: cannot read its logs: %v", lt.id, err)
}

// logsOptions converts the subscription's options.
func logsOptions(o *api.LogSubscriptionOptions) exec.LogsOptions {
	out := exec.LogsOptions{Follow: o.GetFollow(), Tail: int(o.GetTail())}
	if since := o.GetSince(); since != nil {
		if t, err := types.TimestampFromProto(since); err == nil {
			out.Since = t
		}
	}
	for _, s := range o.GetStreams() {
		switch s {
		case api.LogStreamStdout:
			out.Streams = append(out.Streams, exec.Stdout)
		case api.LogStreamStderr:
			out.Streams = append(out.Streams, exec.Stderr)
		}
	}
	return out
}

func apiStream(s exec.LogStream) api.LogStream {
	switch s {
	case exec.Stdout:
		return api.LogStreamStdout
	case exec.Stderr:
		return api.LogStreamStderr
	}
	return api.LogStreamUnknown
}
