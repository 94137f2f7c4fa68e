package controlapi

import (
	"context"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/manager/store"
)

func redactTask(t *api.Task) *api.Task { return api.Redacted(t).(*api.Task) }

func (s *Server) GetTask(ctx context.Context, req *api.GetTaskRequest) (*api.GetTaskResponse, error) {
	t, err := get[*api.Task](s, req.TaskID)
	if err != nil {
		return nil, err
	}
	return &api.GetTaskResponse{Task: redactTask(t)}, nil
}

func (s *Server) ListTasks(ctx context.Context, req *api.ListTasksRequest) (*api.ListTasksResponse, error) {
	f := req.Filters
	tasks, err := list(s, func(t *api.Task) bool {
		if f == nil {
			return true
		}
		return matchCommon(t, &f.ListFilters) &&
			(len(f.ServiceIDs) == 0 || contains(f.ServiceIDs, t.ServiceID)) &&
			(len(f.NodeIDs) == 0 || contains(f.NodeIDs, t.NodeID)) &&
			(len(f.DesiredStates) == 0 || contains(f.DesiredStates, t.DesiredState)) &&
			(len(f.Slots) == 0 || contains(f.Slots, t.Slot))
	})
	if err != nil {
		return nil, err
	}
	for i := range tasks {
		tasks[i] = redactTask(tasks[i])
	}
	return &api.ListTasksResponse{Tasks: tasks}, nil
}

// RemoveTask deletes a task; its service's orchestrator replaces it.
func (s *Server) RemoveTask(ctx context.Context, req *api.RemoveTaskRequest) (*api.RemoveTaskResponse, error) {
	var name string
	err := s.store.Update(ctx, func(tx store.Tx) error {
		cur, err := resolve[*api.Task](tx, req.TaskID)
		if err != nil {
			return err
		}
		name = cur.GetName()
		return tx.Delete(api.KindTask, cur.ID)
	})
	if err != nil {
		return nil, s.writeError(api.KindTask, name, err)
	}
	return &api.RemoveTaskResponse{}, nil
}
