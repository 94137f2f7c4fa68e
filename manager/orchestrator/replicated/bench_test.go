package replicated_test

import (
	"testing"
	"time"

	"github.com/flotilla/flotilla/manager/orchestrator/orchestratortest"
	"github.com/flotilla/flotilla/manager/orchestrator/replicated"
	"github.com/flotilla/flotilla/manager/store"
)

// BenchmarkReconcileNewService100k: a new leader finds a service with
// 100,000 replicas and no tasks, and creates them all: the time of that
// reconcile (planning and committing, with storetest's in-memory log that
// encodes and applies every proposal) and the number of proposals.
func BenchmarkReconcileNewService100k(b *testing.B) {
	const replicas = 100_000
	for b.Loop() {
		b.StopTimer()
		e := orchestratortest.New(b)
		o := replicated.New(e.Store, replicated.Config{Clock: e.Clock})
		e.CreateService(orchestratortest.Replicated("web", replicas))
		proposals := e.Proposer.Proposals
		b.StartTimer()
		start := time.Now()
		if err := o.Reconcile(e.Ctx); err != nil {
			b.Fatal(err)
		}
		elapsed := time.Since(start)
		b.StopTimer()
		var n int
		e.Store.View(func(tx store.ReadTx) { n, _ = store.Count(tx, "task", store.All()) })
		if n != replicas {
			b.Fatalf("%d tasks, want %d", n, replicas)
		}
		b.ReportMetric(float64(e.Proposer.Proposals-proposals), "proposals/op")
		b.ReportMetric(replicas/elapsed.Seconds(), "tasks/s")
		b.StartTimer()
	}
}
