package store

import (
	"fmt"
	"strings"

	memdb "github.com/hashicorp/go-memdb"

	"github.com/flotilla/flotilla/api"
)

// By selects objects for Find.
type By interface {
	// lookup returns the memdb index, its arguments and whether they are a prefix.
	lookup() (index string, args []interface{}, prefix bool)
}

type by struct {
	index  string
	args   []interface{}
	prefix bool
}

func (b by) lookup() (string, []interface{}, bool) { return b.index, b.args, b.prefix }

// All selects every object of the kind.
func All() By { return by{index: indexID, args: []interface{}{""}, prefix: true} }

// ByName selects objects whose name equals name, ignoring case.
func ByName(name string) By { return by{index: indexName, args: []interface{}{name}} }

// ByNamePrefix selects objects whose name starts with prefix, ignoring case.
func ByNamePrefix(prefix string) By {
	return by{index: indexName, args: []interface{}{prefix}, prefix: true}
}

// ByIDPrefix selects objects whose ID starts with prefix.
func ByIDPrefix(prefix string) By {
	return by{index: indexID, args: []interface{}{prefix}, prefix: true}
}

// ByServiceID selects the tasks of a service.
func ByServiceID(id string) By { return by{index: indexServiceID, args: []interface{}{id}} }

// ByNodeID selects the tasks assigned to a node.
func ByNodeID(id string) By { return by{index: indexNodeID, args: []interface{}{id}} }

// BySlot selects the tasks of one slot of a replicated service.
func BySlot(serviceID string, slot uint64) By {
	return by{index: indexSlot, args: []interface{}{serviceID, slot}}
}

// ByRole selects nodes by role.
func ByRole(r api.NodeRole) By { return by{index: indexRole, args: []interface{}{"", uint64(r)}} }

func find(txn *memdb.Txn, kind string, b By) ([]api.StoreObject, error) {
	index, args, prefix := b.lookup()
	if prefix {
		index += "_prefix"
	}
	it, err := txn.Get(kind, index, args...)
	if err != nil {
		return nil, fmt.Errorf("find %s by %s: %w", kind, strings.TrimSuffix(index, "_prefix"), err)
	}
	var out []api.StoreObject
	for o := it.Next(); o != nil; o = it.Next() {
		out = append(out, o.(api.StoreObject).CopyStoreObject())
	}
	return out, nil
}

func get(txn *memdb.Txn, kind, id string) api.StoreObject {
	o, err := txn.First(kind, indexID, id)
	if err != nil || o == nil {
		return nil
	}
	return o.(api.StoreObject)
}

// Get returns a copy of the object of type T with the given ID, or nil.
func Get[T api.StoreObject](tx ReadTx, id string) T {
	var zero T
	o := tx.Get(zero.Kind(), id)
	if o == nil {
		return zero
	}
	return o.(T)
}

// Find returns copies of the objects of type T that b selects, in ID order.
func Find[T api.StoreObject](tx ReadTx, b By) ([]T, error) {
	var zero T
	objs, err := tx.Find(zero.Kind(), b)
	if err != nil {
		return nil, err
	}
	out := make([]T, len(objs))
	for i, o := range objs {
		out[i] = o.(T)
	}
	return out, nil
}

// Exists reports whether an object of a kind with the ID exists, without
// copying it (for hot paths such as authorizing every heartbeat).
func Exists(tx ReadTx, kind, id string) bool { return tx.exists(kind, id) }

// Count returns the number of objects of a kind b selects, without copying them.
func Count(tx ReadTx, kind string, b By) (int, error) {
	return tx.count(kind, b)
}

func count(txn *memdb.Txn, kind string, b By) (int, error) {
	n := 0
	err := each(txn, kind, b, func(api.StoreObject) bool { n++; return true })
	return n, err
}

func each(txn *memdb.Txn, kind string, b By, fn func(api.StoreObject) bool) error {
	index, args, prefix := b.lookup()
	if prefix {
		index += "_prefix"
	}
	it, err := txn.Get(kind, index, args...)
	if err != nil {
		return fmt.Errorf("find %s by %s: %w", kind, strings.TrimSuffix(index, "_prefix"), err)
	}
	for o := it.Next(); o != nil; o = it.Next() {
		if !fn(o.(api.StoreObject)) {
			return nil
		}
	}
	return nil
}

// Each calls fn with each object of type T that b selects, in ID order,
// until fn returns false. Unlike Find it does not copy: fn sees the store's
// own object and must neither modify it nor keep it past the transaction.
// It is for hot paths that only read a few fields of many objects (counting
// a service's tasks by state).
func Each[T api.StoreObject](tx ReadTx, b By, fn func(T) bool) error {
	var zero T
	return tx.each(zero.Kind(), b, func(o api.StoreObject) bool { return fn(o.(T)) })
}
