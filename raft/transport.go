package raft

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
)

// PeerTransport is a Transport that must know the members' addresses. The node calls SetPeer
// and RemovePeer from New and from its Run loop, as it applies membership changes and
// snapshots: they must not block.
type PeerTransport interface {
	Transport
	// SetPeer sets (or changes) the address of member id.
	SetPeer(id uint64, addr string)
	// RemovePeer forgets member id: nothing is sent to it any more.
	RemovePeer(id uint64)
}

// leaveForwarder asks the member at addr (the leader) to remove member id; a leader that removes
// itself uses it after handing leadership over.
type leaveForwarder interface {
	forwardLeave(ctx context.Context, addr string, id uint64) error
}

// Transport defaults (TransportConfig's zero values).
const (
	// DefaultSendTimeout bounds one ProcessRaftMessage call. The receiver answers once its loop
	// took the message, which can wait for one Ready (an fsync, applying a batch, installing a
	// snapshot), so this is generous; a message that times out is reported unreachable and
	// raft sends again.
	DefaultSendTimeout = 5 * time.Second
	// DefaultSnapshotChunkSize is the data in one StreamRaftMessage chunk.
	DefaultSnapshotChunkSize = 1 << 20
	// DefaultSnapshotChunkTimeout bounds each chunk of a streamed snapshot on its own (sending it
	// on the sender, its arrival on the receiver), never the whole: a snapshot of any size goes
	// through as long as it keeps moving.
	DefaultSnapshotChunkTimeout = 10 * time.Second
	// DefaultPeerQueueSize messages wait per member; when full, messages are dropped and the
	// member is reported unreachable (raft then probes it instead of streaming to it).
	DefaultPeerQueueSize = 4096

	// maxUnaryMessageBytes is the largest message sent with ProcessRaftMessage, under gRPC's
	// default 4 MiB receive limit with room for framing; larger ones are streamed.
	maxUnaryMessageBytes = 4<<20 - 64<<10
	// maxBatchMessages bounds the messages of one ProcessRaftMessages call.
	maxBatchMessages = 512
	// maxStreamedMessageBytes bounds what a receiver accepts in one streamed message.
	maxStreamedMessageBytes = 1 << 36

	// forwardedKey marks a Join or Leave forwarded by a follower, so it is never forwarded twice.
	forwardedKey = "flotilla-raft-forwarded"
)

// TransportConfig configures a GRPCTransport. Zero values take the defaults above.
type TransportConfig struct {
	// Dial opens a client connection to a member's address; the caller's, so it adds the
	// node's TLS credentials. Required.
	Dial   func(ctx context.Context, addr string) (*grpc.ClientConn, error)
	Logger *slog.Logger

	SendTimeout          time.Duration
	SnapshotChunkSize    int
	SnapshotChunkTimeout time.Duration
	QueueSize            int
}

// GRPCTransport sends raft messages to the other members over the Raft gRPC service. Each member
// has a bounded queue drained by its own goroutine (one unary call per message, in order) and a
// separate goroutine that streams snapshots in chunks, so a snapshot never delays heartbeats and
// Send never blocks. It serves one Node (set it as Config.Transport); the node's Run closes it.
type GRPCTransport struct {
	cfg  TransportConfig
	lg   *slog.Logger
	node atomic.Pointer[Node]

	mu     sync.Mutex
	peers  map[uint64]*peer
	closed bool
	wg     sync.WaitGroup

	// filter, if set (tests), drops every message for which it returns true, like a network
	// that loses them.
	filter atomic.Pointer[func(m raftpb.Message) bool]
}

// NewGRPCTransport returns a transport; it starts a goroutine per member once it knows the member.
func NewGRPCTransport(cfg TransportConfig) *GRPCTransport {
	setDefault(&cfg.SendTimeout, DefaultSendTimeout)
	setDefault(&cfg.SnapshotChunkSize, DefaultSnapshotChunkSize)
	setDefault(&cfg.SnapshotChunkTimeout, DefaultSnapshotChunkTimeout)
	setDefault(&cfg.QueueSize, DefaultPeerQueueSize)
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &GRPCTransport{cfg: cfg, lg: cfg.Logger.With("module", "raft/transport"), peers: map[uint64]*peer{}}
}

