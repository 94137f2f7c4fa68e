package store

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"slices"
	"strings"
	"testing"
	"time"

	gogoproto "github.com/gogo/protobuf/proto"
	"github.com/gogo/protobuf/types"
	memdb "github.com/hashicorp/go-memdb"

	"github.com/flotilla/flotilla/api"
)

func task(id, service string, slot uint64, node string, desired api.TaskState) *api.Task {
	return &api.Task{ID: id, ServiceID: service, Slot: slot, NodeID: node, DesiredState: desired}
}

func ids[T api.StoreObject](objs []T) []string {
	out := make([]string, len(objs))
	for i, o := range objs {
		out[i] = o.GetID()
	}
	return out
}

func mustUpdate(t *testing.T, s *MemoryStore, cb func(Tx) error) {
	t.Helper()
	if err := s.Update(context.Background(), cb); err != nil {
		t.Fatal(err)
	}
}

// Reads in a transaction see its own creates, updates and deletes, by ID and
// through every index, with objects appearing and disappearing according to
// their new index values.
func TestTxReadsOwnWritesThroughEveryIndex(t *testing.T) {
	s, _ := newTestStore(t)
	run, shut := api.TaskStateRunning, api.TaskStateShutdown
	mustUpdate(t, s, func(tx Tx) error {
		for _, o := range []api.StoreObject{
			task("t1", "A", 1, "n1", run), task("t2", "A", 2, "n1", run), task("t3", "A", 3, "n1", run),
			task("t5", "B", 1, "n2", run),
			&api.Node{ID: "n1", Role: api.NodeRoleWorker}, &api.Node{ID: "n2", Role: api.NodeRoleManager},
			service("s1", "web"), service("s2", "db"),
		} {
			if err := tx.Create(o); err != nil {
				return err
			}
		}
		return nil
	})
	check := func(tx ReadTx, what string, b By, want ...string) {
		t.Helper()
		got, err := Find[*api.Task](tx, b)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if !slices.Equal(ids(got), want) {
			t.Errorf("%s: %v, want %v", what, ids(got), want)
		}
		if n, err := Count(tx, api.KindTask, b); err != nil || n != len(want) {
			t.Errorf("%s: count %d (%v), want %d", what, n, err, len(want))
		}
	}
	mustUpdate(t, s, func(tx Tx) error {
		// Create t4 (A, slot 4, n2); move t1 to n2, shut down, slot 7;
		// delete t2; create t0 then delete it; create t6 then change it.
		if err := tx.Create(task("t4", "A", 4, "n2", run)); err != nil {
			return err
		}
		t1 := Get[*api.Task](tx, "t1")
		t1.NodeID, t1.DesiredState, t1.Slot = "n2", shut, 7
		if err := tx.Update(t1); err != nil {
			return err
		}
		if err := tx.Delete(api.KindTask, "t2"); err != nil {
			return err
		}
		if err := tx.Create(task("t0", "A", 9, "n1", run)); err != nil {
			return err
		}
		if err := tx.Delete(api.KindTask, "t0"); err != nil {
			return err
		}
		if err := tx.Create(task("t6", "C", 1, "n3", run)); err != nil {
			return err
		}
		t6 := Get[*api.Task](tx, "t6")
		t6.ServiceID, t6.NodeID = "B", "n1"
		if err := tx.Update(t6); err != nil {
			return err
		}

		if Get[*api.Task](tx, "t2") != nil || Get[*api.Task](tx, "t0") != nil {
			t.Error("deleted tasks still readable")
		}
		if Exists(tx, api.KindTask, "t2") || !Exists(tx, api.KindTask, "t4") || !Exists(tx, api.KindTask, "t3") {
			t.Error("Exists does not see the transaction's writes")
		}
		if g := Get[*api.Task](tx, "t1"); g == nil || g.NodeID != "n2" || g.Slot != 7 || g.Meta.Version != 1 {
			t.Errorf("t1 as read in the transaction: %+v", g)
		}
		check(tx, "all", All(), "t1", "t3", "t4", "t5", "t6")
		check(tx, "ID prefix", ByIDPrefix("t"), "t1", "t3", "t4", "t5", "t6")
		check(tx, "ID prefix t1", ByIDPrefix("t1"), "t1")
		check(tx, "service A", ByServiceID("A"), "t1", "t3", "t4")
		check(tx, "service B", ByServiceID("B"), "t5", "t6")
		check(tx, "service C", ByServiceID("C"))
		check(tx, "node n1", ByNodeID("n1"), "t3", "t6")
		check(tx, "node n2", ByNodeID("n2"), "t1", "t4", "t5")
		check(tx, "node n3", ByNodeID("n3"))
		check(tx, "slot A.1", BySlot("A", 1))
		check(tx, "slot A.2", BySlot("A", 2))
		check(tx, "slot A.7", BySlot("A", 7), "t1")
		check(tx, "slot A.4", BySlot("A", 4), "t4")
		check(tx, "slot B.1", BySlot("B", 1), "t5", "t6")

		// Nodes by role, services by name.
		n1 := Get[*api.Node](tx, "n1")
		n1.Role = api.NodeRoleManager
		if err := tx.Update(n1); err != nil {
			return err
		}
		if ms, _ := Find[*api.Node](tx, ByRole(api.NodeRoleManager)); !slices.Equal(ids(ms), []string{"n1", "n2"}) {
			t.Errorf("managers: %v", ids(ms))
		}
		if ws, _ := Find[*api.Node](tx, ByRole(api.NodeRoleWorker)); len(ws) != 0 {
			t.Errorf("workers: %v", ids(ws))
		}
		s1 := Get[*api.Service](tx, "s1")
		s1.Spec.Annotations.Name = "Wiki"
		if err := tx.Update(s1); err != nil {
			return err
		}
		if err := tx.Create(service("s0", "web")); err != nil {
			return err
		}
		for _, c := range []struct {
			b    By
			want []string
		}{
			{ByName("web"), []string{"s0"}}, {ByName("WIKI"), []string{"s1"}}, {ByName("db"), []string{"s2"}},
			{ByNamePrefix("w"), []string{"s0", "s1"}}, {ByNamePrefix(""), []string{"s2", "s0", "s1"}},
			{All(), []string{"s0", "s1", "s2"}},
		} {
			got, err := Find[*api.Service](tx, c.b)
			if err != nil || !slices.Equal(ids(got), c.want) {
				t.Errorf("services %+v: %v (%v), want %v", c.b, ids(got), err, c.want)
			}
		}
		return nil
	})
	// What the transaction read is what was committed.
	s.View(func(tx ReadTx) {
		check(tx, "committed all", All(), "t1", "t3", "t4", "t5", "t6")
		check(tx, "committed node n2", ByNodeID("n2"), "t1", "t4", "t5")
		check(tx, "committed slot B.1", BySlot("B", 1), "t5", "t6")
	})
}

