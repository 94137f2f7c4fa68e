package logbroker

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/manager/store"
)

// partState is where a node's part of a subscription stands.
type partState int

const (
	partWaiting partState = iota // for the node's listener
	partSent                     // the node has the subscription
	partDone                     // closed by the node, or reported to the client
)

type part struct {
	state    partState
	hostname string
}

// subscription is one client's SubscribeLogs.
type subscription struct {
	id       string
	b        *Broker
	selector *api.LogSelector // resolved to IDs
	services map[string]bool
	tasks    map[string]bool
	opts     api.LogSubscriptionOptions
	ctx      context.Context
	cancel   context.CancelFunc
	out      chan *api.SubscribeLogsMessage

	mu      sync.Mutex
	parts   map[string]*part // by node ID
	open    int              // parts not done
	ready   bool             // every node of the initial selection is in parts
	notices []*api.LogNotice // for the client, not sent yet
	kick    chan struct{}    // capacity 1: notices, or a part done
}

func (s *subscription) signal() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

func (s *subscription) noticeLocked(nodeID, format string, args ...any) {
	s.notices = append(s.notices, &api.LogNotice{NodeID: nodeID, Message: fmt.Sprintf(format, args...)})
}

// nodeName is how notices name a node.
func nodeName(hostname, id string) string {
	if hostname == "" || hostname == id {
		return "node " + id
	}
	return fmt.Sprintf("node %s (%s)", hostname, id)
}

// selects reports whether the subscription selects task t.
func (s *subscription) selects(t *api.Task) bool {
	return s.tasks[t.ID] || s.services[t.ServiceID]
}

// addNode gives the node a part: a node that is not READY is reported,
// others are sent the subscription (delivered by a goroutine of its own).
// A node that has a part already is left alone, except with follow one
// whose part is done (reported down earlier): it gets a new part for new
// lines.
func (s *subscription) addNode(n *api.Node, nodeID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	hostname := ""
	if n != nil && n.Description != nil {
		hostname = n.Description.Hostname
	}
	p := s.parts[nodeID]
	opts := s.opts
	if p != nil {
		if !s.opts.Follow || p.state != partDone || n == nil || n.Status.State != api.NodeStatusReady {
			return
		}
		opts.Tail = -1 // it may have sent lines already
		p.state = partWaiting
		s.open++
	} else {
		p = &part{state: partWaiting, hostname: hostname}
		s.parts[nodeID] = p
		switch {
		case n == nil:
			p.state = partDone
			s.noticeLocked(nodeID, "node %s is not in the cluster any more: logs of its tasks are not available", nodeID)
			s.signal()
			return
		case n.Status.State != api.NodeStatusReady:
			p.state = partDone
			s.noticeLocked(nodeID, "%s is %s: logs of its tasks are not available", nodeName(hostname, nodeID), nodeStateWord(n))
			s.signal()
			return
		}
		s.open++
	}
	go s.deliver(nodeID, s.b.cfg.NodeWait, &opts)
}

func nodeStateWord(n *api.Node) string {
	switch n.Status.State {
	case api.NodeStatusDown:
		return "down"
	case api.NodeStatusDisconnected:
		return "disconnected"
	}
	return "not ready (" + strings.ToLower(n.Status.State.String()) + ")"
}

// deliver sends the subscription to the node once it has a listener, or
// reports it after wait (wait < 0: no limit).
func (s *subscription) deliver(nodeID string, wait time.Duration, opts *api.LogSubscriptionOptions) {
	l := s.b.waitListener(s.ctx, nodeID, wait)
	if s.ctx.Err() != nil {
		return
	}
	if l == nil {
		s.finish(nodeID, partWaiting, "%s is unreachable: it did not connect to the manager for logs within %s; logs of its tasks are not available",
			nodeName(s.hostname(nodeID), nodeID), wait)
		return
	}
	s.mu.Lock()
	p := s.parts[nodeID]
	if p == nil || p.state != partWaiting {
		s.mu.Unlock()
		return
	}
	p.state = partSent // before the node can publish
	s.mu.Unlock()
	msg := &api.SubscriptionMessage{ID: s.id, Selector: s.selector, Options: opts}
	if !l.send(msg) {
		s.finish(nodeID, partSent, "%s is not taking log subscriptions (it is too slow or stuck): logs of its tasks are not available",
			nodeName(s.hostname(nodeID), nodeID))
		return
	}
	if s.b.listenerOf(nodeID) != l {
		// The listener ended meanwhile, maybe before it took msg.
		s.nodeLost(nodeID)
	}
}

