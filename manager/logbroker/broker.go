// Package logbroker is the leader's relay of task logs: clients subscribe
// with Logs.SubscribeLogs (the control socket), the broker forwards the
// subscription to the agents of the nodes that hold the selected tasks
// (LogBroker.ListenSubscriptions, the remote API), and relays what they
// publish (LogBroker.PublishLogs) to the client.
//
// # Shape
//
// New builds a Broker and starts nothing. Run is a leader-only loop: the
// manager runs it while it leads; outside Run every handler answers
// Unavailable, and when Run ends every open stream ends with Unavailable
// (agents open a new listener with their next session, clients retry).
//
// # A subscription
//
//  1. SubscribeLogs resolves the selector against the store (services by ID,
//     name or unique ID prefix; tasks by ID or unique ID prefix) into the
//     tasks it selects and the nodes they are assigned to.
//  2. For each node: a node that is not READY is reported to the client in
//     a notice ("node w2 (ID) is down: logs of its tasks are not
//     available") and not waited for. A READY node is sent the subscription
//     on its ListenSubscriptions stream; one that has no such stream open to
//     this manager gets Config.NodeWait to open one, and is then reported as
//     unreachable and not waited for.
//  3. Each node publishes its tasks' lines on a PublishLogs stream, then
//     close. Without follow, the client's stream ends once every node sent
//     has closed its part (or was reported); with follow it runs until the
//     client ends it, and the subscription watches the store: a task of a
//     selected service assigned to a node not yet in it (scale up, a
//     replacement elsewhere) adds that node. A node whose listener goes
//     away while it has a part is reported ("lost its connection"); with
//     follow it is sent the subscription again, for new lines only, if it
//     comes back.
//  4. When the client's stream ends, the nodes still sending are sent close.
//
// # Trust
//
// A node publishes only for a subscription it was sent, and only lines of
// its own tasks (the store says so) that the subscription selects: anything
// else ends its PublishLogs stream with PermissionDenied. The node ID in
// each line's context is the caller's, from its certificate.
//
// # Memory
//
// Each subscription has a bounded queue to its client (ClientQueue batches,
// each at most what one PublishLogs message carries). A publisher whose
// client is slower than the nodes blocks on that queue: its PublishLogs
// stream stops being read, gRPC flow control stops the agent, and the agent
// stops reading the task's log. Nothing is dropped and the manager's memory
// stays bounded; a client that stops reading slows down only its own
// subscription. Notices (at most a few per node) are kept apart, unqueued.
package logbroker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/manager/store"
)

const (
	// DefaultNodeWait is how long a READY node without a listener may take
	// to open one before the client is told it is unreachable.
	DefaultNodeWait = 2 * time.Second
	// ClientQueue is how many published batches wait for a slow client
	// before publishers block.
	ClientQueue = 32
	// listenerQueue is how many subscription messages wait for a node's
	// listener; a node that lets it fill is treated as unreachable.
	listenerQueue = 256
)

var errNotRunning = status.Error(codes.Unavailable,
	"this manager is not the leader (or is still taking over): task logs are served by the leader; retry, or ask the leader")

