// Package store is the managers' replicated cluster state: an in-memory,
// indexed database (go-memdb) whose every change goes through raft.
//
// A writer calls Update with a function that reads and writes through a Tx.
// The function runs against a private copy-on-write snapshot; its writes are
// recorded as a list of store actions, proposed to raft as one entry, and
// applied to the real database on every manager when committed. Update returns
// only after that. Application is deterministic: an update carries the version
// (meta.version) its writer read, and is refused with ErrSequenceConflict when
// the object changed since, on every manager alike.
//
// Readers (View) see consistent snapshots and never block writers. Every
// applied transaction produces one Change on the watch queue.
package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gogo/protobuf/types"
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
	s := &MemoryStore{proposer: p, now: time.Now, queue: newWatchQueue(defaultHistory)}
	s.db.Store(newDB())
	return s
}

func newDB() *memdb.MemDB {
	db, err := memdb.NewMemDB(schema())
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
func (t readTx) exists(kind, id string) bool                       { return get(t.txn, kind, id) != nil }

// View runs cb on a consistent snapshot of the store.
func (s *MemoryStore) View(cb func(ReadTx)) {
	cb(readTx{txn: s.db.Load().Txn(false)})
}

// writeTx records the writes of an Update; it writes to a private snapshot.
type writeTx struct {
	readTx
	now     *types.Timestamp
	actions []api.StoreAction
	size    int
}

func (t *writeTx) record(kind api.StoreActionKind, obj api.StoreObject) {
	a := api.StoreAction{Kind: kind, Target: api.NewObject(obj)}
	t.actions = append(t.actions, a)
	// The action's size plus its field tag and length prefix in the transaction.
	t.size += a.Size() + 1 + sovLen(a.Size())
}

// sovLen is the length of n as a protobuf varint.
func sovLen(n int) int {
	l := 1
	for n >= 0x80 {
		n >>= 7
		l++
	}
	return l
}

func (t *writeTx) Create(obj api.StoreObject) error {
	obj = obj.CopyStoreObject()
	obj.SetMeta(api.Meta{CreatedAt: t.now, UpdatedAt: t.now})
	if err := write(t.txn, api.StoreActionKindCreate, obj, nil, 0); err != nil {
		return err
	}
	t.record(api.StoreActionKindCreate, obj)
	return nil
}

func (t *writeTx) Update(obj api.StoreObject) error {
	obj = obj.CopyStoreObject()
	meta := obj.GetMeta()
	meta.UpdatedAt = t.now
	obj.SetMeta(meta)
	// Within the transaction the version stays the one read: apply checks it
	// against the version before the transaction (see applyTx).
	if err := write(t.txn, api.StoreActionKindUpdate, obj, nil, 0); err != nil {
		return err
	}
	t.record(api.StoreActionKindUpdate, obj)
	return nil
}

func (t *writeTx) Delete(kind, id string) error {
	cur := get(t.txn, kind, id)
	if cur == nil {
		return fmt.Errorf("%w: %s %s", ErrNotExist, kind, id)
	}
	if err := write(t.txn, api.StoreActionKindRemove, cur, nil, 0); err != nil {
		return err
	}
	t.record(api.StoreActionKindRemove, cur)
	return nil
}

// write performs one action on txn with the rules every manager applies.
// seen holds, for objects already written in this transaction, their version
// before it; version is the version written objects get (0 in a writeTx,
// where the version read is kept for apply to check).
func write(txn *memdb.Txn, kind api.StoreActionKind, obj api.StoreObject, seen map[string]uint64, version uint64) error {
	k := obj.Kind()
	id := obj.GetID()
	if id == "" {
		return fmt.Errorf("%w: %s without an ID", ErrInvalid, k)
	}
	cur := get(txn, k, id)
	switch kind {
	case api.StoreActionKindCreate:
		if cur != nil {
			return fmt.Errorf("%w: %s %s", ErrExist, k, id)
		}
		if err := checkName(txn, obj); err != nil {
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
		if err := checkName(txn, obj); err != nil {
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

func checkName(txn *memdb.Txn, obj api.StoreObject) error {
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

func (s *MemoryStore) newWriteTx() *writeTx {
	now, _ := types.TimestampProto(s.now())
	return &writeTx{readTx: readTx{txn: s.db.Load().Snapshot().Txn(true)}, now: now}
}

// Update runs cb in a transaction and commits its writes through raft as one
// proposal. It returns cb's error, a proposal error, or the error applying the
// transaction (e.g. ErrSequenceConflict); nothing is written unless it returns nil.
func (s *MemoryStore) Update(ctx context.Context, cb func(Tx) error) error {
	tx := s.newWriteTx()
	defer tx.txn.Abort()
	if err := cb(tx); err != nil {
		return err
	}
	if len(tx.actions) == 0 {
		return nil
	}
	if tx.size > MaxTransactionBytes {
		return fmt.Errorf("%w: transaction of %d bytes exceeds the %d byte limit of one proposal; use Batch",
			ErrInvalid, tx.size, MaxTransactionBytes)
	}
	return s.propose(ctx, tx.actions)
}

func (s *MemoryStore) propose(ctx context.Context, actions []api.StoreAction) error {
	data, err := (&api.StoreTransaction{Actions: actions}).Marshal()
	if err != nil {
		return fmt.Errorf("encode store transaction: %w", err)
	}
	return s.proposer.Propose(ctx, data)
}

// Apply applies one committed transaction (raft.StateMachine).
func (s *MemoryStore) Apply(index uint64, data []byte) error {
	var tr api.StoreTransaction
	if err := tr.Unmarshal(data); err != nil {
		return fmt.Errorf("%w: decode transaction at index %d: %v", ErrInvalid, index, err)
	}
	return s.applyTx(index, tr.Actions)
}

func (s *MemoryStore) applyTx(index uint64, actions []api.StoreAction) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	txn := s.db.Load().Txn(true)
	seen := map[string]uint64{}
	events := make([]Event, 0, len(actions))
	for i := range actions {
		a := &actions[i]
		obj := a.Target.StoreObject()
		if obj == nil {
			txn.Abort()
			return fmt.Errorf("%w: action %d at index %d has no object", ErrInvalid, i, index)
		}
		key := obj.Kind() + "/" + obj.GetID()
		old := get(txn, obj.Kind(), obj.GetID())
		if _, ok := seen[key]; !ok {
			if old != nil {
				seen[key] = old.GetMeta().Version
			} else {
				seen[key] = 0
			}
		}
		if err := write(txn, a.Kind, obj, seen, index); err != nil {
			txn.Abort()
			return err
		}
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
