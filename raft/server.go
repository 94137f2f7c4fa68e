package raft

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
)

// server is the Raft gRPC service of one node.
type server struct {
	n *Node
}

// NewServer returns the Raft gRPC service that receives messages for n, and Join and Leave
// requests. Register it on the manager's remote (mTLS) server, for managers only.
func NewServer(n *Node) api.RaftServer { return &server{n: n} }

func (s *server) node() (*Node, error) {
	if s.n == nil {
		return nil, status.Error(codes.Unavailable, "this manager's raft member is not running")
	}
	return s.n, nil
}

func (s *server) chunkTimeout() time.Duration {
	if t, ok := s.n.cfg.Transport.(*GRPCTransport); ok {
		return t.cfg.SnapshotChunkTimeout
	}
	return DefaultSnapshotChunkTimeout
}

// ProcessRaftMessage steps one message.
func (s *server) ProcessRaftMessage(ctx context.Context, req *api.ProcessRaftMessageRequest) (*api.ProcessRaftMessageResponse, error) {
	n, err := s.node()
	if err != nil {
		return nil, err
	}
	if req.Message == nil {
		return nil, status.Error(codes.InvalidArgument, "the request has no raft message")
	}
	if err := n.receive(ctx, req.Message); err != nil {
		return nil, toStatus(err)
	}
	return &api.ProcessRaftMessageResponse{}, nil
}

// ProcessRaftMessages steps a batch of messages, in order, in one turn of the node's loop.
func (s *server) ProcessRaftMessages(ctx context.Context, req *api.ProcessRaftMessagesRequest) (*api.ProcessRaftMessageResponse, error) {
	n, err := s.node()
	if err != nil {
		return nil, err
	}
	for _, m := range req.Messages {
		if m == nil {
			return nil, status.Error(codes.InvalidArgument, "the batch has an empty raft message")
		}
	}
	if err := n.receive(ctx, req.Messages...); err != nil {
		return nil, toStatus(err)
	}
	return &api.ProcessRaftMessageResponse{}, nil
}

// StreamRaftMessage receives one message in chunks, each within the chunk timeout, and steps it.
func (s *server) StreamRaftMessage(stream api.Raft_StreamRaftMessageServer) error {
	n, err := s.node()
	if err != nil {
		return err
	}
	ctx := stream.Context()
	timeout := s.chunkTimeout()
	type received struct {
		req *api.StreamRaftMessageRequest
		err error
	}
	recvc := make(chan received, 1)
	// recv waits for the next chunk; the handler returning (on a timeout) ends a pending Recv.
	recv := func(i int) (*api.StreamRaftMessageRequest, error) {
		go func() {
			req, err := stream.Recv()
			recvc <- received{req, err}
		}()
		t := time.NewTimer(timeout)
		defer t.Stop()
		select {
		case r := <-recvc:
			return r.req, r.err
		case <-t.C:
			return nil, status.Errorf(codes.DeadlineExceeded, "chunk %d did not arrive within %s", i+1, timeout)
		}
	}

	first, err := recv(0)
	if errors.Is(err, io.EOF) {
		return status.Error(codes.InvalidArgument, "empty raft message stream")
	}
	if err != nil {
		return err
	}
	if first.TotalSize > maxStreamedMessageBytes {
		return status.Errorf(codes.InvalidArgument, "a streamed raft message of %d bytes is over the %d byte limit", first.TotalSize, uint64(maxStreamedMessageBytes))
	}
	if first.Message != nil && (first.Message.Type != raftpb.MsgSnap || first.Message.Snapshot == nil) {
		return status.Errorf(codes.InvalidArgument, "only a snapshot message is streamed with its data apart, not %s", first.Message.Type)
	}
	data := make([]byte, 0, first.TotalSize)
	data = append(data, first.Data...)
	for i := 1; ; i++ {
		if uint64(len(data)) > first.TotalSize {
			return status.Errorf(codes.InvalidArgument, "the stream carries more than the %d bytes its first chunk announced", first.TotalSize)
		}
		req, err := recv(i)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		data = append(data, req.Data...)
	}
	if uint64(len(data)) != first.TotalSize {
		return status.Errorf(codes.InvalidArgument, "the stream ended after %d of the %d bytes its first chunk announced", len(data), first.TotalSize)
	}
	var m raftpb.Message
	if first.Message != nil {
		m = *first.Message
		m.Snapshot.Data = data
	} else if err := m.Unmarshal(data); err != nil {
		return status.Errorf(codes.InvalidArgument, "streamed raft message: %v", err)
	}
	if err := n.receive(ctx, &m); err != nil {
		return toStatus(err)
	}
	return stream.SendAndClose(&api.StreamRaftMessageResponse{})
}