// Config is what a Broker needs.
type Config struct {
	// Store is the cluster store (required).
	Store *store.MemoryStore
	// Identify returns the calling node's ID from an agent's request
	// context (its certificate). Required.
	Identify func(ctx context.Context) (nodeID string, err error)
	// NodeWait: see DefaultNodeWait (zero: that).
	NodeWait time.Duration
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

// Broker serves Logs and LogBroker while Run runs.
type Broker struct {
	api.UnimplementedLogsServer
	api.UnimplementedLogBrokerServer

	cfg Config
	log *slog.Logger

	mu        sync.Mutex
	running   bool
	stopped   chan struct{}            // closed when this term's Run ends
	listeners map[string]*listener     // by node ID
	subs      map[string]*subscription // by ID
	connected chan struct{}            // closed and replaced when a listener registers
}

// New makes a Broker; it starts nothing.
func New(cfg Config) *Broker {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.NodeWait <= 0 {
		cfg.NodeWait = DefaultNodeWait
	}
	return &Broker{
		cfg:       cfg,
		log:       cfg.Logger.With("module", "logbroker"),
		listeners: map[string]*listener{},
		subs:      map[string]*subscription{},
		connected: make(chan struct{}),
	}
}

// Run serves until ctx ends, then ends every stream with Unavailable.
func (b *Broker) Run(ctx context.Context) error {
	b.mu.Lock()
	if b.running {
		b.mu.Unlock()
		return fmt.Errorf("logbroker: Run called while running")
	}
	b.running = true
	b.stopped = make(chan struct{})
	b.mu.Unlock()

	<-ctx.Done()

	b.mu.Lock()
	b.running = false
	close(b.stopped)
	b.listeners = map[string]*listener{}
	b.subs = map[string]*subscription{}
	b.mu.Unlock()
	return nil
}

// term is the stop channel of the current Run, or an error outside Run.
func (b *Broker) term() (<-chan struct{}, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.running {
		return nil, errNotRunning
	}
	return b.stopped, nil
}

// listener is a node's ListenSubscriptions stream.
type listener struct {
	nodeID   string
	out      chan *api.SubscriptionMessage
	replaced chan struct{} // closed when a newer stream of the node took over
}

// send queues m for the node; false if the node is not reading.
func (l *listener) send(m *api.SubscriptionMessage) bool {
	select {
	case l.out <- m:
		return true
	default:
		return false
	}
}

// ListenSubscriptions streams the calling node's subscriptions
// (api.LogBrokerServer).
func (b *Broker) ListenSubscriptions(_ *api.ListenSubscriptionsRequest, stream api.LogBroker_ListenSubscriptionsServer) error {
	ctx := stream.Context()
	nodeID, err := b.cfg.Identify(ctx)
	if err != nil {
		return err
	}
	l := &listener{nodeID: nodeID, out: make(chan *api.SubscriptionMessage, listenerQueue), replaced: make(chan struct{})}
	b.mu.Lock()
	if !b.running {
		b.mu.Unlock()
		return errNotRunning
	}
	stopped := b.stopped
	if old := b.listeners[nodeID]; old != nil {
		close(old.replaced)
	}
	b.listeners[nodeID] = l
	close(b.connected)
	b.connected = make(chan struct{})
	b.mu.Unlock()
	b.log.Debug("node listens for log subscriptions", "node.id", nodeID)

	defer b.listenerGone(l)
	for {
		select {
		case m := <-l.out:
			if err := stream.Send(m); err != nil {
				return err
			}
		case <-l.replaced:
			return status.Error(codes.Aborted, "replaced by a newer subscription listener of this node")
		case <-stopped:
			return status.Error(codes.Unavailable, "this manager is no longer the leader; listen again with the new leader")
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// listenerGone unregisters l and tells the subscriptions that were waiting
// for its node.
func (b *Broker) listenerGone(l *listener) {
	b.mu.Lock()
	if b.listeners[l.nodeID] != l {
		b.mu.Unlock()
		return // replaced: the newer listener carries on
	}
	delete(b.listeners, l.nodeID)
	subs := make([]*subscription, 0, len(b.subs))
	for _, s := range b.subs {
		subs = append(subs, s)
	}
	b.mu.Unlock()
	for _, s := range subs {
		s.nodeLost(l.nodeID)
	}
}

// listenerOf is the node's current listener, nil if none.
func (b *Broker) listenerOf(nodeID string) *listener {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.listeners[nodeID]
}

// waitListener waits until nodeID has a listener, at most d (d < 0: no
// limit); nil if none came or ctx ended.
func (b *Broker) waitListener(ctx context.Context, nodeID string, d time.Duration) *listener {
	var expired <-chan time.Time
	if d >= 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		expired = t.C
	}
	for {
		b.mu.Lock()
		l, connected := b.listeners[nodeID], b.connected
		b.mu.Unlock()
		if l != nil {
			return l
		}
		select {
		case <-connected:
		case <-expired:
			return nil
		case <-ctx.Done():
			return nil
		}
	}
}

func newID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
