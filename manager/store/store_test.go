package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/flotilla/flotilla/api"
)

// applyProposer commits every proposal at once, in order, like a one-member
// raft log without the disk.
type applyProposer struct {
	mu    sync.Mutex
	index uint64
	s     *MemoryStore
	n     int
}

func (p *applyProposer) Propose(_ context.Context, data []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.index++
	p.n++
	return p.s.Apply(p.index, data)
}

func newTestStore(t testing.TB) (*MemoryStore, *applyProposer) {
	p := &applyProposer{}
	s := New(p)
	p.s = s
	return s, p
}

func service(id, name string) *api.Service {
	return &api.Service{ID: id, Spec: api.ServiceSpec{Annotations: api.Annotations{Name: name}}}
}

func TestCreateGetFindUpdateDelete(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := context.Background()
	err := s.Update(ctx, func(tx Tx) error {
		if err := tx.Create(service("id1", "web")); err != nil {
			return err
		}
		return tx.Create(service("id2", "db"))
	})
	if err != nil {
		t.Fatal(err)
	}
	var got *api.Service
	s.View(func(tx ReadTx) { got = Get[*api.Service](tx, "id1") })
	if got == nil || got.Spec.Annotations.Name != "web" || got.Meta.Version != 1 || got.Meta.CreatedAt == nil {
		t.Fatalf("get after create: %+v", got)
	}
	s.View(func(tx ReadTx) {
		byName, err := Find[*api.Service](tx, ByName("WEB"))
		if err != nil || len(byName) != 1 || byName[0].ID != "id1" {
			t.Errorf("find by name ignoring case: %v %v", byName, err)
		}
		all, _ := Find[*api.Service](tx, All())
		if len(all) != 2 {
			t.Errorf("find all: %d objects, want 2", len(all))
		}
		pre, _ := Find[*api.Service](tx, ByIDPrefix("id"))
		if len(pre) != 2 {
			t.Errorf("find by ID prefix: %d objects, want 2", len(pre))
		}
	})

	// Mutating a returned copy does not change the store.
	got.Spec.Annotations.Name = "changed"
	s.View(func(tx ReadTx) {
		if n := Get[*api.Service](tx, "id1").Spec.Annotations.Name; n != "web" {
			t.Errorf("store changed through a returned copy: %q", n)
		}
	})

	// Update from the version read succeeds and bumps the version.
	got.Spec.Annotations.Name = "web2"
	if err := s.Update(ctx, func(tx Tx) error { return tx.Update(got) }); err != nil {
		t.Fatal(err)
	}
	// A second update from the same, now stale, version is refused.
	got.Spec.Annotations.Name = "web3"
	err = s.Update(ctx, func(tx Tx) error { return tx.Update(got) })
	if !errors.Is(err, ErrSequenceConflict) {
		t.Fatalf("stale update: got %v, want ErrSequenceConflict", err)
	}
	if err := s.Update(ctx, func(tx Tx) error { return tx.Delete(api.KindService, "id1") }); err != nil {
		t.Fatal(err)
	}
	s.View(func(tx ReadTx) {
		if Get[*api.Service](tx, "id1") != nil {
			t.Error("deleted object still there")
		}
	})
}

func TestNameConflictRefusedAtomically(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := context.Background()
	if err := s.Update(ctx, func(tx Tx) error { return tx.Create(service("a", "web")) }); err != nil {
		t.Fatal(err)
	}
	err := s.Update(ctx, func(tx Tx) error {
		if err := tx.Create(service("b", "other")); err != nil {
			return err
		}
		return tx.Create(service("c", "Web"))
	})
	if !errors.Is(err, ErrNameConflict) {
		t.Fatalf("got %v, want ErrNameConflict", err)
	}
	s.View(func(tx ReadTx) {
		if Get[*api.Service](tx, "b") != nil {
			t.Error("failed transaction left a partial write")
		}
	})
}

// Two writers read the same version; the transaction applied second loses at
// apply time even though both passed their own checks.
func TestConcurrentWritersConflictAtApply(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := context.Background()
	if err := s.Update(ctx, func(tx Tx) error { return tx.Create(service("a", "web")) }); err != nil {
		t.Fatal(err)
	}
	var read *api.Service
	s.View(func(tx ReadTx) { read = Get[*api.Service](tx, "a") })
	first, second := read.Copy(), read.Copy()
	first.Spec.Annotations.Labels = map[string]string{"w": "1"}
	second.Spec.Annotations.Labels = map[string]string{"w": "2"}
	if err := s.Update(ctx, func(tx Tx) error { return tx.Update(first) }); err != nil {
		t.Fatal(err)
	}
	// Replay the second writer's transaction as it would have been proposed.
	data, _ := (&api.StoreTransaction{Actions: []api.StoreAction{{Kind: api.StoreActionKindUpdate, Target: api.NewObject(second)}}}).Marshal()
	if err := s.Apply(s.Version()+1, data); !errors.Is(err, ErrSequenceConflict) {
		t.Fatalf("got %v, want ErrSequenceConflict", err)
	}
}

