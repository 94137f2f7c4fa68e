// Package store is the managers' replicated cluster state: an in-memory,
// indexed database (go-memdb) whose every change goes through raft.
//
// A writer calls Update with a function that reads and writes through a Tx.
// The function reads a snapshot of the store under an overlay of its own
// writes (see writeTx); each write is checked at once against what the
// transaction sees (existence, version, unique names) and recorded as an
// encoded store action. The actions are proposed to raft as one entry and
// applied to the real database on every manager when committed: that is the
// only time they are inserted into memdb. Update returns only after that.
// Application is deterministic: an update carries the version (meta.version)
// its writer read, and is refused with ErrSequenceConflict when the object
// changed since, on every manager alike.
//
// Readers (View) see consistent snapshots and never block writers. Every
// applied transaction produces one Change on the watch queue.
package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	memdb "github.com/hashicorp/go-memdb"

	"github.com/flotilla/flotilla/api"
)

// Errors of store operations. They are wrapped with the object at fault;
// test them with errors.Is.
var (
	ErrExist            = errors.New("object already exists")
	ErrNotExist         = errors.New("object does not exist")
	ErrNameConflict     = errors.New("name is already in use")
	ErrSequenceConflict = errors.New("update out of sequence")
	ErrInvalid          = errors.New("invalid store action")
)

// MaxTransactionBytes bounds the encoded transaction of one proposal: an
// Update bigger than this is refused, and Batch starts a new proposal before
// it would exceed it. It must stay at or below the raft log's largest
// proposal (the manager's tests check this); both stay well under gRPC's
// 4 MiB message size, so replication never needs tuning.
const MaxTransactionBytes = 1536<<10 - 4<<10

// Proposer puts a store transaction through consensus. Propose returns after
// the entry is committed and applied on this manager, with Apply's result.
type Proposer interface {
	Propose(ctx context.Context, data []byte) error
}

// ReadTx reads a consistent snapshot. Objects returned are copies.
type ReadTx interface {
	Get(kind, id string) api.StoreObject
	Find(kind string, b By) ([]api.StoreObject, error)
	count(kind string, b By) (int, error)
	exists(kind, id string) bool
	each(kind string, b By, fn func(api.StoreObject) bool) error
}

// Tx reads and writes within one transaction. Reads see the transaction's own
// writes.
type Tx interface {
	ReadTx
	// Create adds a new object; its ID must be set.
	Create(obj api.StoreObject) error
	// Update replaces an object. obj.Meta.Version must be the version read.
	Update(obj api.StoreObject) error
	// Delete removes an object.
	Delete(kind, id string) error
}

// MemoryStore is the store. The raft node drives it through Apply, Snapshot
// and Restore (it is the raft state machine).
type MemoryStore struct {
	proposer Proposer
	now      func() time.Time

	// mu orders applying a transaction with starting a watch, so that a
	// ViewAndWatch sees each change either in its view or on its channel.
	mu      sync.Mutex
	db      atomic.Pointer[memdb.MemDB]
	version atomic.Uint64
	queue   *watchQueue
}

// New makes an empty store that proposes its writes through p.
func New(p Proposer) *MemoryStore {
	s := &MemoryStore{proposer: p, now: time.Now, queue: newWatchQueue(defaultHistory, defaultHistoryEvents)}
	s.db.Store(newDB())
	return s
}

func newDB() *memdb.MemDB {
	db, err := memdb.NewMemDB(dbSchema)
	if err != nil {
		panic(fmt.Sprintf("store: invalid schema: %v", err))
	}
	// A memdb snapshot is a full database that does not track mutations for
	// memdb's watch channels, which we do not use (we have our own watch
	// queue). Tracking costs a walk of the whole index on every commit of
	// more than 8,192 changes: about a quarter of the CPU of big batches.
	return db.Snapshot()
}

// Version is the raft index of the last applied change.
func (s *MemoryStore) Version() uint64 { return s.version.Load() }

type readTx struct{ txn *memdb.Txn }

func (t readTx) Get(kind, id string) api.StoreObject {
	o := get(t.txn, kind, id)
	if o == nil {
		return nil
	}
	return o.CopyStoreObject()
}

func (t readTx) Find(kind string, b By) ([]api.StoreObject, error) { return find(t.txn, kind, b) }
func (t readTx) count(kind string, b By) (int, error)              { return count(t.txn, kind, b) }
func (t readTx) each(kind string, b By, fn func(api.StoreObject) bool) error {
	return each(t.txn, kind, b, fn)
}
func (t readTx) exists(kind, id string) bool { return get(t.txn, kind, id) != nil }

// View runs cb on a consistent snapshot of the store.
func (s *MemoryStore) View(cb func(ReadTx)) {
	cb(readTx{txn: s.db.Load().Txn(false)})
}

