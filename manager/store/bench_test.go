package store

import (
	"context"
	"testing"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/api/identity"
)

func benchTasks(n int) []*api.Task {
	ts := make([]*api.Task, n)
	for i := range ts {
		ts[i] = &api.Task{
			ID: identity.NewID(), ServiceID: "svc", Slot: uint64(i + 1), DesiredState: api.TaskStateRunning,
			Spec:               api.TaskSpec{Container: &api.ContainerSpec{Image: "busybox:latest", Command: []string{"sleep", "1d"}}},
			ServiceAnnotations: api.Annotations{Name: "bench"},
			Status:             api.TaskStatus{State: api.TaskStateNew},
		}
	}
	return ts
}

// BenchmarkBatchCreateTasks: the store's part of creating 30,000 tasks in a
// batch (no raft): recording, encoding, applying.
func BenchmarkBatchCreateTasks(b *testing.B) {
	ts := benchTasks(30000)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		s, _ := newTestStore(b)
		_, err := s.Batch(context.Background(), func(batch *Batch) error {
			for _, t := range ts {
				if err := batch.Update(func(tx Tx) error { return tx.Create(t) }); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBatchUpdateTasks: a batch reading and updating each of 30,000
// tasks, as the scheduler and the dispatcher do.
func BenchmarkBatchUpdateTasks(b *testing.B) {
	ts := benchTasks(30000)
	s, _ := newTestStore(b)
	_, err := s.Batch(context.Background(), func(batch *Batch) error {
		for _, t := range ts {
			if err := batch.Update(func(tx Tx) error { return tx.Create(t) }); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_, err := s.Batch(context.Background(), func(batch *Batch) error {
			for _, t := range ts {
				err := batch.Update(func(tx Tx) error {
					cur := Get[*api.Task](tx, t.ID)
					cur.Status.State++
					cur.NodeID = "node"
					return tx.Update(cur)
				})
				if err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}
