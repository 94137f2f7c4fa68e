package store

import (
	"bytes"
	"fmt"
	"slices"
	"strings"

	"github.com/gogo/protobuf/types"
	memdb "github.com/hashicorp/go-memdb"

	"github.com/flotilla/flotilla/api"
)

// writeTx is the transaction of an Update or a Batch. It reads a snapshot of
// the store (readTx) under an overlay of its own writes, and records each
// write as an encoded store action at once: buf is the proposal so far, a
// StoreTransaction in protobuf encoding.
//
// The overlay holds, per object written, where its latest action is in buf
// (or that it was removed). Reads consult it first: Get by ID directly; Find
// and Count merge the snapshot's index results with the overlay objects that
// the same index selects, in the index's order. The overlay's objects are
// decoded from buf when read, so they are private to the transaction and the
// caller's objects are never kept.
//
// Every write pushes an undo record, so that a failed Batch.Update is undone
// by truncating buf and restoring the overlay entries it changed.
type writeTx struct {
	readTx
	now   *types.Timestamp
	buf   []byte
	undo  []undoRec
	kinds map[string]*kindOverlay
	// hint is how many objects the transaction is likely to write.
	hint int
}

// txEntry is the latest write of one object in a writeTx.
type txEntry struct {
	// off and n locate the encoded StoreAction in writeTx.buf.
	off, n  int
	removed bool
	// name is the object's name, lower-cased, for kinds with unique names.
	name string
	// obj is the decoded object (private, never handed out), once needed by
	// Find or a later write; nil until then.
	obj api.StoreObject
}

// kindOverlay holds the writes of one kind.
type kindOverlay struct {
	entries map[string]txEntry
	// names maps a lower-cased name to IDs written with it: a superset, each
	// checked against entries (kinds with unique names only).
	names map[string][]string
}

// undoRec restores an object's overlay entry as it was before one action.
type undoRec struct {
	kind, id string
	prev     txEntry
	had      bool
	// off is the length of buf before the action.
	off int
}

func (s *MemoryStore) newWriteTx() *writeTx {
	now, _ := types.TimestampProto(s.now())
	return &writeTx{readTx: readTx{txn: s.db.Load().Txn(false)}, now: now}
}

// sizeLike makes room for as many actions and bytes as prev holds: the next
// proposal of a big batch is likely as big as the last one.
func (t *writeTx) sizeLike(prev *writeTx) {
	t.buf = make([]byte, 0, min(len(prev.buf)+len(prev.buf)/8, MaxTransactionBytes+64<<10))
	t.undo = make([]undoRec, 0, len(prev.undo)+len(prev.undo)/8)
	t.hint = len(prev.undo)
}

// actions is the number of actions recorded.
func (t *writeTx) actions() int { return len(t.undo) }

func (t *writeTx) overlay(kind string) *kindOverlay {
	ov := t.kinds[kind]
	if ov == nil {
		if t.kinds == nil {
			t.kinds = map[string]*kindOverlay{}
		}
		// The first kind written gets the room: big transactions write
		// mostly one kind.
		ov = &kindOverlay{entries: make(map[string]txEntry, t.hint)}
		t.hint = 0
		t.kinds[kind] = ov
	}
	return ov
}

// entry returns the overlay entry of an object, if the transaction wrote it.
func (t *writeTx) entry(kind, id string) (txEntry, bool) {
	ov := t.kinds[kind]
	if ov == nil {
		return txEntry{}, false
	}
	e, ok := ov.entries[id]
	return e, ok
}

// decode returns a fresh copy of the object of a live entry.
func (t *writeTx) decode(e txEntry) api.StoreObject {
	if e.obj != nil {
		return e.obj.CopyStoreObject()
	}
	var a api.StoreAction
	if err := a.Unmarshal(t.buf[e.off : e.off+e.n]); err != nil {
		// buf holds only what this transaction encoded.
		panic(fmt.Sprintf("store: decode own action: %v", err))
	}
	return a.Target.StoreObject()
}

// cached returns the decoded object of a live entry, decoding it once.
func (t *writeTx) cached(kind, id string, e txEntry) api.StoreObject {
	if e.obj == nil {
		e.obj = t.decode(e)
		t.kinds[kind].entries[id] = e
	}
	return e.obj
}

// current returns the object as the transaction sees it (not a copy: do not
// modify it), or nil.
func (t *writeTx) current(kind, id string) api.StoreObject {
	if e, ok := t.entry(kind, id); ok {
		if e.removed {
			return nil
		}
		return t.cached(kind, id, e)
	}
	return get(t.txn, kind, id)
}

func (t *writeTx) Get(kind, id string) api.StoreObject {
	if e, ok := t.entry(kind, id); ok {
		if e.removed {
			return nil
		}
		return t.decode(e)
	}
	return t.readTx.Get(kind, id)
}