// check applies the rules every manager applies to one action on obj, whose
// current state is cur (nil: none), and prepares obj's meta for writing.
// want is the version an update must carry (the object's version before the
// transaction); version is the version written objects get (0 in a write
// transaction, where the version read is kept for apply to check). names
// answers the name-uniqueness check. The caller then writes obj.
func check(names nameOwners, kind api.StoreActionKind, obj, cur api.StoreObject, want, version uint64) error {
	k := obj.Kind()
	id := obj.GetID()
	if id == "" {
		return fmt.Errorf("%w: %s without an ID", ErrInvalid, k)
	}
	switch kind {
	case api.StoreActionKindCreate:
		if cur != nil {
			return fmt.Errorf("%w: %s %s", ErrExist, k, id)
		}
		if err := checkName(names, obj); err != nil {
			return err
		}
		setVersion(obj, version)
		return nil
	case api.StoreActionKindUpdate:
		if cur == nil {
			return fmt.Errorf("%w: %s %s", ErrNotExist, k, id)
		}
		if got := obj.GetMeta().Version; got != want {
			return fmt.Errorf("%w: %s %s is at version %d, the update was made from version %d",
				ErrSequenceConflict, k, id, cur.GetMeta().Version, got)
		}
		meta := obj.GetMeta()
		meta.CreatedAt = cur.GetMeta().CreatedAt
		obj.SetMeta(meta)
		if err := checkName(names, obj); err != nil {
			return err
		}
		setVersion(obj, version)
		return nil
	case api.StoreActionKindRemove:
		if cur == nil {
			return fmt.Errorf("%w: %s %s", ErrNotExist, k, id)
		}
		return nil
	}
	return fmt.Errorf("%w: unknown action kind %v", ErrInvalid, kind)
}

func setVersion(obj api.StoreObject, version uint64) {
	if version == 0 {
		return
	}
	meta := obj.GetMeta()
	meta.Version = version
	obj.SetMeta(meta)
}

// uniqueNames are the kinds whose names identify them.
var uniqueNames = map[string]bool{
	api.KindService: true, api.KindNetwork: true, api.KindSecret: true,
	api.KindConfig: true, api.KindCluster: true,
}

// nameOwners finds objects by name, for the uniqueness check.
type nameOwners interface {
	// nameOwner returns the ID of the first object of the kind (in name
	// index order) whose name is name, ignoring case; "" if none.
	nameOwner(kind, name string) (string, error)
}

func checkName(names nameOwners, obj api.StoreObject) error {
	if !uniqueNames[obj.Kind()] {
		return nil
	}
	name := obj.GetName()
	if name == "" {
		return nil
	}
	owner, err := names.nameOwner(obj.Kind(), name)
	if err != nil {
		return err
	}
	if owner != "" && owner != obj.GetID() {
		return fmt.Errorf("%w: %s %q exists (ID %s)", ErrNameConflict, obj.Kind(), name, owner)
	}
	return nil
}

// Update runs cb in a transaction and commits its writes through raft as one
// proposal. It returns cb's error, a proposal error, or the error applying the
// transaction (e.g. ErrSequenceConflict); nothing is written unless it returns nil.
func (s *MemoryStore) Update(ctx context.Context, cb func(Tx) error) error {
	tx := s.newWriteTx()
	if err := cb(tx); err != nil {
		return err
	}
	if tx.actions() == 0 {
		return nil
	}
	if len(tx.buf) > MaxTransactionBytes {
		return fmt.Errorf("%w: transaction of %d bytes exceeds the %d byte limit of one proposal; use Batch",
			ErrInvalid, len(tx.buf), MaxTransactionBytes)
	}
	return s.proposer.Propose(ctx, tx.buf)
}

// Apply applies one committed transaction (raft.StateMachine).
func (s *MemoryStore) Apply(index uint64, data []byte) error {
	var tr api.StoreTransaction
	if err := tr.Unmarshal(data); err != nil {
		return fmt.Errorf("%w: decode transaction at index %d: %v", ErrInvalid, index, err)
	}
	return s.applyTx(index, tr.Actions)
}

// objKey identifies an object across kinds.
type objKey struct{ kind, id string }

// applied is what an applied transaction wrote to one object so far.
type applied struct {
	obj api.StoreObject // nil: removed
	// before is the object's version before the transaction (0: none): a
	// later update of it in the same transaction must carry that version.
	before uint64
	name   string // lower-cased, for kinds with unique names
}

// applyState is the state a transaction is applied on: the store before it
// (snap) under what it wrote so far. The checks read it rather than memdb's
// write transaction: a read through a memdb write transaction drops the
// index's cache of nodes already copied in the transaction, so every later
// insert would copy its whole path again.
type applyState struct {
	snap    *memdb.Txn
	written map[objKey]applied
	// names maps kind and lower-cased name to IDs written with it: a
	// superset, checked against written.
	names map[objKey][]string
}

func (st *applyState) nameOwner(kind, name string) (string, error) {
	it, err := st.snap.Get(kind, indexName, name)
	if err != nil {
		return "", err
	}
	owner := ""
	for o := it.Next(); o != nil; o = it.Next() {
		id := o.(api.StoreObject).GetID()
		if _, ok := st.written[objKey{kind, id}]; !ok {
			owner = id
			break
		}
	}
	folded := strings.ToLower(name)
	for _, id := range st.names[objKey{kind, folded}] {
		if w := st.written[objKey{kind, id}]; w.obj != nil && w.name == folded && (owner == "" || id < owner) {
			owner = id
		}
	}
	return owner, nil
}

