package logbroker

import (
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/manager/store"
)

// PublishLogs takes the calling node's logs for one subscription and queues
// them for its client (api.LogBrokerServer). It blocks while the client's
// queue is full.
func (b *Broker) PublishLogs(stream api.LogBroker_PublishLogsServer) (err error) {
	ctx := stream.Context()
	nodeID, err := b.cfg.Identify(ctx)
	if err != nil {
		return err
	}
	stopped, err := b.term()
	if err != nil {
		return err
	}
	var (
		s      *subscription
		closed bool
		owned  = map[string]string{} // task ID -> service ID, checked against the store
	)
	defer func() {
		if s != nil && !closed {
			// The node stopped sending before it was done.
			s.nodeLost(nodeID)
		}
	}()
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&api.PublishLogsResponse{})
		}
		if err != nil {
			return err
		}
		select {
		case <-stopped:
			return status.Error(codes.Unavailable, "this manager is no longer the leader")
		default:
		}
		if s == nil {
			if s, err = b.publisherOf(m.SubscriptionID, nodeID); err != nil {
				return err
			}
		} else if m.SubscriptionID != s.id {
			return status.Errorf(codes.InvalidArgument,
				"a PublishLogs stream carries one subscription (%s), not %s: open another stream", s.id, m.SubscriptionID)
		}
		out, err := b.checkMessages(s, nodeID, owned, m)
		if err != nil {
			b.log.Warn("refused logs from a node", "node.id", nodeID, "subscription", s.id, "error", err)
			closed = true
			s.finish(nodeID, partSent, "%s sent logs it may not send (%s): the rest of its logs is not shown",
				nodeName(s.hostname(nodeID), nodeID), status.Convert(err).Message())
			return err
		}
		if len(out.Messages) > 0 || len(out.Notices) > 0 {
			if err := s.push(ctx, out); err != nil {
				return err
			}
		}
		if m.Close {
			closed = true
			s.finish(nodeID, partSent, "")
		}
	}
}

// publisherOf is the subscription id if it was sent to the node.
func (b *Broker) publisherOf(id, nodeID string) (*subscription, error) {
	s := b.subscription(id)
	if s == nil {
		return nil, status.Errorf(codes.NotFound, "log subscription %q is not open (it ended, or there never was one)", id)
	}
	if !s.sentTo(nodeID) {
		return nil, status.Errorf(codes.PermissionDenied, "log subscription %s was not sent to node %s: it cannot publish for it", id, nodeID)
	}
	return s, nil
}

// checkMessages checks a node's published message and returns what goes to
// the client: lines of the node's own tasks that the subscription selects,
// with their context filled in from the store. A line of another node's
// task, or of a task the subscription does not select, refuses the whole
// stream; a line of a task no longer in the store is dropped.
func (b *Broker) checkMessages(s *subscription, nodeID string, owned map[string]string, m *api.PublishLogsMessage) (*api.SubscribeLogsMessage, error) {
	out := &api.SubscribeLogsMessage{Messages: m.Messages[:0]}
	for _, lm := range m.Messages {
		if lm.Context.NodeID != "" && lm.Context.NodeID != nodeID {
			return nil, status.Errorf(codes.PermissionDenied,
				"node %s cannot publish logs in the name of node %s", nodeID, lm.Context.NodeID)
		}
		serviceID, ok := owned[lm.Context.TaskID]
		if !ok {
			var err error
			if serviceID, ok, err = b.checkTask(s, nodeID, lm.Context.TaskID); err != nil {
				return nil, err
			}
			if !ok {
				continue
			}
			owned[lm.Context.TaskID] = serviceID
		}
		lm.Context.NodeID = nodeID
		lm.Context.ServiceID = serviceID
		out.Messages = append(out.Messages, lm)
	}
	name := nodeName(s.hostname(nodeID), nodeID)
	for _, n := range m.Notices {
		if n.TaskID != "" {
			if _, ok := owned[n.TaskID]; !ok {
				_, ok, err := b.checkTask(s, nodeID, n.TaskID)
				if err != nil {
					return nil, err
				}
				if !ok {
					continue
				}
			}
		}
		out.Notices = append(out.Notices, &api.LogNotice{
			NodeID: nodeID, TaskID: n.TaskID, Message: fmt.Sprintf("%s: %s", name, n.Message),
		})
	}
	return out, nil
}

// checkTask reads task id: ok is false for a task the store does not have;
// an error refuses a task of another node or one the subscription does not
// select.
func (b *Broker) checkTask(s *subscription, nodeID, id string) (serviceID string, ok bool, err error) {
	if id == "" {
		return "", false, status.Error(codes.InvalidArgument, "a log line without a task ID")
	}
	var t *api.Task
	b.cfg.Store.View(func(tx store.ReadTx) { t = store.Get[*api.Task](tx, id) })
	switch {
	case t == nil:
		return "", false, nil
	case t.NodeID != nodeID:
		return "", false, status.Errorf(codes.PermissionDenied,
			"task %s is not assigned to node %s: a node publishes only its own tasks' logs", id, nodeID)
	case !s.selects(t):
		return "", false, status.Errorf(codes.PermissionDenied,
			"task %s is not selected by log subscription %s", id, s.id)
	}
	return t.ServiceID, true, nil
}
