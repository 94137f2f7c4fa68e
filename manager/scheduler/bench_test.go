package scheduler

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/manager/store"
	"github.com/flotilla/flotilla/manager/store/storetest"
)

// BenchmarkPlace100kTasksOfOneServiceOn1000Nodes: one service scaled to
// 100,000 replicas on 1,000 nodes, from the scheduler's start until every
// task is ASSIGNED (committed through the store).
func BenchmarkPlace100kTasksOfOneServiceOn1000Nodes(b *testing.B) {
	benchmarkPlace(b, 1000, 1, 100000)
}

// BenchmarkPlace10kTasksOf100ServicesOn1000Nodes: 100 services of 100
// replicas on 1,000 nodes.
func BenchmarkPlace10kTasksOf100ServicesOn1000Nodes(b *testing.B) {
	benchmarkPlace(b, 1000, 100, 10000)
}

func benchmarkPlace(b *testing.B, nodeCount, services, taskCount int) {
	var elapsed time.Duration
	proposals := 0
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		s, p := storetest.New()
		objs := make([]api.StoreObject, 0, nodeCount+taskCount)
		for n := range nodeCount {
			objs = append(objs, newNode(fmt.Sprintf("node-%04d", n), withResources(64e9, 256*gib)))
		}
		per := taskCount / services
		for sv := range services {
			for _, t := range newTasks(fmt.Sprintf("svc-%03d", sv), per, withReservation(1e8, 64<<20)) {
				objs = append(objs, t)
			}
		}
		if _, err := s.Batch(context.Background(), func(bt *store.Batch) error {
			for _, o := range objs {
				if err := bt.Update(func(tx store.Tx) error { return tx.Create(o) }); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
		_, w, _, err := s.Watch(0)
		if err != nil {
			b.Fatal(err)
		}
		before := p.Proposals
		sched := New(s, testLogger())
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)

		b.StartTimer()
		start := time.Now()
		go func() { done <- sched.Run(ctx) }()
		assigned := 0
		for assigned < taskCount {
			c, ok := <-w.C
			if !ok {
				b.Fatalf("watch ended: %v", w.Err())
			}
			for _, e := range c.Events {
				if t, ok := e.Object.(*api.Task); ok && t.Status.State == api.TaskStateAssigned {
					assigned++
				}
			}
		}
		elapsed += time.Since(start)
		b.StopTimer()

		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		w.Close()
		proposals += p.Proposals - before
		if i == 0 {
			checkEvenSpread(b, s, nodeCount, taskCount)
		}
	}
	b.ReportMetric(float64(taskCount)*float64(b.N)/elapsed.Seconds(), "tasks/s")
	b.ReportMetric(float64(proposals)/float64(b.N), "proposals/op")
}

func checkEvenSpread(b *testing.B, s *store.MemoryStore, nodeCount, taskCount int) {
	b.Helper()
	counts := map[string]int{}
	s.View(func(tx store.ReadTx) {
		ts, err := store.Find[*api.Task](tx, store.All())
		if err != nil {
			b.Fatal(err)
		}
		for _, t := range ts {
			counts[t.NodeID]++
		}
	})
	if len(counts) != nodeCount {
		b.Fatalf("tasks went to %d nodes, want %d", len(counts), nodeCount)
	}
	for id, c := range counts {
		if c != taskCount/nodeCount {
			b.Fatalf("node %s got %d tasks, want %d", id, c, taskCount/nodeCount)
		}
	}
}

// BenchmarkDecide100kTasksOfOneServiceOn1000Nodes measures the placement
// decisions alone (filters and heap), without committing them.
func BenchmarkDecide100kTasksOfOneServiceOn1000Nodes(b *testing.B) {
	benchmarkDecide(b, 1000, 1, 100000)
}

// BenchmarkDecide10kTasksOf100ServicesOn1000Nodes: the same for 100 services.
func BenchmarkDecide10kTasksOf100ServicesOn1000Nodes(b *testing.B) {
	benchmarkDecide(b, 1000, 100, 10000)
}

func benchmarkDecide(b *testing.B, nodeCount, services, taskCount int) {
	s, _ := storetest.New()
	if _, err := s.Batch(context.Background(), func(bt *store.Batch) error {
		for n := range nodeCount {
			node := newNode(fmt.Sprintf("node-%04d", n), withResources(64e9, 256*gib))
			if err := bt.Update(func(tx store.Tx) error { return tx.Create(node) }); err != nil {
				return err
			}
		}
		per := taskCount / services
		for sv := range services {
			for _, t := range newTasks(fmt.Sprintf("svc-%03d", sv), per, withReservation(1e8, 64<<20)) {
				if err := bt.Update(func(tx store.Tx) error { return tx.Create(t) }); err != nil {
					return err
				}
			}
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	sched := New(s, testLogger())
	var elapsed time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		w, err := sched.resync()
		if err != nil {
			b.Fatal(err)
		}
		w.Close()
		b.StartTimer()
		start := time.Now()
		var ds []*decision
		for _, k := range sched.dirtyGroups() {
			sched.placeGroup(sched.groups[k], &ds)
		}
		elapsed += time.Since(start)
		if len(ds) != taskCount || ds[0].node == "" {
			b.Fatalf("%d decisions, want %d placements", len(ds), taskCount)
		}
	}
	b.ReportMetric(float64(taskCount)*float64(b.N)/elapsed.Seconds(), "tasks/s")
}