// Objects returned by reads in a transaction are copies, and what was
// written cannot be changed through the caller's object afterwards.
func TestTxWritesAreNotAliased(t *testing.T) {
	s, _ := newTestStore(t)
	mustUpdate(t, s, func(tx Tx) error {
		o := service("a", "web")
		o.Spec.Annotations.Labels = map[string]string{"k": "v"}
		if err := tx.Create(o); err != nil {
			return err
		}
		o.Spec.Annotations.Labels["k"] = "mutated"
		o.Spec.Annotations.Name = "mutated"
		g := Get[*api.Service](tx, "a")
		if g.Spec.Annotations.Labels["k"] != "v" || g.Spec.Annotations.Name != "web" {
			t.Errorf("caller's mutation after Create seen in the transaction: %+v", g.Spec.Annotations)
		}
		g.Spec.Annotations.Labels["k"] = "changed through a read"
		all, _ := Find[*api.Service](tx, All())
		all[0].Spec.Annotations.Labels["k"] = "changed through a find"
		if g := Get[*api.Service](tx, "a"); g.Spec.Annotations.Labels["k"] != "v" {
			t.Errorf("transaction's object changed through a returned copy: %q", g.Spec.Annotations.Labels["k"])
		}
		if o.Meta.CreatedAt != nil {
			t.Error("Create set the caller's meta")
		}
		return nil
	})
	s.View(func(tx ReadTx) {
		if g := Get[*api.Service](tx, "a"); g.Spec.Annotations.Labels["k"] != "v" || g.Spec.Annotations.Name != "web" {
			t.Errorf("committed: %+v", g.Spec.Annotations)
		}
	})
}

