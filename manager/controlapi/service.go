package controlapi

import (
	"context"
	"reflect"

	"github.com/gogo/protobuf/proto"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/api/identity"
	"github.com/flotilla/flotilla/api/validation"
	"github.com/flotilla/flotilla/manager/store"
)

func redactService(s *api.Service) *api.Service { return api.Redacted(s).(*api.Service) }

// CreateService validates and stores a new service. The orchestrator turns it
// into tasks.
func (s *Server) CreateService(ctx context.Context, req *api.CreateServiceRequest) (*api.CreateServiceResponse, error) {
	if err := validation.ServiceSpec(req.Spec); err != nil {
		return nil, invalid(err)
	}
	svc := &api.Service{ID: identity.NewID(), Spec: *req.Spec, SpecVersion: 1}
	err := s.store.Update(ctx, func(tx store.Tx) error { return tx.Create(svc) })
	if err != nil {
		return nil, s.writeError(api.KindService, req.Spec.Annotations.Name, err)
	}
	return &api.CreateServiceResponse{Service: redactService(s.readService(svc.ID, svc))}, nil
}

// readService returns the stored service, or fallback if it vanished meanwhile.
func (s *Server) readService(id string, fallback *api.Service) *api.Service {
	var out *api.Service
	s.store.View(func(tx store.ReadTx) { out = store.Get[*api.Service](tx, id) })
	if out == nil {
		return fallback
	}
	return out
}

func (s *Server) GetService(ctx context.Context, req *api.GetServiceRequest) (*api.GetServiceResponse, error) {
	var (
		svc *api.Service
		err error
	)
	s.store.View(func(tx store.ReadTx) {
		if svc, err = resolve[*api.Service](tx, req.ServiceID); err == nil && req.IncludeStatus {
			svc.Status = serviceStatus(tx, svc)
		}
	})
	if err != nil {
		return nil, err
	}
	return &api.GetServiceResponse{Service: redactService(svc)}, nil
}

func (s *Server) ListServices(ctx context.Context, req *api.ListServicesRequest) (*api.ListServicesResponse, error) {
	var f *api.ListFilters
	if req.Filters != nil {
		f = &req.Filters.ListFilters
	}
	var (
		svcs []*api.Service
		err  error
	)
	s.store.View(func(tx store.ReadTx) {
		var all []*api.Service
		if all, err = store.Find[*api.Service](tx, store.All()); err != nil {
			return
		}
		for _, svc := range all {
			if !matchCommon(svc, f) {
				continue
			}
			if req.IncludeStatus {
				svc.Status = serviceStatus(tx, svc)
			}
			svcs = append(svcs, redactService(svc))
		}
	})
	if err != nil {
		return nil, status.Errorf(codes.Internal, "list services: %v", err)
	}
	return &api.ListServicesResponse{Services: svcs}, nil
}

func modeName(m *api.ServiceMode) string {
	switch m.Mode.(type) {
	case *api.ServiceMode_Replicated:
		return "replicated"
	case *api.ServiceMode_Global:
		return "global"
	case *api.ServiceMode_ReplicatedJob:
		return "replicated-job"
	case *api.ServiceMode_GlobalJob:
		return "global-job"
	}
	return "unset"
}

// UpdateService replaces a service's spec, keeping the old one for rollback.
// The caller's version must be the current one.
func (s *Server) UpdateService(ctx context.Context, req *api.UpdateServiceRequest) (*api.UpdateServiceResponse, error) {
	if req.ServiceVersion == 0 {
		return nil, status.Error(codes.InvalidArgument, "service version is required: send the meta.version you read")
	}
	if req.Rollback == api.UpdateServiceRollbackNone {
		if err := validation.ServiceSpec(req.Spec); err != nil {
			return nil, invalid(err)
		}
	}
	var id, name string
	err := s.store.Update(ctx, func(tx store.Tx) error {
		cur, err := resolve[*api.Service](tx, req.ServiceID)
		if err != nil {
			return err
		}
		id, name = cur.ID, cur.Spec.Annotations.Name
		if cur.Meta.Version != req.ServiceVersion {
			return status.Errorf(codes.FailedPrecondition,
				"service %q was changed by someone else since you read it (version %d, now %d): read it again and retry",
				name, req.ServiceVersion, cur.Meta.Version)
		}
		next := req.Spec
		if req.Rollback == api.UpdateServiceRollbackPrevious {
			if cur.PreviousSpec == nil {
				return status.Errorf(codes.FailedPrecondition, "service %q has no previous spec to roll back to", name)
			}
			next = cur.PreviousSpec
		}
		if next.Annotations.Name != cur.Spec.Annotations.Name {
			return status.Errorf(codes.InvalidArgument, "renaming a service is not supported (%q to %q): create a new service instead",
				cur.Spec.Annotations.Name, next.Annotations.Name)
		}
		if reflect.TypeOf(next.Mode.Mode) != reflect.TypeOf(cur.Spec.Mode.Mode) {
			return status.Errorf(codes.InvalidArgument, "service %q is %s: its mode cannot change to %s; create a new service instead",
				name, modeName(&cur.Spec.Mode), modeName(&next.Mode))
		}
		if !proto.Equal(next, &cur.Spec) {
			prev := cur.Spec
			cur.PreviousSpec = &prev
			cur.Spec = *next.Copy()
			cur.SpecVersion++
		}
		return tx.Update(cur)
	})
	if err != nil {
		return nil, s.writeError(api.KindService, name, err)
	}
	return &api.UpdateServiceResponse{Service: redactService(s.readService(id, nil))}, nil
}

// RemoveService deletes a service; the orchestrator shuts its tasks down.
func (s *Server) RemoveService(ctx context.Context, req *api.RemoveServiceRequest) (*api.RemoveServiceResponse, error) {
	var name string
	err := s.store.Update(ctx, func(tx store.Tx) error {
		cur, err := resolve[*api.Service](tx, req.ServiceID)
		if err != nil {
			return err
		}
		name = cur.Spec.Annotations.Name
		return tx.Delete(api.KindService, cur.ID)
	})
	if err != nil {
		return nil, s.writeError(api.KindService, name, err)
	}
	return &api.RemoveServiceResponse{}, nil
}