func (t *GRPCTransport) bind(n *Node) {
	t.node.Store(n)
	t.lg = t.lg.With("raft.id", fmt.Sprintf("%x", n.id))
}

// SetPeer sets the address of member id (a joining member sets the members Join returned before
// starting its node; the node keeps them current from then on).
func (t *GRPCTransport) SetPeer(id uint64, addr string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return
	}
	if n := t.node.Load(); n != nil && n.id == id {
		return
	}
	if p, ok := t.peers[id]; ok {
		p.setAddr(addr)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &peer{
		t: t, id: id, addr: addr, ctx: ctx, cancel: cancel,
		lg:    t.lg.With("member", fmt.Sprintf("%x", id)),
		msgs:  make(chan raftpb.Message, t.cfg.QueueSize),
		snaps: make(chan raftpb.Message, 1),
	}
	t.peers[id] = p
	t.wg.Add(2)
	go func() { defer t.wg.Done(); p.runMessages() }()
	go func() { defer t.wg.Done(); p.runSnapshots() }()
}

// RemovePeer stops sending to member id.
func (t *GRPCTransport) RemovePeer(id uint64) {
	t.mu.Lock()
	p, ok := t.peers[id]
	delete(t.peers, id)
	t.mu.Unlock()
	if ok {
		p.cancel() // its goroutines close its connection on their way out
	}
}

// close stops every member's goroutines and closes their connections.
func (t *GRPCTransport) close() {
	t.mu.Lock()
	t.closed = true
	peers := t.peers
	t.peers = map[uint64]*peer{}
	t.mu.Unlock()
	for _, p := range peers {
		p.cancel()
	}
	t.wg.Wait()
}

func (t *GRPCTransport) peer(id uint64) *peer {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.peers[id]
}

func (t *GRPCTransport) reportUnreachable(id uint64) {
	if n := t.node.Load(); n != nil {
		n.reportUnreachable(id)
	}
}

func (t *GRPCTransport) reportSnapshot(id uint64, st raft.SnapshotStatus) {
	if n := t.node.Load(); n != nil {
		n.reportSnapshot(id, st)
	}
}

// Send queues msgs for their members without blocking.
func (t *GRPCTransport) Send(msgs []raftpb.Message) {
	filter := t.filter.Load()
	if n := t.node.Load(); n != nil && n.isRemoved() {
		return // the members refuse whatever a removed member sends
	}
	for _, m := range msgs {
		if filter != nil && (*filter)(m) {
			continue
		}
		p := t.peer(m.To)
		if p == nil {
			t.lg.Debug("raft transport: no address for member; message dropped", "member", fmt.Sprintf("%x", m.To), "type", m.Type.String())
			t.reportUnreachable(m.To)
			if m.Type == raftpb.MsgSnap {
				t.reportSnapshot(m.To, raft.SnapshotFailure)
			}
			continue
		}
		if m.Type == raftpb.MsgSnap {
			select {
			case p.snaps <- m:
			default: // one snapshot is on its way already
				t.reportSnapshot(m.To, raft.SnapshotFailure)
			}
			continue
		}
		select {
		case p.msgs <- m:
		default:
			p.dropped.Add(1)
			t.reportUnreachable(m.To)
		}
	}
}

// connTo returns a connection to addr: a member's own if one has that address (release is a
// no-op), else a new one that release closes.
func (t *GRPCTransport) connTo(ctx context.Context, addr string) (*grpc.ClientConn, func(), error) {
	t.mu.Lock()
	var found *peer
	for _, p := range t.peers {
		if p.address() == addr {
			found = p
			break
		}
	}
	t.mu.Unlock()
	if found != nil {
		if conn, err := found.conn(ctx); err == nil {
			return conn, func() {}, nil
		}
	}
	conn, err := t.cfg.Dial(ctx, addr)
	if err != nil {
		return nil, nil, err
	}
	return conn, func() { _ = conn.Close() }, nil
}

