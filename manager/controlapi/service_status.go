package controlapi

import (
	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/manager/store"
)

// serviceStatus counts a service's tasks (observed state, computed on read).
func serviceStatus(tx store.ReadTx, svc *api.Service) *api.ServiceStatus {
	st := &api.ServiceStatus{TaskStates: map[string]uint64{}}
	wanted := uint64(0)
	// Each, not Find: a status read of a 100,000-task service must not copy
	// every task (it was a fifth of the scale simulator's CPU, polling).
	byState := map[api.TaskState]uint64{}
	_ = store.Each(tx, store.ByServiceID(svc.ID), func(t *api.Task) bool {
		if t.Status.State == api.TaskStateCompleted {
			st.CompletedTasks++
		}
		if t.DesiredState > api.TaskStateRunning {
			return true
		}
		wanted++
		byState[t.Status.State]++
		if t.Status.State == api.TaskStateRunning && t.DesiredState == api.TaskStateRunning {
			st.RunningTasks++
		}
		return true
	})
	for state, n := range byState {
		st.TaskStates[state.String()] = n
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
