package controlapi

import (
	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/manager/store"
)

// serviceStatus counts a service's tasks (observed state, computed on read).
func serviceStatus(tx store.ReadTx, svc *api.Service) *api.ServiceStatus {
	tasks, _ := store.Find[*api.Task](tx, store.ByServiceID(svc.ID))
	st := &api.ServiceStatus{TaskStates: map[string]uint64{}}
	wanted := uint64(0)
	for _, t := range tasks {
		if t.Status.State == api.TaskStateCompleted {
			st.CompletedTasks++
		}
		if t.DesiredState > api.TaskStateRunning {
			continue
		}
		wanted++
		st.TaskStates[t.Status.State.String()]++
		if t.Status.State == api.TaskStateRunning && t.DesiredState == api.TaskStateRunning {
			st.RunningTasks++
		}
	}
	switch m := svc.Spec.Mode.Mode.(type) {
	case *api.ServiceMode_Replicated:
		st.DesiredTasks = m.Replicated.Replicas
	case *api.ServiceMode_ReplicatedJob:
		st.DesiredTasks = m.ReplicatedJob.TotalCompletions
	default:
		// Global services want one task per eligible node: the orchestrator
		// has made exactly those.
		st.DesiredTasks = wanted
	}
	return st
}