func TestTxNameConflictsWithinTransaction(t *testing.T) {
	s, _ := newTestStore(t)
	mustUpdate(t, s, func(tx Tx) error {
		if err := tx.Create(service("x", "old")); err != nil {
			return err
		}
		return tx.Create(service("z", "gone"))
	})
	err := s.Update(context.Background(), func(tx Tx) error {
		if err := tx.Create(service("a", "web")); err != nil {
			return err
		}
		// The same name, another case, in the same transaction.
		if err := tx.Create(service("b", "WEB")); !errors.Is(err, ErrNameConflict) || !strings.Contains(err.Error(), "ID a") {
			t.Errorf("second web in one transaction: %v, want ErrNameConflict naming a", err)
		}
		// Renaming onto a name created in the transaction.
		x := Get[*api.Service](tx, "x")
		x.Spec.Annotations.Name = "Web"
		if err := tx.Update(x); !errors.Is(err, ErrNameConflict) {
			t.Errorf("rename onto web: %v, want ErrNameConflict", err)
		}
		// A name freed by a rename or a delete in the transaction is free.
		x.Spec.Annotations.Name = "new"
		if err := tx.Update(x); err != nil {
			return err
		}
		if err := tx.Create(service("c", "OLD")); err != nil {
			return fmt.Errorf("reuse a renamed-away name: %w", err)
		}
		if err := tx.Delete(api.KindService, "z"); err != nil {
			return err
		}
		if err := tx.Create(service("d", "gone")); err != nil {
			return fmt.Errorf("reuse a deleted object's name: %w", err)
		}
		// An object keeps its own name; a deleted one can be created again.
		a := Get[*api.Service](tx, "a")
		if err := tx.Update(a); err != nil {
			return err
		}
		if err := tx.Delete(api.KindService, "a"); err != nil {
			return err
		}
		if err := tx.Create(service("a", "web")); err != nil {
			return fmt.Errorf("create again after delete: %w", err)
		}
		if err := tx.Create(service("a", "other")); !errors.Is(err, ErrExist) {
			t.Errorf("create an existing ID: %v, want ErrExist", err)
		}
		if err := tx.Create(service("b", "NEW")); !errors.Is(err, ErrNameConflict) {
			t.Errorf("name of an updated object: %v, want ErrNameConflict", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	s.View(func(tx ReadTx) {
		got, _ := Find[*api.Service](tx, All())
		var names []string
		for _, o := range got {
			names = append(names, o.ID+"="+o.Spec.Annotations.Name)
		}
		if want := []string{"a=web", "c=OLD", "d=gone", "x=new"}; !slices.Equal(names, want) {
			t.Errorf("committed %v, want %v", names, want)
		}
	})
}

func TestTxVersionChecks(t *testing.T) {
	s, _ := newTestStore(t)
	mustUpdate(t, s, func(tx Tx) error { return tx.Create(service("a", "web")) })
	mustUpdate(t, s, func(tx Tx) error { return tx.Update(Get[*api.Service](tx, "a")) })
	err := s.Update(context.Background(), func(tx Tx) error {
		a := Get[*api.Service](tx, "a")
		stale := a.Copy()
		stale.Meta.Version--
		if err := tx.Update(stale); !errors.Is(err, ErrSequenceConflict) {
			t.Errorf("stale update: %v, want ErrSequenceConflict", err)
		}
		// Updating twice from the version read.
		a.Spec.Annotations.Labels = map[string]string{"n": "1"}
		if err := tx.Update(a); err != nil {
			return err
		}
		again := Get[*api.Service](tx, "a")
		if again.Meta.Version != a.Meta.Version || again.Meta.CreatedAt == nil || again.Meta.UpdatedAt == nil {
			t.Errorf("meta in the transaction: %+v", again.Meta)
		}
		again.Spec.Annotations.Labels["n"] = "2"
		if err := tx.Update(again); err != nil {
			return err
		}
		if err := tx.Update(service("nope", "nope")); !errors.Is(err, ErrNotExist) {
			t.Errorf("update of a missing object: %v, want ErrNotExist", err)
		}
		if err := tx.Delete(api.KindService, "nope"); !errors.Is(err, ErrNotExist) {
			t.Errorf("delete of a missing object: %v, want ErrNotExist", err)
		}
		if err := tx.Create(service("", "noid")); !errors.Is(err, ErrInvalid) {
			t.Errorf("create without ID: %v, want ErrInvalid", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	s.View(func(tx ReadTx) {
		a := Get[*api.Service](tx, "a")
		if a.Spec.Annotations.Labels["n"] != "2" || a.Meta.Version != 3 {
			t.Errorf("committed: labels %v version %d", a.Spec.Annotations.Labels, a.Meta.Version)
		}
	})
}

// A failed Batch.Update leaves nothing of its writes for later ones to read,
// and nothing in the proposal.
func TestBatchRollbackAfterFailedUpdate(t *testing.T) {
	s, p := newTestStore(t)
	mustUpdate(t, s, func(tx Tx) error { return tx.Create(task("t1", "A", 1, "n1", api.TaskStateRunning)) })
	var read *api.Task
	s.View(func(tx ReadTx) { read = Get[*api.Task](tx, "t1") })
	proposals := p.n
	committed, err := s.Batch(context.Background(), func(b *Batch) error {
		if err := b.Update(func(tx Tx) error { return tx.Create(service("a", "web")) }); err != nil {
			return err
		}
		// Writes several objects, then fails on a stale update.
		err := b.Update(func(tx Tx) error {
			a := Get[*api.Service](tx, "a")
			a.Spec.Annotations.Name = "renamed"
			if err := tx.Update(a); err != nil {
				return err
			}
			if err := tx.Create(service("b", "web2")); err != nil {
				return err
			}
			if err := tx.Delete(api.KindTask, "t1"); err != nil {
				return err
			}
			if err := tx.Create(task("t2", "A", 2, "n1", api.TaskStateRunning)); err != nil {
				return err
			}
			stale := read.Copy()
			stale.Meta.Version = 0
			return tx.Update(stale)
		})
		if !errors.Is(err, ErrNotExist) {
			t.Errorf("failing update: %v, want ErrNotExist (t1 was deleted in it)", err)
		}
		return b.Update(func(tx Tx) error {
			if a := Get[*api.Service](tx, "a"); a == nil || a.Spec.Annotations.Name != "web" {
				t.Errorf("a after rollback: %+v", a)
			}
			if Get[*api.Service](tx, "b") != nil || Get[*api.Task](tx, "t2") != nil || Get[*api.Task](tx, "t1") == nil {
				t.Error("rolled back writes still visible")
			}
			if ts, _ := Find[*api.Task](tx, ByServiceID("A")); !slices.Equal(ids(ts), []string{"t1"}) {
				t.Errorf("tasks of A after rollback: %v", ids(ts))
			}
			if ss, _ := Find[*api.Service](tx, ByNamePrefix("")); !slices.Equal(ids(ss), []string{"a"}) {
				t.Errorf("services after rollback: %v", ids(ss))
			}
			// The rolled-back name is free, the kept one is not.
			if err := tx.Create(service("c", "web2")); err != nil {
				return err
			}
			if err := tx.Create(service("d", "renamed")); err != nil {
				return err
			}
			if err := tx.Create(service("e", "WEB")); !errors.Is(err, ErrNameConflict) {
				t.Errorf("name kept: %v, want ErrNameConflict", err)
			}
			t1 := Get[*api.Task](tx, "t1")
			t1.NodeID = "n2"
			return tx.Update(t1)
		})
	})
	if err != nil || committed != 2 {
		t.Fatalf("committed %d, err %v", committed, err)
	}
	if p.n != proposals+1 {
		t.Errorf("%d proposals, want 1", p.n-proposals)
	}
	s.View(func(tx ReadTx) {
		ss, _ := Find[*api.Service](tx, All())
		if !slices.Equal(ids(ss), []string{"a", "c", "d"}) {
			t.Errorf("services %v", ids(ss))
		}
		if t1 := Get[*api.Task](tx, "t1"); t1 == nil || t1.NodeID != "n2" {
			t.Errorf("t1 %+v", t1)
		}
	})
}

// When an update pushes a batch's proposal over the limit, the proposal is
// split before it, and the update's writes stay visible to later updates.
func TestBatchSplitKeepsTheSplittingUpdateVisible(t *testing.T) {
	s, p := newTestStore(t)
	image := strings.Repeat("x", 1000)
	big := func(id string) *api.Task {
		return &api.Task{ID: id, ServiceID: "svc", Spec: api.TaskSpec{Container: &api.ContainerSpec{Image: image}}}
	}
	const n = 3000 // about 3 MB: three proposals
	var splits []int
	committed, err := s.Batch(context.Background(), func(b *Batch) error {
		for i := 0; i < n; i++ {
			before := p.n
			err := b.Update(func(tx Tx) error {
				if err := tx.Create(big(fmt.Sprintf("t%05d", i))); err != nil {
					return err
				}
				// An update writing two objects, the second reading the first.
				return tx.Create(task(fmt.Sprintf("u%05d", i), Get[*api.Task](tx, fmt.Sprintf("t%05d", i)).ServiceID, 0, "", 0))
			})
			if err != nil {
				return err
			}
			if p.n != before {
				splits = append(splits, i)
				// The splitting update is pending in the next proposal.
				err := b.Update(func(tx Tx) error {
					for _, id := range []string{fmt.Sprintf("t%05d", i), fmt.Sprintf("u%05d", i)} {
						if !Exists(tx, api.KindTask, id) {
							return fmt.Errorf("%s not visible after the split", id)
						}
					}
					return nil
				})
				if err != nil {
					t.Error(err)
				}
			}
		}
		return nil
	})
	if err != nil || committed != n+len(splits) {
		t.Fatalf("committed %d, err %v, splits %v", committed, err, splits)
	}
	if len(splits) < 2 {
		t.Errorf("splits at %v, want at least 2", splits)
	}
	s.View(func(tx ReadTx) {
		if c, _ := Count(tx, api.KindTask, ByServiceID("svc")); c != 2*n {
			t.Errorf("%d tasks, want %d", c, 2*n)
		}
	})
}

// The proposal is the StoreTransaction of the recorded actions.
func TestTxEncodesStoreTransaction(t *testing.T) {
	var got api.StoreTransaction
	s := New(proposerFunc(func(data []byte) error { return got.Unmarshal(data) }))
	s.now = func() time.Time { return time.Unix(100, 0) }
	mustUpdate(t, s, func(tx Tx) error {
		if err := tx.Create(service("a", "web")); err != nil {
			return err
		}
		if err := tx.Create(task("t", "a", 1, "", api.TaskStateRunning)); err != nil {
			return err
		}
		return tx.Delete(api.KindTask, "t")
	})
	if len(got.Actions) != 3 {
		t.Fatalf("%d actions, want 3", len(got.Actions))
	}
	now, _ := types.TimestampProto(time.Unix(100, 0))
	wantSvc := service("a", "web")
	wantSvc.Meta = api.Meta{CreatedAt: now, UpdatedAt: now}
	wantTask := task("t", "a", 1, "", api.TaskStateRunning)
	wantTask.Meta = wantSvc.Meta
	want := api.StoreTransaction{Actions: []api.StoreAction{
		{Kind: api.StoreActionKindCreate, Target: api.NewObject(wantSvc)},
		{Kind: api.StoreActionKindCreate, Target: api.NewObject(wantTask)},
		{Kind: api.StoreActionKindRemove, Target: api.NewObject(wantTask)},
	}}
	if !gogoproto.Equal(&got, &want) {
		t.Errorf("proposed %v\nwant %v", got.String(), want.String())
	}
}

type proposerFunc func(data []byte) error

func (f proposerFunc) Propose(_ context.Context, data []byte) error { return f(data) }

// Random writes in batches, some rolled back: every read in the transaction
// agrees with a memdb transaction given the same writes (what the store did
// before the overlay), in content and order.
func TestTxOverlayMatchesMemdb(t *testing.T) {
	s, _ := newTestStore(t)
	rng := rand.New(rand.NewSource(1))
	services := []string{"A", "B", "C"}
	nodes := []string{"", "n1", "n2", "n3"}
	names := []string{"web", "Web", "db", "cache", "WEB2", "web2", ""}
	queries := []struct {
		kind string
		b    By
	}{{api.KindService, All()}, {api.KindService, ByIDPrefix("s1")}, {api.KindTask, All()}, {api.KindTask, ByIDPrefix("t1")}}
	for _, n := range names {
		queries = append(queries, struct {
			kind string
			b    By
		}{api.KindService, ByName(n)}, struct {
			kind string
			b    By
		}{api.KindService, ByNamePrefix(strings.ToLower(n))})
	}
	for _, sv := range services {
		queries = append(queries, struct {
			kind string
			b    By
		}{api.KindTask, ByServiceID(sv)})
		for slot := uint64(0); slot < 4; slot++ {
			queries = append(queries, struct {
				kind string
				b    By
			}{api.KindTask, BySlot(sv, slot)})
		}
	}
	for _, n := range nodes {
		queries = append(queries, struct {
			kind string
			b    By
		}{api.KindTask, ByNodeID(n)})
	}

	for round := 0; round < 30; round++ {
		ref := s.db.Load().Snapshot()
		_, err := s.Batch(context.Background(), func(b *Batch) error {
			for u := 0; u < 10; u++ {
				rtx := ref.Txn(true)
				fail := rng.Intn(4) == 0
				err := b.Update(func(tx Tx) error {
					for w := 0; w < 1+rng.Intn(5); w++ {
						if err := randomWrite(t, rng, tx, rtx, services, nodes, names); err != nil {
							return err
						}
						compareReads(t, tx, rtx, true, queries)
					}
					if fail {
						return errors.New("fail")
					}
					return nil
				})
				if fail {
					rtx.Abort()
				} else {
					if err != nil {
						return err
					}
					rtx.Commit()
				}
			}
			rtx := ref.Txn(false)
			return b.Update(func(tx Tx) error {
				compareReads(t, tx, rtx, true, queries)
				return nil
			})
		})
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		s.View(func(tx ReadTx) { compareReads(t, tx, ref.Txn(false), false, queries) })
		if t.Failed() {
			t.Fatalf("round %d", round)
		}
	}
}

// randomWrite makes one write in tx, and the same in rtx when tx accepts it;
// tx must refuse exactly the writes that break the rules on rtx.
func randomWrite(t *testing.T, rng *rand.Rand, tx Tx, rtx *memdb.Txn, services, nodes, names []string) error {
	t.Helper()
	refGet := func(kind, id string) api.StoreObject { return get(rtx, kind, id) }
	var (
		obj     api.StoreObject
		kind    api.StoreActionKind
		wantErr error
	)
	if rng.Intn(2) == 0 {
		id := fmt.Sprintf("s%d", rng.Intn(15))
		svc := service(id, names[rng.Intn(len(names))])
		obj = svc
		if cur := refGet(api.KindService, id); cur != nil {
			svc.Meta = cur.GetMeta()
			kind = api.StoreActionKindUpdate
			if rng.Intn(4) == 0 {
				kind = api.StoreActionKindRemove
			}
		} else {
			kind = api.StoreActionKindCreate
		}
		if kind != api.StoreActionKindRemove && svc.GetName() != "" {
			if o, _ := rtx.First(api.KindService, indexName, svc.GetName()); o != nil && o.(api.StoreObject).GetID() != id {
				wantErr = ErrNameConflict
			}
		}
	} else {
		id := fmt.Sprintf("t%d", rng.Intn(30))
		tk := task(id, services[rng.Intn(len(services))], uint64(rng.Intn(4)), nodes[rng.Intn(len(nodes))],
			[]api.TaskState{api.TaskStateRunning, api.TaskStateShutdown}[rng.Intn(2)])
		obj = tk
		if cur := refGet(api.KindTask, id); cur != nil {
			tk.Meta = cur.GetMeta()
			kind = api.StoreActionKindUpdate
			switch rng.Intn(6) {
			case 0:
				kind = api.StoreActionKindRemove
			case 1:
				tk.Meta.Version++
				wantErr = ErrSequenceConflict
			case 2:
				kind, wantErr = api.StoreActionKindCreate, ErrExist
			}
		} else {
			kind = api.StoreActionKindCreate
			if rng.Intn(6) == 0 {
				kind, wantErr = api.StoreActionKindUpdate, ErrNotExist
			}
		}
	}
	var err error
	switch kind {
	case api.StoreActionKindCreate:
		err = tx.Create(obj)
	case api.StoreActionKindUpdate:
		err = tx.Update(obj)
	case api.StoreActionKindRemove:
		err = tx.Delete(obj.Kind(), obj.GetID())
	}
	if !errors.Is(err, wantErr) || (err == nil) != (wantErr == nil) {
		t.Fatalf("%v %s %s: %v, want %v", kind, obj.Kind(), obj.GetID(), err, wantErr)
	}
	if err != nil {
		return nil
	}
	if kind == api.StoreActionKindRemove {
		return rtx.Delete(obj.Kind(), refGet(obj.Kind(), obj.GetID()))
	}
	// What the transaction holds now, as the old store held it.
	return rtx.Insert(obj.Kind(), tx.Get(obj.Kind(), obj.GetID()))
}

// compareReads compares reads through tx and rtx; with exact, the objects'
// content too, else only which objects and their order (the committed
// objects' versions differ from the ones written).
func compareReads(t *testing.T, tx ReadTx, rtx *memdb.Txn, exact bool, queries []struct {
	kind string
	b    By
}) {
	t.Helper()
	for _, q := range queries {
		got, err := tx.Find(q.kind, q.b)
		if err != nil {
			t.Fatal(err)
		}
		want, err := find(rtx, q.kind, q.b)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("%s %+v: %v, want %v", q.kind, q.b, ids(got), ids(want))
		}
		for i := range got {
			if got[i].GetID() != want[i].GetID() || exact && !equalObjects(got[i], want[i]) {
				t.Fatalf("%s %+v: %v, want %v", q.kind, q.b, ids(got), ids(want))
			}
		}
		if n, err := Count(tx, q.kind, q.b); err != nil || n != len(want) {
			t.Fatalf("%s %+v: count %d (%v), want %d", q.kind, q.b, n, err, len(want))
		}
		for _, o := range want {
			if !Exists(tx, q.kind, o.GetID()) || exact && !equalObjects(tx.Get(q.kind, o.GetID()), o) {
				t.Fatalf("%s %s: Get disagrees", q.kind, o.GetID())
			}
		}
	}
}

func equalObjects(a, b api.StoreObject) bool {
	x, y := api.NewObject(a), api.NewObject(b)
	return gogoproto.Equal(&x, &y)
}

// refWrite and refApply are how the store applied transactions before
// applyTx read the state before the transaction plus its own writes instead
// of memdb's write transaction: the reference for TestApplyMatchesReference.
func refWrite(txn *memdb.Txn, kind api.StoreActionKind, obj api.StoreObject, seen map[string]uint64, version uint64) error {
	k := obj.Kind()
	id := obj.GetID()
	if id == "" {
		return fmt.Errorf("%w: %s without an ID", ErrInvalid, k)
	}
	cur := get(txn, k, id)
	refCheckName := func() error {
		name := obj.GetName()
		if name == "" || !uniqueNames[obj.Kind()] {
			return nil
		}
		o, err := txn.First(obj.Kind(), indexName, name)
		if err != nil {
			return err
		}
		if o != nil && o.(api.StoreObject).GetID() != obj.GetID() {
			return fmt.Errorf("%w: %s %q exists (ID %s)", ErrNameConflict, obj.Kind(), name, o.(api.StoreObject).GetID())
		}
		return nil
	}
	switch kind {
	case api.StoreActionKindCreate:
		if cur != nil {
			return fmt.Errorf("%w: %s %s", ErrExist, k, id)
		}
		if err := refCheckName(); err != nil {
			return err
		}
		setVersion(obj, version)
		return txn.Insert(k, obj)
	case api.StoreActionKindUpdate:
		if cur == nil {
			return fmt.Errorf("%w: %s %s", ErrNotExist, k, id)
		}
		want := cur.GetMeta().Version
		if v, ok := seen[k+"/"+id]; ok {
			want = v
		}
		if got := obj.GetMeta().Version; got != want {
			return fmt.Errorf("%w: %s %s is at version %d, the update was made from version %d",
				ErrSequenceConflict, k, id, cur.GetMeta().Version, got)
		}
		meta := obj.GetMeta()
		meta.CreatedAt = cur.GetMeta().CreatedAt
		obj.SetMeta(meta)
		if err := refCheckName(); err != nil {
			return err
		}
		setVersion(obj, version)
		return txn.Insert(k, obj)
	case api.StoreActionKindRemove:
		if cur == nil {
			return fmt.Errorf("%w: %s %s", ErrNotExist, k, id)
		}
		return txn.Delete(k, cur)
	}
	return fmt.Errorf("%w: unknown action kind %v", ErrInvalid, kind)
}

func refApply(db *memdb.MemDB, index uint64, actions []api.StoreAction) ([]Event, error) {
	txn := db.Txn(true)
	seen := map[string]uint64{}
	var events []Event
	for i := range actions {
		a := &actions[i]
		obj := a.Target.StoreObject()
		key := obj.Kind() + "/" + obj.GetID()
		old := get(txn, obj.Kind(), obj.GetID())
		if _, ok := seen[key]; !ok {
			if old != nil {
				seen[key] = old.GetMeta().Version
			} else {
				seen[key] = 0
			}
		}
		if err := refWrite(txn, a.Kind, obj, seen, index); err != nil {
			txn.Abort()
			return nil, err
		}
		events = append(events, newEvent(a.Kind, obj, old))
	}
	txn.Commit()
	return events, nil
}

// Random transactions, many of them refused (versions, existence, names,
// several actions on one object): applyTx accepts and refuses exactly what
// the reference does, with the same errors, state and events.
func TestApplyMatchesReference(t *testing.T) {
	s, _ := newTestStore(t)
	_, w, _, _ := s.Watch(0)
	defer w.Close()
	ref := newDB()
	rng := rand.New(rand.NewSource(2))
	names := []string{"a", "A", "b", "c", "d", "e", "f", "g", "h", "i", "j", ""}
	refused := 0
	for index := uint64(1); index <= 3000; index++ {
		snap := ref.Txn(false)
		// exists tracks the objects as the transaction leaves them so far, so
		// that most actions are valid; version is the version an update
		// must carry (before the transaction).
		exists := map[string]bool{}
		version := map[string]uint64{}
		var actions []api.StoreAction
		for n := 1 + rng.Intn(6); n > 0; n-- {
			var obj api.StoreObject
			if rng.Intn(2) == 0 {
				obj = service(fmt.Sprintf("s%d", rng.Intn(8)), names[rng.Intn(len(names))])
			} else {
				obj = task(fmt.Sprintf("t%d", rng.Intn(8)), "svc", uint64(rng.Intn(3)), "n", api.TaskStateRunning)
			}
			key := obj.Kind() + "/" + obj.GetID()
			if _, ok := exists[key]; !ok {
				cur := get(snap, obj.Kind(), obj.GetID())
				exists[key] = cur != nil
				if cur != nil {
					version[key] = cur.GetMeta().Version
				}
			}
			kind := api.StoreActionKindCreate
			if exists[key] {
				kind = api.StoreActionKindUpdate
				if rng.Intn(4) == 0 {
					kind = api.StoreActionKindRemove
				}
			}
			meta := api.Meta{Version: version[key]}
			if rng.Intn(12) == 0 {
				kind = []api.StoreActionKind{api.StoreActionKindCreate, api.StoreActionKindUpdate, api.StoreActionKindRemove}[rng.Intn(3)]
			}
			if rng.Intn(12) == 0 {
				meta.Version = uint64(rng.Intn(int(index)))
			}
			obj.SetMeta(meta)
			exists[key] = kind != api.StoreActionKindRemove
			actions = append(actions, api.StoreAction{Kind: kind, Target: api.NewObject(obj)})
		}
		data, err := (&api.StoreTransaction{Actions: actions}).Marshal()
		if err != nil {
			t.Fatal(err)
		}
		var refTx api.StoreTransaction
		if err := refTx.Unmarshal(data); err != nil {
			t.Fatal(err)
		}
		wantEvents, wantErr := refApply(ref, index, refTx.Actions)
		gotErr := s.Apply(index, data)
		if fmt.Sprint(gotErr) != fmt.Sprint(wantErr) {
			t.Fatalf("index %d %v: got %v, want %v", index, actions, gotErr, wantErr)
		}
		if wantErr != nil {
			refused++
			continue
		}
		c := <-w.C
		if len(c.Events) != len(wantEvents) {
			t.Fatalf("index %d: %d events, want %d", index, len(c.Events), len(wantEvents))
		}
		for i, e := range c.Events {
			want := wantEvents[i]
			if e.Action != want.Action || !equalObjects(e.Object, want.Object) ||
				(e.OldObject == nil) != (want.OldObject == nil) || e.OldObject != nil && !equalObjects(e.OldObject, want.OldObject) {
				t.Fatalf("index %d event %d: %+v, want %+v", index, i, e, want)
			}
		}
		for _, kind := range []string{api.KindService, api.KindTask} {
			got, _ := find(s.db.Load().Txn(false), kind, All())
			want, _ := find(ref.Txn(false), kind, All())
			if len(got) != len(want) {
				t.Fatalf("index %d: %d %ss, want %d", index, len(got), kind, len(want))
			}
			for i := range got {
				if !equalObjects(got[i], want[i]) {
					t.Fatalf("index %d: %v, want %v", index, got[i], want[i])
				}
			}
		}
	}
	t.Logf("refused %d", refused)
	if refused < 300 || refused > 2700 {
		t.Errorf("%d of 3000 transactions refused: the test does not exercise both outcomes", refused)
	}
}

// Each sees what Find sees, in the same order, in a committed view and in a
// transaction with its own writes, and stops when told to.
func TestEachMatchesFind(t *testing.T) {
	s, _ := newTestStore(t)
	mustUpdate(t, s, func(tx Tx) error {
		for i := range 5 {
			if err := tx.Create(task(fmt.Sprintf("t%d", i), "svc", uint64(i+1), "n1", api.TaskStateRunning)); err != nil {
				return err
			}
		}
		return tx.Create(task("other", "svc2", 1, "n1", api.TaskStateRunning))
	})
	check := func(tx ReadTx, want []string) {
		t.Helper()
		found, err := Find[*api.Task](tx, ByServiceID("svc"))
		if err != nil {
			t.Fatal(err)
		}
		var seen []string
		if err := Each(tx, ByServiceID("svc"), func(tk *api.Task) bool { seen = append(seen, tk.ID); return true }); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(seen, ids(found)) || !slices.Equal(seen, want) {
			t.Fatalf("Each saw %v, Find %v, want %v", seen, ids(found), want)
		}
		var first []string
		_ = Each(tx, ByServiceID("svc"), func(tk *api.Task) bool { first = append(first, tk.ID); return len(first) < 2 })
		if len(first) != 2 {
			t.Fatalf("Each went on after false: %v", first)
		}
	}
	s.View(func(tx ReadTx) { check(tx, []string{"t0", "t1", "t2", "t3", "t4"}) })
	mustUpdate(t, s, func(tx Tx) error {
		if err := tx.Delete(api.KindTask, "t1"); err != nil {
			return err
		}
		if err := tx.Create(task("t5", "svc", 6, "n2", api.TaskStateRunning)); err != nil {
			return err
		}
		check(tx, []string{"t0", "t2", "t3", "t4", "t5"})
		return nil
	})
}