func (t *writeTx) exists(kind, id string) bool {
	if e, ok := t.entry(kind, id); ok {
		return !e.removed
	}
	return t.readTx.exists(kind, id)
}

func (t *writeTx) Find(kind string, b By) ([]api.StoreObject, error) {
	var out []api.StoreObject
	err := t.scan(kind, b, func(o api.StoreObject) bool {
		out = append(out, o.CopyStoreObject())
		return true
	})
	return out, err
}

func (t *writeTx) each(kind string, b By, fn func(api.StoreObject) bool) error {
	return t.scan(kind, b, fn)
}

func (t *writeTx) count(kind string, b By) (int, error) {
	n := 0
	err := t.scan(kind, b, func(api.StoreObject) bool {
		n++
		return true
	})
	return n, err
}

// keyed is an overlay object with its key in the index being scanned.
type keyed struct {
	key []byte
	obj api.StoreObject
}

// scan calls fn, until it returns false, with each object b selects as the
// transaction sees it (not copies), in index order, as the memdb index would
// hold them after the transaction's writes.
func (t *writeTx) scan(kind string, b By, fn func(api.StoreObject) bool) error {
	index, args, prefix := b.lookup()
	it, err := t.txn.Get(kind, queryIndex(index, prefix), args...)
	if err != nil {
		return fmt.Errorf("find %s by %s: %w", kind, index, err)
	}
	ov := t.kinds[kind]
	if ov == nil || len(ov.entries) == 0 {
		for o := it.Next(); o != nil; o = it.Next() {
			if !fn(o.(api.StoreObject)) {
				return nil
			}
		}
		return nil
	}
	// memdb accepted the query, so the kind and index exist and the
	// arguments are valid.
	is := dbSchema.Tables[kind].Indexes[index]
	val, err := queryKey(is, args, prefix)
	if err != nil {
		return fmt.Errorf("find %s by %s: %w", kind, index, err)
	}
	var matches []keyed
	for id, e := range ov.entries {
		if e.removed {
			continue
		}
		o := t.cached(kind, id, e)
		if k, ok := indexKey(kind, is, o); ok && bytes.HasPrefix(k, val) {
			matches = append(matches, keyed{k, o})
		}
	}
	slices.SortFunc(matches, func(a, b keyed) int { return bytes.Compare(a.key, b.key) })
	for o := it.Next(); o != nil; o = it.Next() {
		so := o.(api.StoreObject)
		if _, written := ov.entries[so.GetID()]; written {
			continue // the overlay has its current state
		}
		if len(matches) > 0 {
			k, _ := indexKey(kind, is, so)
			for len(matches) > 0 && bytes.Compare(matches[0].key, k) < 0 {
				if !fn(matches[0].obj) {
					return nil
				}
				matches = matches[1:]
			}
		}
		if !fn(so) {
			return nil
		}
	}
	for _, m := range matches {
		if !fn(m.obj) {
			return nil
		}
	}
	return nil
}

func queryIndex(index string, prefix bool) string {
	if prefix {
		return index + "_prefix"
	}
	return index
}

// queryKey is the key memdb seeks for a query: what an object's key in the
// index must start with to be selected.
func queryKey(is *memdb.IndexSchema, args []interface{}, prefix bool) ([]byte, error) {
	if len(args) == 0 {
		return nil, nil
	}
	if prefix {
		return is.Indexer.(memdb.PrefixIndexer).PrefixFromArgs(args...)
	}
	return is.Indexer.FromArgs(args...)
}

// indexKey is obj's key in an index as memdb builds it: the indexed value,
// followed by the ID for indexes that are not unique. ok is false when the
// object is not in the index.
func indexKey(kind string, is *memdb.IndexSchema, obj api.StoreObject) ([]byte, bool) {
	ok, val, err := is.Indexer.(memdb.SingleIndexer).FromObject(obj)
	if err != nil || !ok {
		return nil, false
	}
	if !is.Unique {
		_, id, _ := dbSchema.Tables[kind].Indexes[indexID].Indexer.(memdb.SingleIndexer).FromObject(obj)
		val = append(val, id...)
	}
	return val, true
}

// nameOwner finds the first object with the name among the snapshot's
// objects the transaction did not write and its own live writes.
func (t *writeTx) nameOwner(kind, name string) (string, error) {
	it, err := t.txn.Get(kind, indexName, name)
	if err != nil {
		return "", err
	}
	ov := t.kinds[kind]
	owner := ""
	for o := it.Next(); o != nil; o = it.Next() {
		id := o.(api.StoreObject).GetID()
		if ov != nil {
			if _, written := ov.entries[id]; written {
				continue
			}
		}
		owner = id
		break
	}
	if ov == nil {
		return owner, nil
	}
	folded := strings.ToLower(name)
	for _, id := range ov.names[folded] {
		if e, ok := ov.entries[id]; ok && !e.removed && e.name == folded && (owner == "" || id < owner) {
			owner = id
		}
	}
	return owner, nil
}

