// Package controlapi implements the Control gRPC service on top of the store:
// validation, name and prefix resolution, optimistic concurrency, and the
// translation of store and raft errors into gRPC codes with actionable
// messages.
package controlapi

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/manager/store"
	"github.com/flotilla/flotilla/raft"
)

// Server serves the Control API from one manager's store.
type Server struct {
	api.UnimplementedControlServer
	store *store.MemoryStore
	// unavailable maps errors of the write path (no leader, storage failure)
	// to an Unavailable message; nil means none are special.
	unavailable func(error) (string, bool)
	// members changes the raft membership (nil: a single manager, or tests).
	members Membership
}

// Membership is the raft membership as the Control API changes it: the
// leader's raft node.
type Membership interface {
	// RemoveMember removes a manager from raft; it refuses a removal that
	// would leave the reachable managers without a quorum.
	RemoveMember(ctx context.Context, id uint64) error
	// Members are the raft members, with their reachability as this
	// manager (the leader, for writes) sees it.
	Members() []raft.Member
}

// SetMembership lets RemoveNode remove managers from raft and UpdateNode
// check that a demotion keeps a quorum.
func (s *Server) SetMembership(m Membership) { s.members = m }

// NewServer makes a Control server over s. unavailable recognises errors of
// the consensus layer that mean "writes cannot be served now" and returns the
// message to show; it may be nil.
func NewServer(s *store.MemoryStore, unavailable func(error) (string, bool)) *Server {
	return &Server{store: s, unavailable: unavailable}
}

// resolve finds the one object of type T a reference names: an exact ID, then
// an exact name, then a unique ID prefix.
func resolve[T api.StoreObject](tx store.ReadTx, ref string) (T, error) {
	var zero T
	kind := zero.Kind()
	if ref == "" {
		return zero, status.Errorf(codes.InvalidArgument, "a %s ID or name is required", kind)
	}
	// Generated getters are nil-safe: a missing object has an empty ID.
	if o := store.Get[T](tx, ref); o.GetID() != "" {
		return o, nil
	}
	byName, err := store.Find[T](tx, store.ByName(ref))
	if err != nil {
		return zero, status.Errorf(codes.Internal, "look up %s %q: %v", kind, ref, err)
	}
	if len(byName) == 1 {
		return byName[0], nil
	}
	if len(byName) > 1 {
		return zero, ambiguous(kind, ref, "name", byName)
	}
	byPrefix, err := store.Find[T](tx, store.ByIDPrefix(ref))
	if err != nil {
		return zero, status.Errorf(codes.Internal, "look up %s %q: %v", kind, ref, err)
	}
	switch len(byPrefix) {
	case 0:
		return zero, status.Errorf(codes.NotFound, "%s %q not found", kind, ref)
	case 1:
		return byPrefix[0], nil
	}
	return zero, ambiguous(kind, ref, "ID prefix", byPrefix)
}

func ambiguous[T api.StoreObject](kind, ref, what string, objs []T) error {
	list := make([]string, 0, len(objs))
	for _, o := range objs {
		if n := o.GetName(); n != "" {
			list = append(list, fmt.Sprintf("%s (%s)", o.GetID(), n))
		} else {
			list = append(list, o.GetID())
		}
	}
	sort.Strings(list)
	return status.Errorf(codes.InvalidArgument, "%s %q matches %d %ss: %s; give more of the ID",
		what, ref, len(objs), kind, strings.Join(list, ", "))
}

// writeError turns an error of a store write into a status.
func (s *Server) writeError(kind, name string, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	what := kind
	if name != "" {
		what = fmt.Sprintf("%s %q", what, name)
	}
	switch {
	case errors.Is(err, store.ErrNameConflict):
		return status.Errorf(codes.AlreadyExists, "%s already exists: choose another name", what)
	case errors.Is(err, store.ErrSequenceConflict):
		return status.Errorf(codes.FailedPrecondition,
			"%s was changed by someone else since you read it (%v): read it again and retry", what, err)
	case errors.Is(err, store.ErrNotExist):
		return status.Errorf(codes.NotFound, "%s not found (it was removed)", what)
	case errors.Is(err, store.ErrExist):
		return status.Errorf(codes.AlreadyExists, "%s already exists", what)
	case errors.Is(err, store.ErrInvalid):
		return status.Errorf(codes.InvalidArgument, "%s: %v", what, err)
	case errors.Is(err, context.DeadlineExceeded):
		return status.Errorf(codes.DeadlineExceeded, "writing %s timed out: the change may or may not have been made; check and retry", what)
	case errors.Is(err, context.Canceled):
		return status.Errorf(codes.Canceled, "writing %s was cancelled", what)
	}
	if s.unavailable != nil {
		if msg, ok := s.unavailable(err); ok {
			return status.Error(codes.Unavailable, msg)
		}
	}
	return status.Errorf(codes.Internal, "writing %s: %v", what, err)
}

func invalid(err error) error {
	return status.Error(codes.InvalidArgument, err.Error())
}

// matchCommon applies the filters every List call has.
func matchCommon(o api.StoreObject, f *api.ListFilters) bool {
	if f == nil {
		return true
	}
	if len(f.Names) > 0 && !anyFold(o.GetName(), f.Names, strings.EqualFold) {
		return false
	}
	if len(f.NamePrefixes) > 0 && !anyFold(o.GetName(), f.NamePrefixes, hasPrefixFold) {
		return false
	}
	if len(f.IDPrefixes) > 0 && !anyFold(o.GetID(), f.IDPrefixes, strings.HasPrefix) {
		return false
	}
	labels := o.GetLabels()
	for k, v := range f.Labels {
		got, ok := labels[k]
		if !ok || (v != "" && got != v) {
			return false
		}
	}
	return true
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

func anyFold(s string, list []string, match func(string, string) bool) bool {
	for _, x := range list {
		if match(s, x) {
			return true
		}
	}
	return false
}

// list returns the objects of type T that keep selects, in ID order.
func list[T api.StoreObject](s *Server, keep func(T) bool) ([]T, error) {
	var (
		out []T
		err error
	)
	s.store.View(func(tx store.ReadTx) {
		var all []T
		all, err = store.Find[T](tx, store.All())
		for _, o := range all {
			if keep(o) {
				out = append(out, o)
			}
		}
	})
	if err != nil {
		return nil, status.Errorf(codes.Internal, "list: %v", err)
	}
	return out, nil
}

// get resolves a reference in a fresh snapshot.
func get[T api.StoreObject](s *Server, ref string) (T, error) {
	var (
		o   T
		err error
	)
	s.store.View(func(tx store.ReadTx) { o, err = resolve[T](tx, ref) })
	return o, err
}
