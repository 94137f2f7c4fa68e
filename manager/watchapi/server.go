// Package watchapi implements the Watch gRPC service: a stream of store
// changes, filtered by kind, action and selectors, resumable from a version.
package watchapi

import (
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/manager/store"
)

// Server serves Watch from one manager's store.
type Server struct {
	api.UnimplementedWatchServer
	store *store.MemoryStore
}

// NewServer makes a Watch server over s.
func NewServer(s *store.MemoryStore) *Server { return &Server{store: s} }

type entry struct {
	kind    string
	actions uint32
	filters []*api.SelectBy
}

func parseEntries(req *api.WatchRequest) ([]entry, error) {
	var out []entry
	for _, e := range req.Entries {
		kind, err := api.ParseKind(e.Kind)
		if err != nil {
			return nil, err
		}
		all := uint32(api.WatchActionKindCreate | api.WatchActionKindUpdate | api.WatchActionKindRemove)
		if e.Action&^all != 0 {
			return nil, fmt.Errorf("watch action %d has unknown bits: combine create=1, update=2, remove=4", e.Action)
		}
		actions := e.Action
		if actions == 0 {
			actions = all
		}
		for _, f := range e.Filters {
			if f.By == nil {
				return nil, fmt.Errorf("empty selector in watch of %s", kind)
			}
		}
		out = append(out, entry{kind: kind, actions: actions, filters: e.Filters})
	}
	return out, nil
}

func (e entry) match(ev store.Event) bool {
	if ev.Object.Kind() != e.kind || uint32(ev.Action)&e.actions == 0 {
		return false
	}
	for _, f := range e.filters {
		if !selects(f, ev.Object) {
			return false
		}
	}
	return true
}

func selects(f *api.SelectBy, o api.StoreObject) bool {
	switch v := f.By.(type) {
	case *api.SelectBy_ID:
		return o.GetID() == v.ID
	case *api.SelectBy_IDPrefix:
		return strings.HasPrefix(o.GetID(), v.IDPrefix)
	case *api.SelectBy_Name:
		return strings.EqualFold(o.GetName(), v.Name)
	case *api.SelectBy_NamePrefix:
		n := o.GetName()
		return len(n) >= len(v.NamePrefix) && strings.EqualFold(n[:len(v.NamePrefix)], v.NamePrefix)
	case *api.SelectBy_ServiceID:
		t, ok := o.(*api.Task)
		return ok && t.ServiceID == v.ServiceID
	case *api.SelectBy_NodeID:
		t, ok := o.(*api.Task)
		return ok && t.NodeID == v.NodeID
	case *api.SelectBy_DesiredState:
		t, ok := o.(*api.Task)
		return ok && t.DesiredState == v.DesiredState
	case *api.SelectBy_Role:
		n, ok := o.(*api.Node)
		return ok && n.Role == v.Role
	}
	return false
}

// message turns a change into the events the entries select, or nil.
func message(c store.Change, entries []entry, withOld bool) *api.WatchMessage {
	m := &api.WatchMessage{Version: c.Version}
	for _, ev := range c.Events {
		if len(entries) > 0 {
			ok := false
			for _, e := range entries {
				if e.match(ev) {
					ok = true
					break
				}
			}
			if !ok {
				continue
			}
		}
		obj := api.NewObject(api.Redacted(ev.Object))
		out := &api.WatchMessage_Event{Action: ev.Action, Object: &obj}
		if withOld && ev.OldObject != nil {
			old := api.NewObject(api.Redacted(ev.OldObject))
			out.OldObject = &old
		}
		m.Events = append(m.Events, out)
	}
	if len(m.Events) == 0 {
		return nil
	}
	return m
}

// Watch streams changes until the client goes away or the watch ends.
func (s *Server) Watch(req *api.WatchRequest, stream api.Watch_WatchServer) error {
	entries, err := parseEntries(req)
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	replay, w, version, err := s.store.Watch(req.ResumeFrom)
	if err != nil {
		if errors.Is(err, store.ErrHistoryGone) {
			return status.Errorf(codes.OutOfRange, "%v: list the objects again and watch from the current version", err)
		}
		return status.Errorf(codes.Internal, "watch: %v", err)
	}
	defer w.Close()
	// The first message says the watch is established and from which version.
	start := version
	if req.ResumeFrom != 0 {
		start = req.ResumeFrom
	}
	if err := stream.Send(&api.WatchMessage{Version: start}); err != nil {
		return err
	}
	for _, c := range replay {
		if m := message(c, entries, req.IncludeOldObject); m != nil {
			if err := stream.Send(m); err != nil {
				return err
			}
		}
	}
	ctx := stream.Context()
	for {
		select {
		case <-ctx.Done():
			return nil
		case c, ok := <-w.C:
			if !ok {
				return status.Errorf(codes.Aborted, "watch ended: %v; list the objects again and start a new watch", w.Err())
			}
			if m := message(c, entries, req.IncludeOldObject); m != nil {
				if err := stream.Send(m); err != nil {
					return err
				}
			}
		}
	}
}