func (s *subscription) hostname(nodeID string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.parts[nodeID]; p != nil {
		return p.hostname
	}
	return ""
}

// finish marks the node's part done if it is in state from, with a notice
// for the client if format is not empty.
func (s *subscription) finish(nodeID string, from partState, format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.parts[nodeID]
	if p == nil || p.state != from {
		return
	}
	p.state = partDone
	s.open--
	if format != "" {
		s.noticeLocked(nodeID, format, args...)
	}
	s.signal()
}

// nodeLost is called when the node's listener ended (or its publisher
// failed) while it had the subscription: without follow its part is over
// and reported; with follow it is reported and sent the subscription again,
// for new lines, when the node listens again.
func (s *subscription) nodeLost(nodeID string) {
	if s.ctx.Err() != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.parts[nodeID]
	if p == nil || p.state != partSent {
		return
	}
	if !s.opts.Follow {
		p.state = partDone
		s.open--
		s.noticeLocked(nodeID, "%s lost its connection to the manager: logs of its tasks may be incomplete", nodeName(p.hostname, nodeID))
		s.signal()
		return
	}
	p.state = partWaiting
	s.noticeLocked(nodeID, "%s lost its connection to the manager: its logs are missing until it comes back", nodeName(p.hostname, nodeID))
	s.signal()
	opts := s.opts
	opts.Tail = -1
	go s.deliver(nodeID, -1, &opts)
}

// sentTo reports whether the node has the subscription.
func (s *subscription) sentTo(nodeID string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.parts[nodeID]
	return p != nil && p.state == partSent
}

// finished reports whether every part is done (never with follow).
func (s *subscription) finished() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.opts.Follow && s.ready && s.open == 0
}

func (s *subscription) takeNotices() []*api.LogNotice {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.notices
	s.notices = nil
	return n
}

// push queues a batch for the client; it blocks while the queue is full.
func (s *subscription) push(ctx context.Context, m *api.SubscribeLogsMessage) error {
	select {
	case s.out <- m:
		return nil
	case <-s.ctx.Done():
		return status.Error(codes.Canceled, "the log subscription ended")
	case <-ctx.Done():
		return ctx.Err()
	}
}