func (t *GRPCTransport) forwardLeave(ctx context.Context, addr string, id uint64) error {
	conn, release, err := t.connTo(ctx, addr)
	if err != nil {
		return err
	}
	defer release()
	ctx = metadata.AppendToOutgoingContext(ctx, forwardedKey, "1")
	_, err = api.NewRaftClient(conn).Leave(ctx, &api.LeaveRequest{RaftID: id})
	if status.Code(err) == codes.FailedPrecondition {
		return fmt.Errorf("%w (the leader at %s said: %s)", ErrWouldLoseQuorum, addr, status.Convert(err).Message())
	}
	return err
}

// peer is one member as the transport sees it.
type peer struct {
	t      *GRPCTransport
	id     uint64
	lg     *slog.Logger
	ctx    context.Context // cancelled when the member is removed or the transport closed
	cancel context.CancelFunc
	msgs   chan raftpb.Message
	snaps  chan raftpb.Message

	dropped atomic.Uint64 // messages dropped because the queue was full

	mu      sync.Mutex
	addr    string
	cc      *grpc.ClientConn
	failing bool // the last message failed (log once per outage)
}

func (p *peer) address() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.addr
}

func (p *peer) setAddr(addr string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.addr == addr {
		return
	}
	p.lg.Info("raft transport: member address changed", "from", p.addr, "to", addr)
	p.addr = addr
	if p.cc != nil {
		_ = p.cc.Close()
		p.cc = nil
	}
}

// conn returns the member's connection, dialing it if needed.
func (p *peer) conn(ctx context.Context) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cc != nil {
		return p.cc, nil
	}
	if p.ctx.Err() != nil {
		return nil, p.ctx.Err()
	}
	cc, err := p.t.cfg.Dial(ctx, p.addr)
	if err != nil {
		return nil, fmt.Errorf("dial member %x at %s: %w", p.id, p.addr, err)
	}
	p.cc = cc
	return cc, nil
}

func (p *peer) closeConn() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cc != nil {
		_ = p.cc.Close()
		p.cc = nil
	}
}

// runMessages sends the member's messages in order: what queued up while the previous call was
// under way goes in one ProcessRaftMessages call (up to maxUnaryMessageBytes), so the receiver
// steps it in one turn of its loop with one log write, and a message too big for one call is
// streamed.
func (p *peer) runMessages() {
	defer p.closeConn()
	var next *raftpb.Message // taken from the queue, for the next batch
	for {
		if next == nil {
			select {
			case <-p.ctx.Done():
				return
			case m := <-p.msgs:
				next = &m
			}
		}
		if next.Size() > maxUnaryMessageBytes {
			m := *next
			next = nil
			p.outcome(m, p.stream(m))
			continue
		}
		batch, size := []*raftpb.Message{next}, next.Size()
		next = nil
	fill:
		for len(batch) < maxBatchMessages {
			select {
			case m := <-p.msgs:
				if ms := m.Size(); ms > maxUnaryMessageBytes || size+ms > maxUnaryMessageBytes {
					next = &m
					break fill
				}
				batch = append(batch, &m)
				size += m.Size()
			default:
				break fill
			}
		}
		p.outcome(*batch[0], p.send(batch))
	}
}

func (p *peer) runSnapshots() {
	for {
		select {
		case <-p.ctx.Done():
			return
		case m := <-p.snaps:
			start := time.Now()
			size := 0
			if m.Snapshot != nil {
				size = len(m.Snapshot.Data)
			}
			p.lg.Info("raft transport: sending a snapshot", "index", m.Snapshot.Metadata.Index, "bytes", size)
			err := p.stream(m)
			p.outcome(m, err)
			if err != nil {
				p.lg.Warn("raft transport: sending a snapshot failed; raft will send another", "index", m.Snapshot.Metadata.Index, "err", err)
				p.t.reportSnapshot(p.id, raft.SnapshotFailure)
				continue
			}
			p.lg.Info("raft transport: snapshot sent", "index", m.Snapshot.Metadata.Index, "bytes", size,
				"duration", time.Since(start).Round(time.Millisecond))
			p.t.reportSnapshot(p.id, raft.SnapshotFinish)
		}
	}
}