// Join adds the caller as a voter (on the leader; a follower forwards it there).
func (s *server) Join(ctx context.Context, req *api.JoinRequest) (*api.JoinResponse, error) {
	n, err := s.node()
	if err != nil {
		return nil, err
	}
	if req.RaftID == 0 || req.Addr == "" {
		return nil, status.Error(codes.InvalidArgument, "join needs the caller's raft ID and address")
	}
	if _, ok := n.cfg.Transport.(PeerTransport); !ok {
		// A member added here could never be reached: the cluster would stall without quorum.
		return nil, status.Error(codes.FailedPrecondition, "this manager runs raft without a transport to other managers; it cannot add members")
	}
	if !n.IsLeader() {
		return forward(ctx, n, func(ctx context.Context, c api.RaftClient) (*api.JoinResponse, error) { return c.Join(ctx, req) })
	}
	if err := n.AddMember(ctx, req.RaftID, req.Addr); err != nil {
		return nil, toStatus(err)
	}
	resp := &api.JoinResponse{Leader: n.id}
	for _, m := range n.Members() {
		resp.Members = append(resp.Members, &api.RaftMember{RaftID: m.ID, Addr: m.Addr})
	}
	return resp, nil
}

// Leave removes a member (on the leader; a follower forwards it there).
func (s *server) Leave(ctx context.Context, req *api.LeaveRequest) (*api.LeaveResponse, error) {
	n, err := s.node()
	if err != nil {
		return nil, err
	}
	if req.RaftID == 0 {
		return nil, status.Error(codes.InvalidArgument, "leave needs the raft ID to remove")
	}
	if !n.IsLeader() {
		return forward(ctx, n, func(ctx context.Context, c api.RaftClient) (*api.LeaveResponse, error) { return c.Leave(ctx, req) })
	}
	if err := n.RemoveMember(ctx, req.RaftID); err != nil {
		return nil, toStatus(err)
	}
	return &api.LeaveResponse{}, nil
}

// forward sends a Join or Leave that reached a follower to the leader, once: a call that was
// forwarded already is refused rather than forwarded again.
func forward[T any](ctx context.Context, n *Node, call func(context.Context, api.RaftClient) (T, error)) (T, error) {
	var zero T
	if md, ok := metadata.FromIncomingContext(ctx); ok && len(md.Get(forwardedKey)) > 0 {
		return zero, status.Error(codes.Unavailable, "this manager is no longer the leader; retry")
	}
	addr := n.LeaderAddr()
	if addr == "" {
		return zero, status.Error(codes.Unavailable, "no leader: the cluster has not elected a leader yet or has lost quorum; retry shortly")
	}
	t, ok := n.cfg.Transport.(*GRPCTransport)
	if !ok {
		return zero, status.Errorf(codes.FailedPrecondition, "not the leader; leader is at %s", addr)
	}
	conn, release, err := t.connTo(ctx, addr)
	if err != nil {
		return zero, status.Errorf(codes.Unavailable, "not the leader, and the leader at %s cannot be reached: %v", addr, err)
	}
	defer release()
	return call(metadata.AppendToOutgoingContext(ctx, forwardedKey, "1"), api.NewRaftClient(conn))
}

// toStatus turns the node's errors into gRPC statuses with the codes the API documents.
func toStatus(err error) error {
	var se *StorageError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrMemberRemoved), errors.Is(err, ErrWouldLoseQuorum):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, errWrongMember), errors.Is(err, ErrUnknownMember):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, ErrNotLeader):
		return status.Error(codes.Unavailable, "no leader: the cluster has not elected a leader yet or has lost quorum; retry shortly")
	case errors.Is(err, ErrStopped), errors.Is(err, ErrLeadershipLost), errors.As(err, &se):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(codes.Unknown, fmt.Sprintf("raft: %v", err))
}