// SubscribeLogs streams the selected tasks' logs to the client
// (api.LogsServer).
func (b *Broker) SubscribeLogs(req *api.SubscribeLogsRequest, stream api.Logs_SubscribeLogsServer) error {
	ctx := stream.Context()
	sel := req.GetSelector()
	if len(sel.GetServiceIDs()) == 0 && len(sel.GetTaskIDs()) == 0 {
		return status.Error(codes.InvalidArgument, "select the logs to show: give at least one service or task")
	}
	opts := api.LogSubscriptionOptions{}
	if req.Options != nil {
		opts = *req.Options.Copy()
	}
	for _, st := range opts.Streams {
		if st != api.LogStreamStdout && st != api.LogStreamStderr {
			return status.Errorf(codes.InvalidArgument, "log stream %d is unknown: use stdout (1) or stderr (2)", st)
		}
	}
	b.mu.Lock()
	if !b.running {
		b.mu.Unlock()
		return errNotRunning
	}
	stopped := b.stopped
	b.mu.Unlock()

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s := &subscription{
		id:     newID(),
		b:      b,
		opts:   opts,
		ctx:    sctx,
		cancel: cancel,
		out:    make(chan *api.SubscribeLogsMessage, ClientQueue),
		parts:  map[string]*part{},
		kick:   make(chan struct{}, 1),
	}

	// Resolve, and with follow start watching at that same snapshot.
	type target struct {
		id   string
		node *api.Node
	}
	var (
		targets []target
		rerr    error
		w       *store.Watch
	)
	view := func(tx store.ReadTx) {
		s.services, s.tasks, rerr = resolve(tx, sel)
		if rerr != nil {
			return
		}
		seen := map[string]bool{}
		for _, t := range selectedTasks(tx, s.services, s.tasks) {
			if t.NodeID == "" || seen[t.NodeID] {
				continue
			}
			seen[t.NodeID] = true
			targets = append(targets, target{t.NodeID, store.Get[*api.Node](tx, t.NodeID)})
		}
	}
	if opts.Follow {
		var err error
		w, _, err = b.cfg.Store.ViewAndWatch(view)
		if err != nil {
			return status.Errorf(codes.Internal, "watch the store: %v", err)
		}
		defer w.Close()
	} else {
		b.cfg.Store.View(view)
	}
	if rerr != nil {
		return rerr
	}
	s.selector = &api.LogSelector{ServiceIDs: sortedKeys(s.services), TaskIDs: sortedKeys(s.tasks)}

	b.mu.Lock()
	if b.stopped != stopped {
		b.mu.Unlock()
		return errNotRunning
	}
	b.subs[s.id] = s
	b.mu.Unlock()
	defer b.endSubscription(s)

	sort.Slice(targets, func(i, j int) bool { return targets[i].id < targets[j].id })
	for _, t := range targets {
		s.addNode(t.node, t.id)
	}
	s.mu.Lock()
	s.ready = true
	s.mu.Unlock()
	s.signal()
	b.log.Debug("log subscription", "subscription", s.id, "services", s.selector.ServiceIDs,
		"tasks", s.selector.TaskIDs, "nodes", len(targets), "follow", opts.Follow)

	watchDone := make(chan struct{})
	if w != nil {
		go func() {
			defer close(watchDone)
			s.follow(w)
		}()
		defer func() {
			cancel()
			w.Close()
			<-watchDone
		}()
	}

	sendNotices := func() error {
		if n := s.takeNotices(); len(n) > 0 {
			return stream.Send(&api.SubscribeLogsMessage{Notices: n})
		}
		return nil
	}
	for {
		select {
		case m := <-s.out:
			if err := stream.Send(m); err != nil {
				return err
			}
		case <-s.kick:
			if err := sendNotices(); err != nil {
				return err
			}
			if s.finished() {
				// Every publisher queued its last batch before closing.
				for {
					select {
					case m := <-s.out:
						if err := stream.Send(m); err != nil {
							return err
						}
					default:
						return sendNotices()
					}
				}
			}
		case <-ctx.Done():
			return ctx.Err()
		case <-stopped:
			return status.Error(codes.Unavailable, "this manager is no longer the leader: the log stream ended; run the command again")
		}
	}
}

// endSubscription forgets s and tells the nodes still sending to stop.
func (b *Broker) endSubscription(s *subscription) {
	s.cancel()
	b.mu.Lock()
	delete(b.subs, s.id)
	b.mu.Unlock()
	s.mu.Lock()
	var sending []string
	for id, p := range s.parts {
		if p.state == partSent {
			sending = append(sending, id)
		}
	}
	s.mu.Unlock()
	for _, id := range sending {
		if l := b.listenerOf(id); l != nil {
			l.send(&api.SubscriptionMessage{ID: s.id, Close: true})
		}
	}
}

// subscription returns the subscription id, nil if there is none.
func (b *Broker) subscription(id string) *subscription {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.subs[id]
}

