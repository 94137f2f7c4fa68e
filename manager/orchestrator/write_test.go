package orchestrator_test

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/manager/orchestrator"
	"github.com/flotilla/flotilla/manager/store"
)

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// racingProposer commits every proposal at once; before the first one it
// lets race run (another writer that gets there first).
type racingProposer struct {
	mu    sync.Mutex
	s     *store.MemoryStore
	index uint64
	race  func()
	n     int
}

func (p *racingProposer) Propose(_ context.Context, data []byte) error {
	p.mu.Lock()
	race := p.race
	p.race = nil
	p.mu.Unlock()
	if race != nil {
		race()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.index++
	p.n++
	return p.s.Apply(p.index, data)
}

func TestConvergePlansAgainAfterLosingARace(t *testing.T) {
	p := &racingProposer{}
	s := store.New(p)
	p.s = s
	ctx := context.Background()
	svc := &api.Service{ID: "svc", Spec: api.ServiceSpec{Annotations: api.Annotations{Name: "web"}}}
	task := orchestrator.NewTask(svc, 1, "", time.Now())
	if err := s.Update(ctx, func(tx store.Tx) error { return tx.Create(task) }); err != nil {
		t.Fatal(err)
	}
	// Between the plan and its commit, another writer stops the task (as
	// the restart supervisor or a user would).
	p.race = func() {
		err := s.Update(ctx, func(tx store.Tx) error {
			cur := store.Get[*api.Task](tx, task.ID)
			cur.DesiredState = api.TaskStateShutdown
			return tx.Update(cur)
		})
		if err != nil {
			t.Error(err)
		}
	}
	plans := 0
	err := orchestrator.Converge(ctx, s, func(tx store.ReadTx) ([]orchestrator.Write, error) {
		plans++
		cur := store.Get[*api.Task](tx, task.ID)
		if !orchestrator.IsCurrent(cur) {
			return nil, nil // what the second plan sees: nothing to do
		}
		return []orchestrator.Write{orchestrator.SetDesired(cur, api.TaskStateRemove)}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var got *api.Task
	s.View(func(tx store.ReadTx) { got = store.Get[*api.Task](tx, task.ID) })
	if plans != 2 || got.DesiredState != api.TaskStateShutdown {
		t.Fatalf("%d plans, desired %v; want 2 plans and the other writer's SHUTDOWN", plans, got.DesiredState)
	}
}

func TestCommitSkipsWritesThatFindTheStoreChanged(t *testing.T) {
	p := &racingProposer{}
	s := store.New(p)
	p.s = s
	ctx := context.Background()
	svc := &api.Service{ID: "svc"}
	a, b := orchestrator.NewTask(svc, 1, "", time.Now()), orchestrator.NewTask(svc, 2, "", time.Now())
	if err := s.Update(ctx, func(tx store.Tx) error { _ = tx.Create(a); return tx.Create(b) }); err != nil {
		t.Fatal(err)
	}
	stale := a.Copy()
	stale.DesiredState = api.TaskStateShutdown // not what the store holds
	before := p.n
	changed, err := orchestrator.Commit(ctx, s, []orchestrator.Write{
		orchestrator.SetDesired(stale, api.TaskStateRemove),
		orchestrator.SetDesired(b, api.TaskStateRemove),
	})
	if err != nil || !changed {
		t.Fatalf("Commit = %v, %v; want changed", changed, err)
	}
	var ga, gb *api.Task
	s.View(func(tx store.ReadTx) { ga, gb = store.Get[*api.Task](tx, a.ID), store.Get[*api.Task](tx, b.ID) })
	if ga.DesiredState != api.TaskStateRunning || gb.DesiredState != api.TaskStateRemove || p.n-before != 1 {
		t.Fatalf("a %v, b %v, %d proposals; want a untouched, b REMOVE, one proposal", ga.DesiredState, gb.DesiredState, p.n-before)
	}
}