func (p *peer) send(batch []*raftpb.Message) error {
	ctx, cancel := context.WithTimeout(p.ctx, p.t.cfg.SendTimeout)
	defer cancel()
	cc, err := p.conn(ctx)
	if err != nil {
		return err
	}
	c := api.NewRaftClient(cc)
	if len(batch) == 1 {
		_, err = c.ProcessRaftMessage(ctx, &api.ProcessRaftMessageRequest{Message: batch[0]})
	} else {
		_, err = c.ProcessRaftMessages(ctx, &api.ProcessRaftMessagesRequest{Messages: batch})
	}
	return err
}

// outcome reports a failed message to the node (and logs the first failure of an outage).
func (p *peer) outcome(m raftpb.Message, err error) {
	p.mu.Lock()
	wasFailing := p.failing
	p.failing = err != nil
	p.mu.Unlock()
	if err == nil {
		if wasFailing {
			p.lg.Info("raft transport: member reachable again", "dropped_messages", p.dropped.Load())
		}
		return
	}
	if p.ctx.Err() != nil {
		return // removed, or the transport closed
	}
	p.t.reportUnreachable(p.id)
	switch status.Code(err) {
	case codes.FailedPrecondition:
		// Only a member that was removed gets this answer.
		if n := p.t.node.Load(); n != nil && !n.isRemoved() {
			p.lg.Warn("raft transport: member refused our message: this member was removed from the cluster", "err", err)
			n.markRemoved()
		}
		return
	case codes.NotFound:
		if !wasFailing {
			p.lg.Warn("raft transport: the member's address answers as another raft member", "addr", p.address(), "err", err)
		}
		return
	}
	if !wasFailing {
		p.lg.Warn("raft transport: cannot reach member", "addr", p.address(), "type", m.Type.String(), "err", err)
	} else {
		p.lg.Debug("raft transport: cannot reach member", "addr", p.address(), "type", m.Type.String(), "err", err)
	}
}

// stream sends m with StreamRaftMessage in chunks of SnapshotChunkSize, each send with its own
// deadline. A snapshot's data is sent as is after the message stripped of it; any other message
// too big for one call is sent marshalled.
func (p *peer) stream(m raftpb.Message) error {
	first := &api.StreamRaftMessageRequest{}
	var data []byte
	if m.Type == raftpb.MsgSnap && m.Snapshot != nil {
		head, sn := m, *m.Snapshot
		data, sn.Data = sn.Data, nil
		head.Snapshot = &sn
		first.Message = &head
	} else {
		var err error
		if data, err = m.Marshal(); err != nil {
			return fmt.Errorf("marshal %s: %w", m.Type, err)
		}
	}
	first.TotalSize = uint64(len(data))

	ctx, cancel := context.WithCancel(p.ctx)
	defer cancel()
	timeout := p.t.cfg.SnapshotChunkTimeout
	var expired atomic.Bool
	within := func(fn func() error) error {
		t := time.AfterFunc(timeout, func() { expired.Store(true); cancel() })
		err := fn()
		t.Stop()
		if err != nil && expired.Load() {
			return fmt.Errorf("no progress within %s (per-chunk deadline): %w", timeout, err)
		}
		return err
	}
	cc, err := p.conn(ctx)
	if err != nil {
		return err
	}
	var stream api.Raft_StreamRaftMessageClient
	if err := within(func() (err error) {
		stream, err = api.NewRaftClient(cc).StreamRaftMessage(ctx)
		return err
	}); err != nil {
		return err
	}
	chunk := p.t.cfg.SnapshotChunkSize
	end := min(chunk, len(data))
	first.Data = data[:end]
	chunks := max((len(data)+chunk-1)/chunk, 1)
	for i, req := 0, first; ; i++ {
		err := within(func() error {
			err := stream.Send(req)
			if errors.Is(err, io.EOF) { // the stream ended: its status says why
				_, err = stream.CloseAndRecv()
			}
			return err
		})
		if err != nil {
			return fmt.Errorf("chunk %d of %d: %w", i+1, chunks, err)
		}
		if end >= len(data) {
			break
		}
		next := min(end+chunk, len(data))
		req = &api.StreamRaftMessageRequest{Data: data[end:next]}
		end = next
	}
	return within(func() error {
		_, err := stream.CloseAndRecv()
		return err
	})
}