// applyTx applies decoded actions. Their objects are fresh from decoding and
// owned by the store from here on (no copy); events share them.
func (s *MemoryStore) applyTx(index uint64, actions []api.StoreAction) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	db := s.db.Load()
	st := &applyState{snap: db.Txn(false), written: make(map[objKey]applied, len(actions))}
	txn := db.Txn(true)
	events := make([]Event, 0, len(actions))
	for i := range actions {
		a := &actions[i]
		obj := a.Target.StoreObject()
		if obj == nil {
			txn.Abort()
			return fmt.Errorf("%w: action %d at index %d has no object", ErrInvalid, i, index)
		}
		k, id := obj.Kind(), obj.GetID()
		key := objKey{k, id}
		w, ok := st.written[key]
		old := w.obj
		if !ok {
			old = get(st.snap, k, id)
			if old != nil {
				w.before = old.GetMeta().Version
			}
		}
		err := check(st, a.Kind, obj, old, w.before, index)
		if err == nil {
			if a.Kind == api.StoreActionKindRemove {
				err = txn.Delete(k, old)
			} else {
				err = txn.Insert(k, obj)
			}
		}
		if err != nil {
			txn.Abort()
			return err
		}
		w.obj, w.name = obj, ""
		if a.Kind == api.StoreActionKindRemove {
			w.obj = nil
		} else if uniqueNames[k] {
			if name := obj.GetName(); name != "" {
				w.name = strings.ToLower(name)
				if st.names == nil {
					st.names = map[objKey][]string{}
				}
				nk := objKey{k, w.name}
				st.names[nk] = append(st.names[nk], id)
			}
		}
		st.written[key] = w
		events = append(events, newEvent(a.Kind, obj, old))
	}
	txn.Commit()
	s.version.Store(index)
	s.queue.publish(Change{Version: index, Events: events})
	return nil
}

func newEvent(kind api.StoreActionKind, obj, old api.StoreObject) Event {
	switch kind {
	case api.StoreActionKindCreate:
		return Event{Action: api.WatchActionKindCreate, Object: obj}
	case api.StoreActionKindUpdate:
		return Event{Action: api.WatchActionKindUpdate, Object: obj, OldObject: old}
	default:
		return Event{Action: api.WatchActionKindRemove, Object: old}
	}
}

// Snapshot serializes the whole store (raft.StateMachine).
func (s *MemoryStore) Snapshot() ([]byte, error) {
	s.mu.Lock()
	txn := s.db.Load().Txn(false)
	version := s.version.Load()
	s.mu.Unlock()
	snap := api.StoreSnapshot{Version: version}
	for _, kind := range api.Kinds {
		it, err := txn.Get(kind, indexID+"_prefix", "")
		if err != nil {
			return nil, err
		}
		for o := it.Next(); o != nil; o = it.Next() {
			switch v := o.(type) {
			case *api.Node:
				snap.Nodes = append(snap.Nodes, v)
			case *api.Service:
				snap.Services = append(snap.Services, v)
			case *api.Task:
				snap.Tasks = append(snap.Tasks, v)
			case *api.Cluster:
				snap.Clusters = append(snap.Clusters, v)
			case *api.Network:
				snap.Networks = append(snap.Networks, v)
			case *api.Secret:
				snap.Secrets = append(snap.Secrets, v)
			case *api.Config:
				snap.Configs = append(snap.Configs, v)
			}
		}
	}
	return snap.Marshal()
}

// Restore replaces the whole store with a snapshot (raft.StateMachine).
// Watchers are closed with ErrWatchReset: they must list again.
func (s *MemoryStore) Restore(data []byte) error {
	var snap api.StoreSnapshot
	if err := snap.Unmarshal(data); err != nil {
		return fmt.Errorf("decode store snapshot: %w", err)
	}
	db := newDB()
	txn := db.Txn(true)
	insert := func(kind string, o api.StoreObject) error {
		if err := txn.Insert(kind, o); err != nil {
			return fmt.Errorf("restore %s %s: %w", kind, o.GetID(), err)
		}
		return nil
	}
	var err error
	for _, o := range snap.Nodes {
		err = errors.Join(err, insert(api.KindNode, o))
	}
	for _, o := range snap.Services {
		err = errors.Join(err, insert(api.KindService, o))
	}
	for _, o := range snap.Tasks {
		err = errors.Join(err, insert(api.KindTask, o))
	}
	for _, o := range snap.Clusters {
		err = errors.Join(err, insert(api.KindCluster, o))
	}
	for _, o := range snap.Networks {
		err = errors.Join(err, insert(api.KindNetwork, o))
	}
	for _, o := range snap.Secrets {
		err = errors.Join(err, insert(api.KindSecret, o))
	}
	for _, o := range snap.Configs {
		err = errors.Join(err, insert(api.KindConfig, o))
	}
	if err != nil {
		txn.Abort()
		return err
	}
	txn.Commit()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.db.Store(db)
	s.version.Store(snap.Version)
	s.queue.reset(snap.Version)
	return nil
}
