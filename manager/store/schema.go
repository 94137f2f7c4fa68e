package store

import (
	"encoding/binary"
	"fmt"
	"strings"

	memdb "github.com/hashicorp/go-memdb"

	"github.com/flotilla/flotilla/api"
)

// Index names. Every table has indexID and indexName; tasks and nodes have more.
const (
	indexID        = "id"
	indexName      = "name"
	indexServiceID = "service_id"
	indexNodeID    = "node_id"
	indexSlot      = "slot"
	indexRole      = "role"
)

// stringIndex indexes objects by a string the function extracts; the empty
// string means "not indexed". Lower-cased when fold is set, so lookups by name
// ignore case as Docker's do.
type stringIndex struct {
	fn   func(api.StoreObject) string
	fold bool
	// unique is set for the unique (ID) index: memdb appends the ID key to
	// the keys of the others, so their keys leave room for it.
	unique bool
}

func (x stringIndex) key(s string, room int) []byte {
	if x.fold {
		s = strings.ToLower(s)
	}
	// memdb needs a terminator so that prefix and exact matches differ.
	b := make([]byte, len(s)+1, len(s)+1+room)
	copy(b, s)
	return b
}

// idRoom is the room an object's key in a non-unique index needs for the ID
// key memdb appends to it.
func idRoom(obj api.StoreObject) int { return len(obj.GetID()) + 1 }

func (x stringIndex) FromObject(obj interface{}) (bool, []byte, error) {
	o := obj.(api.StoreObject)
	s := x.fn(o)
	if s == "" {
		return false, nil, nil
	}
	room := 0
	if !x.unique {
		room = idRoom(o)
	}
	return true, x.key(s, room), nil
}

func (x stringIndex) FromArgs(args ...interface{}) ([]byte, error) {
	if len(args) != 1 {
		return nil, fmt.Errorf("index takes one argument, got %d", len(args))
	}
	s, ok := args[0].(string)
	if !ok {
		return nil, fmt.Errorf("index argument must be a string, got %T", args[0])
	}
	return x.key(s, 0), nil
}

func (x stringIndex) PrefixFromArgs(args ...interface{}) ([]byte, error) {
	k, err := x.FromArgs(args...)
	if err != nil {
		return nil, err
	}
	return k[:len(k)-1], nil
}

// uintIndex indexes objects by an unsigned number (enums, slots); prefixed by
// an optional string so that e.g. slots are unique per service.
type uintIndex struct {
	fn func(api.StoreObject) (prefix string, n uint64, ok bool)
}

func uintKey(prefix string, n uint64, room int) []byte {
	b := make([]byte, len(prefix)+1, len(prefix)+1+8+room)
	copy(b, prefix)
	return binary.BigEndian.AppendUint64(b, n)
}

func (x uintIndex) FromObject(obj interface{}) (bool, []byte, error) {
	o := obj.(api.StoreObject)
	p, n, ok := x.fn(o)
	if !ok {
		return false, nil, nil
	}
	return true, uintKey(p, n, idRoom(o)), nil
}

func (x uintIndex) FromArgs(args ...interface{}) ([]byte, error) {
	if len(args) != 2 {
		return nil, fmt.Errorf("index takes a prefix and a number, got %d arguments", len(args))
	}
	p, ok1 := args[0].(string)
	n, ok2 := args[1].(uint64)
	if !ok1 || !ok2 {
		return nil, fmt.Errorf("index arguments must be (string, uint64), got (%T, %T)", args[0], args[1])
	}
	return uintKey(p, n, 0), nil
}

func idIndex() *memdb.IndexSchema {
	return &memdb.IndexSchema{Name: indexID, Unique: true, Indexer: stringIndex{fn: api.StoreObject.GetID, unique: true}}
}

func nameIndex() *memdb.IndexSchema {
	return &memdb.IndexSchema{Name: indexName, AllowMissing: true, Indexer: stringIndex{fn: api.StoreObject.GetName, fold: true}}
}

func taskField(fn func(*api.Task) string) stringIndex {
	return stringIndex{fn: func(o api.StoreObject) string { return fn(o.(*api.Task)) }}
}

// dbSchema is the schema of every store database; its indexers also serve
// write transactions' reads of their own writes.
var dbSchema = schema()

func schema() *memdb.DBSchema {
	tables := map[string]*memdb.TableSchema{}
	for _, kind := range api.Kinds {
		tables[kind] = &memdb.TableSchema{
			Name: kind,
			Indexes: map[string]*memdb.IndexSchema{
				indexID:   idIndex(),
				indexName: nameIndex(),
			},
		}
	}
	task := tables[api.KindTask].Indexes
	task[indexServiceID] = &memdb.IndexSchema{Name: indexServiceID, AllowMissing: true,
		Indexer: taskField(func(t *api.Task) string { return t.ServiceID })}
	task[indexNodeID] = &memdb.IndexSchema{Name: indexNodeID, AllowMissing: true,
		Indexer: taskField(func(t *api.Task) string { return t.NodeID })}
	task[indexSlot] = &memdb.IndexSchema{Name: indexSlot, AllowMissing: true,
		Indexer: uintIndex{fn: func(o api.StoreObject) (string, uint64, bool) {
			t := o.(*api.Task)
			return t.ServiceID, t.Slot, t.Slot != 0
		}}}
	tables[api.KindNode].Indexes[indexRole] = &memdb.IndexSchema{Name: indexRole,
		Indexer: uintIndex{fn: func(o api.StoreObject) (string, uint64, bool) {
			return "", uint64(o.(*api.Node).Role), true
		}}}
	return &memdb.DBSchema{Tables: tables}
}