func (t *writeTx) Create(obj api.StoreObject) error {
	obj = shallowCopy(obj)
	obj.SetMeta(api.Meta{CreatedAt: t.now, UpdatedAt: t.now})
	if err := check(t, api.StoreActionKindCreate, obj, t.current(obj.Kind(), obj.GetID()), 0, 0); err != nil {
		return err
	}
	return t.record(api.StoreActionKindCreate, obj)
}

func (t *writeTx) Update(obj api.StoreObject) error {
	obj = shallowCopy(obj)
	meta := obj.GetMeta()
	meta.UpdatedAt = t.now
	obj.SetMeta(meta)
	// Within the transaction the version stays the one read: apply checks it
	// against the version before the transaction (see applyTx).
	cur := t.current(obj.Kind(), obj.GetID())
	var want uint64
	if cur != nil {
		want = cur.GetMeta().Version
	}
	if err := check(t, api.StoreActionKindUpdate, obj, cur, want, 0); err != nil {
		return err
	}
	return t.record(api.StoreActionKindUpdate, obj)
}

func (t *writeTx) Delete(kind, id string) error {
	cur := t.current(kind, id)
	if cur == nil {
		return fmt.Errorf("%w: %s %s", ErrNotExist, kind, id)
	}
	if err := check(t, api.StoreActionKindRemove, cur, cur, 0, 0); err != nil {
		return err
	}
	return t.record(api.StoreActionKindRemove, cur)
}

// shallowCopy copies the top level of a store object, so that its meta can
// be set without touching the caller's object. The copy shares everything
// else with it: it is only encoded, right away, never kept.
func shallowCopy(o api.StoreObject) api.StoreObject {
	switch v := o.(type) {
	case *api.Task:
		c := *v
		return &c
	case *api.Node:
		c := *v
		return &c
	case *api.Service:
		c := *v
		return &c
	case *api.Cluster:
		c := *v
		return &c
	case *api.Network:
		c := *v
		return &c
	case *api.Secret:
		c := *v
		return &c
	case *api.Config:
		c := *v
		return &c
	}
	return o.CopyStoreObject()
}

// record encodes an action onto buf (as one element of the transaction's
// repeated actions field) and points the object's overlay entry at it.
func (t *writeTx) record(kind api.StoreActionKind, obj api.StoreObject) error {
	a := api.StoreAction{Kind: kind, Target: api.NewObject(obj)}
	n := a.Size()
	start := len(t.buf)
	t.buf = append(t.buf, actionsTag)
	t.buf = appendVarint(t.buf, uint64(n))
	off := len(t.buf)
	t.buf = slices.Grow(t.buf, n)[:off+n]
	if _, err := a.MarshalToSizedBuffer(t.buf[off:]); err != nil {
		t.buf = t.buf[:start]
		return fmt.Errorf("encode store action on %s %s: %w", obj.Kind(), obj.GetID(), err)
	}
	t.setEntry(kind, obj, start, off, n)
	return nil
}

// actionsTag starts an element of StoreTransaction.actions (field 1, bytes).
const actionsTag = 1<<3 | 2

func appendVarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

// setEntry points obj's overlay entry at the action at buf[off:off+n],
// whose element starts at start, and records how to undo it.
func (t *writeTx) setEntry(kind api.StoreActionKind, obj api.StoreObject, start, off, n int) {
	k, id := obj.Kind(), obj.GetID()
	ov := t.overlay(k)
	prev, had := ov.entries[id]
	t.undo = append(t.undo, undoRec{kind: k, id: id, prev: prev, had: had, off: start})
	e := txEntry{off: off, n: n, removed: kind == api.StoreActionKindRemove}
	if !e.removed && uniqueNames[k] {
		if name := obj.GetName(); name != "" {
			e.name = strings.ToLower(name)
			if !had || prev.name != e.name {
				if ov.names == nil {
					ov.names = map[string][]string{}
				}
				ov.names[e.name] = append(ov.names[e.name], id)
			}
		}
	}
	ov.entries[id] = e
}

// rollback undoes the actions after the first mark ones.
func (t *writeTx) rollback(mark int) {
	if mark >= len(t.undo) {
		return
	}
	for i := len(t.undo) - 1; i >= mark; i-- {
		u := &t.undo[i]
		ov := t.kinds[u.kind]
		if u.had {
			ov.entries[u.id] = u.prev
		} else {
			delete(ov.entries, u.id)
		}
	}
	t.buf = t.buf[:t.undo[mark].off]
	t.undo = t.undo[:mark]
}
