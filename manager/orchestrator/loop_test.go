package orchestrator_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/manager/orchestrator"
	"github.com/flotilla/flotilla/manager/orchestrator/orchestratortest"
	"github.com/flotilla/flotilla/manager/store"
)

// recorder counts Reconcile calls and the events Handle gets.
type recorder struct {
	reconciles atomic.Int32
	mu         sync.Mutex
	nodes      []string
}

func (r *recorder) Reconcile(context.Context) error { r.reconciles.Add(1); return nil }

func (r *recorder) Handle(_ context.Context, cs []store.Change) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range cs {
		for _, ev := range c.Events {
			if n, ok := ev.Object.(*api.Node); ok {
				r.nodes = append(r.nodes, n.ID)
			}
		}
	}
	return nil
}

func (r *recorder) seen() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.nodes)
}

func TestRunReconcilesAgainWhenTheWatchIsLost(t *testing.T) {
	e := orchestratortest.New(t)
	r := &recorder{}
	e.Start(func(ctx context.Context) error { return orchestrator.Run(ctx, e.Store, e.Clock, discardLogger(), r) })
	e.Eventually("the first reconcile", func() bool { return r.reconciles.Load() == 1 })
	e.CreateNode("a")
	e.Eventually("the node event", func() bool { return r.seen() == 1 })

	// A snapshot restore ends every watch: the loop must list again.
	snap, err := e.Store.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Store.Restore(snap); err != nil {
		t.Fatal(err)
	}
	e.Eventually("a second reconcile", func() bool { return r.reconciles.Load() == 2 })
	e.CreateNode("b")
	e.Eventually("events after the new watch", func() bool { return r.seen() == 2 })
}
