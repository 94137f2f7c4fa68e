package manager

import (
	"context"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
)

// Control API calls on a follower: reads (Get*, List*) are served from the
// follower's own store; writes are forwarded to the leader, one hop, over
// the remote API with this manager's certificate. The leader answers with
// the raft index it had applied when the write returned (appliedIndexHeader),
// and the follower waits until it has applied that far before answering, so
// a caller's reads on this follower never miss its own preceding writes.

const (
	// appliedIndexHeader carries, on every Control response of a leader,
	// the raft index it had applied by then.
	appliedIndexHeader = "flotilla-applied-index"
	// forwardedHeader marks a call forwarded by a follower: it is never
	// forwarded again.
	forwardedHeader = "flotilla-forwarded"
)

// controlServiceName prefixes the full names of the Control methods.
var controlServiceName = "/" + api.ControlServiceName() + "/"

// isControlWrite reports whether a full method name is a Control write.
func isControlWrite(fullMethod string) bool {
	name, ok := strings.CutPrefix(fullMethod, controlServiceName)
	return ok && !strings.HasPrefix(name, "Get") && !strings.HasPrefix(name, "List")
}

// controlResponseTypes maps each Control method name to its response type,
// from the generated server interface, to decode a forwarded answer.
var controlResponseTypes = func() map[string]reflect.Type {
	out := map[string]reflect.Type{}
	srv := reflect.TypeOf((*api.ControlServer)(nil)).Elem()
	for i := 0; i < srv.NumMethod(); i++ {
		m := srv.Method(i)
		if m.Type.NumOut() == 2 {
			out[m.Name] = m.Type.Out(0).Elem()
		}
	}
	return out
}()

// forwarder routes Control calls as described above.
type forwarder struct {
	isLeader    func() bool
	leaderAddr  func() string // "" when no leader is known
	applied     func() uint64
	waitApplied func(ctx context.Context, index uint64) error
	dial        func(ctx context.Context, addr string) (*grpc.ClientConn, error)

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn // by leader address
}

// unary is the interceptor of the Control API (local socket and remote).
func (f *forwarder) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if !strings.HasPrefix(info.FullMethod, controlServiceName) {
		return handler(ctx, req)
	}
	if f.isLeader() || !isControlWrite(info.FullMethod) {
		resp, err := handler(ctx, req)
		if f.isLeader() {
			_ = grpc.SetHeader(ctx, metadata.Pairs(appliedIndexHeader, strconv.FormatUint(f.applied(), 10)))
		}
		return resp, err
	}
	if md, _ := metadata.FromIncomingContext(ctx); len(md.Get(forwardedHeader)) > 0 {
		return nil, status.Error(codes.Unavailable, "forwarded to a manager that is not the leader any more (leadership is changing); retry shortly")
	}
	addr := f.leaderAddr()
	if addr == "" {
		// No leader known: the local handler fails with the store's
		// "no leader" answer.
		return handler(ctx, req)
	}
	for attempt := 1; ; attempt++ {
		resp, err := f.forward(ctx, addr, info.FullMethod, req)
		if err == nil || ctx.Err() != nil || attempt == forwardAttempts {
			return resp, err
		}
		// The leader did not answer: if another has been elected
		// meanwhile (the old one was cut off, so the write was not
		// made), go there; otherwise give up rather than hang.
		code := status.Code(err)
		next := f.leaderAddr()
		if (code != codes.Unavailable && code != codes.DeadlineExceeded) || next == "" || next == addr {
			return resp, err
		}
		addr = next
	}
}

const (
	// forwardTimeout bounds one forwarded call, so that a write on a
	// follower of a leader that went silent answers instead of hanging.
	forwardTimeout = 5 * time.Second
	// forwardAttempts bounds the leaders one write is forwarded to.
	forwardAttempts = 3
)

// forward sends one write to the leader at addr and waits until this
// manager has applied what the leader had when it answered.
func (f *forwarder) forward(ctx context.Context, addr, method string, req any) (any, error) {
	name := strings.TrimPrefix(method, controlServiceName)
	typ, ok := controlResponseTypes[name]
	if !ok {
		return nil, status.Errorf(codes.Internal, "cannot forward %s: unknown Control method", method)
	}
	conn, err := f.conn(ctx, addr)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "cannot reach the leader at %s to forward the write: %v", addr, err)
	}
	resp := reflect.New(typ).Interface()
	var header metadata.MD
	cctx, cancel := context.WithTimeout(ctx, forwardTimeout)
	defer cancel()
	out := metadata.AppendToOutgoingContext(cctx, forwardedHeader, "1")
	if err := conn.Invoke(out, method, req, resp, grpc.Header(&header)); err != nil {
		s := status.Convert(err)
		switch {
		case s.Code() == codes.Unavailable:
			return nil, status.Errorf(codes.Unavailable, "leader at %s: %s", addr, s.Message())
		case s.Code() == codes.DeadlineExceeded && ctx.Err() == nil:
			return nil, status.Errorf(codes.Unavailable, "the leader at %s did not answer within %s (cut off, or overloaded); the write may or may not have been made: read it back, then retry", addr, forwardTimeout)
		}
		return nil, err
	}
	if v := header.Get(appliedIndexHeader); len(v) > 0 {
		if index, perr := strconv.ParseUint(v[0], 10, 64); perr == nil {
			if err := f.waitApplied(ctx, index); err != nil {
				return nil, status.Errorf(codes.Unavailable, "the write was made on the leader, but this manager has not caught up with it: %v", err)
			}
		}
	}
	return resp, nil
}

// conn returns the (cached) connection to the leader at addr.
func (f *forwarder) conn(ctx context.Context, addr string) (*grpc.ClientConn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c, ok := f.conns[addr]; ok {
		return c, nil
	}
	c, err := f.dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	if f.conns == nil {
		f.conns = map[string]*grpc.ClientConn{}
	}
	// Leaders come and go: keep the connections of the last few only.
	if len(f.conns) >= 4 {
		for a, old := range f.conns {
			_ = old.Close()
			delete(f.conns, a)
		}
	}
	f.conns[addr] = c
	return c, nil
}

// close closes the connections to leaders.
func (f *forwarder) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for a, c := range f.conns {
		_ = c.Close()
		delete(f.conns, a)
	}
}