func TestCreateThenUpdateInOneTransaction(t *testing.T) {
	s, _ := newTestStore(t)
	err := s.Update(context.Background(), func(tx Tx) error {
		if err := tx.Create(service("a", "web")); err != nil {
			return err
		}
		o := Get[*api.Service](tx, "a")
		o.Spec.Annotations.Labels = map[string]string{"k": "v"}
		if err := tx.Update(o); err != nil {
			return err
		}
		o.Spec.Annotations.Labels["k"] = "v2"
		return tx.Update(o)
	})
	if err != nil {
		t.Fatal(err)
	}
	s.View(func(tx ReadTx) {
		if v := Get[*api.Service](tx, "a").Spec.Annotations.Labels["k"]; v != "v2" {
			t.Errorf("label = %q, want v2", v)
		}
	})
}

func TestTaskIndexes(t *testing.T) {
	s, _ := newTestStore(t)
	err := s.Update(context.Background(), func(tx Tx) error {
		for i := 1; i <= 3; i++ {
			task := &api.Task{ID: fmt.Sprintf("t%d", i), ServiceID: "svc", Slot: uint64(i), NodeID: "n1", DesiredState: api.TaskStateRunning}
			if i == 3 {
				task.NodeID, task.DesiredState = "n2", api.TaskStateShutdown
			}
			if err := tx.Create(task); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	s.View(func(tx ReadTx) {
		for _, c := range []struct {
			by   By
			want int
		}{
			{ByServiceID("svc"), 3}, {ByNodeID("n1"), 2}, {BySlot("svc", 2), 1},
			{ByServiceID("other"), 0},
		} {
			got, err := Find[*api.Task](tx, c.by)
			if err != nil || len(got) != c.want {
				t.Errorf("%+v: %d tasks (%v), want %d", c.by, len(got), err, c.want)
			}
		}
	})
}

func TestBatchSplitsIntoBoundedProposals(t *testing.T) {
	s, p := newTestStore(t)
	const n = 20000
	image := string(make([]byte, 200))
	committed, err := s.Batch(context.Background(), func(b *Batch) error {
		for i := 0; i < n; i++ {
			err := b.Update(func(tx Tx) error {
				return tx.Create(&api.Task{ID: fmt.Sprintf("task-%06d", i), ServiceID: "svc",
					Spec: api.TaskSpec{Container: &api.ContainerSpec{Image: image}}})
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil || committed != n {
		t.Fatalf("batch: committed %d, err %v", committed, err)
	}
	if p.n < 2 || p.n > n/100 {
		t.Errorf("%d proposals for %d objects: want a few bounded ones", p.n, n)
	}
	s.View(func(tx ReadTx) {
		if c, _ := Count(tx, api.KindTask, All()); c != n {
			t.Errorf("%d tasks stored, want %d", c, n)
		}
	})
}

func TestBatchFailedUpdateLeavesNothing(t *testing.T) {
	s, _ := newTestStore(t)
	boom := errors.New("boom")
	committed, err := s.Batch(context.Background(), func(b *Batch) error {
		_ = b.Update(func(tx Tx) error { return tx.Create(service("a", "a")) })
		if err := b.Update(func(tx Tx) error {
			_ = tx.Create(service("b", "b"))
			return boom
		}); !errors.Is(err, boom) {
			t.Errorf("update error %v, want boom", err)
		}
		return b.Update(func(tx Tx) error { return tx.Create(service("c", "c")) })
	})
	if err != nil || committed != 2 {
		t.Fatalf("committed %d, err %v", committed, err)
	}
	s.View(func(tx ReadTx) {
		if Get[*api.Service](tx, "b") != nil || Get[*api.Service](tx, "a") == nil || Get[*api.Service](tx, "c") == nil {
			t.Error("want a and c, not b")
		}
	})
}

func TestWatchDeliversAndResumes(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := context.Background()
	_, w, _, err := s.Watch(0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for i := 0; i < 3; i++ {
		if err := s.Update(ctx, func(tx Tx) error { return tx.Create(service(fmt.Sprint(i), fmt.Sprint("s", i))) }); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 3; i++ {
		c := <-w.C
		if c.Version != uint64(i+1) || len(c.Events) != 1 || c.Events[0].Action != api.WatchActionKindCreate {
			t.Fatalf("change %d: %+v", i, c)
		}
	}
	replay, w2, _, err := s.Watch(1)
	if err != nil {
		t.Fatal(err)
	}
	defer w2.Close()
	if len(replay) != 2 || replay[0].Version != 2 {
		t.Fatalf("resume from 1: %+v", replay)
	}
}

func TestWatchHistoryGoneAndOverflow(t *testing.T) {
	s, _ := newTestStore(t)
	s.queue = newWatchQueue(2, defaultHistoryEvents)
	ctx := context.Background()
	_, slow, _, _ := s.Watch(0)
	for i := 0; i < subscriberBuffer+5; i++ {
		if err := s.Update(ctx, func(tx Tx) error { return tx.Create(service(fmt.Sprint(i), fmt.Sprint("s", i))) }); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, _, err := s.Watch(1); !errors.Is(err, ErrHistoryGone) {
		t.Errorf("resume from a dropped version: %v, want ErrHistoryGone", err)
	}
	n := 0
	for range slow.C {
		n++
	}
	if n != subscriberBuffer || !errors.Is(slow.Err(), ErrWatchOverflow) {
		t.Errorf("slow watcher got %d changes, err %v; want %d and ErrWatchOverflow", n, slow.Err(), subscriberBuffer)
	}
}

// The history keeps at most its event budget (the newest change always),
// and resumes from within it still work.
func TestWatchHistoryEventBudget(t *testing.T) {
	s, _ := newTestStore(t)
	s.queue = newWatchQueue(100, 5)
	ctx := context.Background()
	create := func(n int, prefix string) uint64 {
		if err := s.Update(ctx, func(tx Tx) error {
			for i := range n {
				if err := tx.Create(service(fmt.Sprint(prefix, i), fmt.Sprint(prefix, "s", i))); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return s.Version()
	}
	v0 := create(1, "z") // 1 event
	v1 := create(2, "a") // 3 events
	v2 := create(2, "b") // 5
	create(2, "c")       // 7 > 5: the first two changes go
	if _, _, _, err := s.Watch(v0); !errors.Is(err, ErrHistoryGone) {
		t.Errorf("resume before the dropped change: %v, want ErrHistoryGone", err)
	}
	replay, w, _, err := s.Watch(v1)
	if err != nil || len(replay) != 2 || replay[0].Version != v2 {
		t.Fatalf("resume after the dropped change: %d changes, %v", len(replay), err)
	}
	w.Close()
	last := create(9, "d") // alone over the budget: kept, the rest dropped
	if replay, w, _, err = s.Watch(last - 1); err != nil || len(replay) != 1 || len(replay[0].Events) != 9 {
		t.Fatalf("resume before an oversized change: %+v, %v", replay, err)
	}
	w.Close()
	if s.queue.events != 9 || len(s.queue.history)-s.queue.start != 1 {
		t.Fatalf("history holds %d changes, %d events; want 1 and 9", len(s.queue.history)-s.queue.start, s.queue.events)
	}
}

func TestSnapshotRestore(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := context.Background()
	if err := s.Update(ctx, func(tx Tx) error {
		if err := tx.Create(service("a", "web")); err != nil {
			return err
		}
		return tx.Create(&api.Task{ID: "t", ServiceID: "a", Slot: 1})
	}); err != nil {
		t.Fatal(err)
	}
	data, err := s.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	s2, _ := newTestStore(t)
	_, w, _, _ := s2.Watch(0)
	if err := s2.Restore(data); err != nil {
		t.Fatal(err)
	}
	if _, open := <-w.C; open || !errors.Is(w.Err(), ErrWatchReset) {
		t.Errorf("watch across restore: err %v, want ErrWatchReset", w.Err())
	}
	if s2.Version() != s.Version() {
		t.Errorf("version %d after restore, want %d", s2.Version(), s.Version())
	}
	s2.View(func(tx ReadTx) {
		if Get[*api.Service](tx, "a") == nil || len(must(Find[*api.Task](tx, BySlot("a", 1)))) != 1 {
			t.Error("restored store lacks objects or indexes")
		}
	})
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// An update in a batch reads what earlier updates wrote, also across a
// proposal boundary: no spurious version conflict for an object created in
// one proposal and updated in the next.
func TestBatchUpdatesSeeEarlierProposals(t *testing.T) {
	s, p := newTestStore(t)
	image := string(make([]byte, 4000))
	const n = 1000 // ~4 MB: three proposals or more
	_, err := s.Batch(context.Background(), func(b *Batch) error {
		for i := 0; i < n; i++ {
			if err := b.Update(func(tx Tx) error {
				return tx.Create(&api.Task{ID: fmt.Sprintf("t%04d", i), Spec: api.TaskSpec{Container: &api.ContainerSpec{Image: image}}})
			}); err != nil {
				return err
			}
			// Update the previous task: across a boundary it was committed by
			// the proposal just made.
			if i > 0 {
				if err := b.Update(func(tx Tx) error {
					prev := Get[*api.Task](tx, fmt.Sprintf("t%04d", i-1))
					if prev == nil {
						return fmt.Errorf("t%04d not visible", i-1)
					}
					prev.Slot = 7
					return tx.Update(prev)
				}); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if p.n < 3 {
		t.Fatalf("%d proposals; the test needs boundaries", p.n)
	}
	s.View(func(tx ReadTx) {
		for i := 0; i < n-1; i++ {
			if got := Get[*api.Task](tx, fmt.Sprintf("t%04d", i)); got == nil || got.Slot != 7 {
				t.Fatalf("t%04d: %+v", i, got)
			}
		}
	})
}
