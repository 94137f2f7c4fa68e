package dispatcher

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
)

// Assignments streams the calling node's tasks (not implemented yet).
func (d *Dispatcher) Assignments(*api.AssignmentsRequest, api.Dispatcher_AssignmentsServer) error {
	return status.Error(codes.Unimplemented, "task assignments are not supported yet by this version")
}

// UpdateTaskStatus records task status reports (not implemented yet).
func (d *Dispatcher) UpdateTaskStatus(context.Context, *api.UpdateTaskStatusRequest) (*api.UpdateTaskStatusResponse, error) {
	return nil, status.Error(codes.Unimplemented, "task status updates are not supported yet by this version")
}