// follow adds the nodes that tasks of the selected services are assigned to
// later on, until the subscription ends.
func (s *subscription) follow(w *store.Watch) {
	for {
		select {
		case <-s.ctx.Done():
			return
		case c, ok := <-w.C:
			if !ok {
				if s.ctx.Err() != nil {
					return
				}
				// Fell behind (or the store was restored): look again.
				s.b.log.Debug("log subscription watch ended; reading the store again", "subscription", s.id, "error", w.Err())
				var nodes map[string]*api.Node
				var err error
				w, _, err = s.b.cfg.Store.ViewAndWatch(func(tx store.ReadTx) {
					nodes = map[string]*api.Node{}
					for _, t := range selectedTasks(tx, s.services, nil) {
						if t.NodeID != "" {
							nodes[t.NodeID] = store.Get[*api.Node](tx, t.NodeID)
						}
					}
				})
				if err != nil {
					s.b.log.Warn("log subscription cannot watch the store; new tasks will not join it", "subscription", s.id, "error", err)
					return
				}
				defer w.Close()
				for id, n := range nodes {
					s.addNode(n, id)
				}
				continue
			}
			for _, e := range c.Events {
				t, ok := e.Object.(*api.Task)
				if !ok || e.Action == api.WatchActionKindRemove || t.NodeID == "" || !s.services[t.ServiceID] {
					continue
				}
				s.mu.Lock()
				p := s.parts[t.NodeID]
				known := p != nil && p.state != partDone
				s.mu.Unlock()
				if known {
					continue // the node's agent picks up its new tasks itself
				}
				var n *api.Node
				s.b.cfg.Store.View(func(tx store.ReadTx) { n = store.Get[*api.Node](tx, t.NodeID) })
				s.addNode(n, t.NodeID)
			}
		}
	}
}

// resolve turns the selector's references into IDs.
func resolve(tx store.ReadTx, sel *api.LogSelector) (services, tasks map[string]bool, err error) {
	services, tasks = map[string]bool{}, map[string]bool{}
	for _, ref := range sel.GetServiceIDs() {
		svc, err := resolveRef[*api.Service](tx, ref, true)
		if err != nil {
			return nil, nil, err
		}
		services[svc.ID] = true
	}
	for _, ref := range sel.GetTaskIDs() {
		t, err := resolveRef[*api.Task](tx, ref, false)
		if err != nil {
			return nil, nil, err
		}
		tasks[t.ID] = true
	}
	return services, tasks, nil
}

// resolveRef finds the one object a reference names: an exact ID, then (if
// byName) an exact name, then a unique ID prefix.
func resolveRef[T api.StoreObject](tx store.ReadTx, ref string, byName bool) (T, error) {
	var zero T
	kind := zero.Kind()
	if ref == "" {
		return zero, status.Errorf(codes.InvalidArgument, "an empty %s reference: give an ID or a name", kind)
	}
	if o := store.Get[T](tx, ref); o.GetID() != "" {
		return o, nil
	}
	if byName {
		found, err := store.Find[T](tx, store.ByName(ref))
		if err != nil {
			return zero, status.Errorf(codes.Internal, "look up %s %q: %v", kind, ref, err)
		}
		if len(found) == 1 {
			return found[0], nil
		}
		if len(found) > 1 {
			return zero, status.Errorf(codes.InvalidArgument, "%d %ss are named %q: use an ID", len(found), kind, ref)
		}
	}
	found, err := store.Find[T](tx, store.ByIDPrefix(ref))
	if err != nil {
		return zero, status.Errorf(codes.Internal, "look up %s %q: %v", kind, ref, err)
	}
	switch len(found) {
	case 0:
		return zero, status.Errorf(codes.NotFound, "%s %q not found", kind, ref)
	case 1:
		return found[0], nil
	}
	return zero, status.Errorf(codes.InvalidArgument, "%s ID prefix %q is ambiguous (%d match): give more of the ID", kind, ref, len(found))
}

// selectedTasks lists the tasks of the services and the tasks named.
func selectedTasks(tx store.ReadTx, services, tasks map[string]bool) []*api.Task {
	var out []*api.Task
	for id := range services {
		ts, _ := store.Find[*api.Task](tx, store.ByServiceID(id))
		out = append(out, ts...)
	}
	for id := range tasks {
		if t := store.Get[*api.Task](tx, id); t != nil && !services[t.ServiceID] {
			out = append(out, t)
		}
	}
	return out
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
