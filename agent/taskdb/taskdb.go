// Package taskdb keeps the tasks assigned to a node and the last status the
// agent saw for each, so that a restarted agent knows what it runs before
// any manager answers.
//
// DB keeps them in a bbolt file (a node's is <state-dir>/worker/tasks.db);
// every write is one fsync'd transaction, and PutStatus calls made at the
// same time by many task goroutines share one (bbolt's Batch). Memory keeps
// them in memory, for tests and simulated agents.
//
// A task's record (what the dispatcher sent: spec, desired state) and its
// status (what the agent observed) are stored apart, each with one writer:
// the agent's worker writes records, the task's own goroutine its status.
// Get and List return the record with the stored status in Status, or the
// record's own status (the manager's view) while the agent recorded none.
package taskdb

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/flotilla/flotilla/api"
)

// ErrNotFound is wrapped by errors about tasks the DB does not hold.
var ErrNotFound = errors.New("task not in the task DB")

// Store is what the agent keeps its tasks in: DB or Memory.
type Store interface {
	// Put records tasks (spec, desired state...), in one write. A stored
	// status is kept.
	Put(tasks ...*api.Task) error
	// Get returns a task with its stored status, or an error wrapping
	// ErrNotFound.
	Get(id string) (*api.Task, error)
	// Delete forgets tasks and their statuses, in one write; unknown IDs are
	// skipped.
	Delete(ids ...string) error
	// List returns every task with its stored status, ordered by ID.
	List() ([]*api.Task, error)
	// PutStatus records a task's status; an error wrapping ErrNotFound if
	// the task is not stored (a status never brings a deleted task back).
	PutStatus(id string, s *api.TaskStatus) error
	// WalkStatuses calls fn with each stored status, ordered by task ID,
	// and stops at fn's first error, which it returns.
	WalkStatuses(fn func(id string, s *api.TaskStatus) error) error
	Close() error
}

// Bucket layout, version 1:
//
//	meta/version      = "1"
//	tasks/<id>/task   = api.Task (as sent by the dispatcher)
//	tasks/<id>/status = api.TaskStatus (as last observed by the agent)
var (
	bucketMeta  = []byte("meta")
	bucketTasks = []byte("tasks")
	keyVersion  = []byte("version")
	keyTask     = []byte("task")
	keyStatus   = []byte("status")
	layoutV1    = []byte("1")
)

// openTimeout bounds the wait for the DB's file lock.
const openTimeout = time.Second

var (
	_ Store = (*DB)(nil)
	_ Store = (*Memory)(nil)
)

// DB is a Store in a bbolt file. Its methods are safe for concurrent use.
type DB struct {
	path string
	db   *bolt.DB
}

// Open opens the task DB at path, creating it (and its directory, mode
// 0700) if needed. Only one process may have it open.
func Open(path string) (*DB, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("task DB: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: openTimeout})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("task DB %s is in use by another process (is another swarmd running on this state dir?)", path)
	}
	if err != nil {
		return nil, fmt.Errorf("open task DB %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if _, err := tx.CreateBucketIfNotExists(bucketTasks); err != nil {
			return err
		}
		switch v := meta.Get(keyVersion); {
		case v == nil:
			return meta.Put(keyVersion, layoutV1)
		case string(v) != string(layoutV1):
			return fmt.Errorf("layout version %q, this swarmd knows %q only", v, layoutV1)
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open task DB %s: %w", path, err)
	}
	return &DB{path: path, db: db}, nil
}

// Path is the DB's file.
func (d *DB) Path() string { return d.path }

// Close closes the DB.
func (d *DB) Close() error { return d.db.Close() }

// Put records tasks in one transaction.
func (d *DB) Put(tasks ...*api.Task) error {
	if len(tasks) == 0 {
		return nil
	}
	return d.db.Update(func(tx *bolt.Tx) error {
		all := tx.Bucket(bucketTasks)
		for _, t := range tasks {
			if t.ID == "" {
				return errors.New("task DB: a task without an ID")
			}
			data, err := t.Marshal()
			if err != nil {
				return fmt.Errorf("task DB: encode task %s: %w", t.ID, err)
			}
			b, err := all.CreateBucketIfNotExists([]byte(t.ID))
			if err != nil {
				return fmt.Errorf("task DB: task %s: %w", t.ID, err)
			}
			if err := b.Put(keyTask, data); err != nil {
				return fmt.Errorf("task DB: task %s: %w", t.ID, err)
			}
		}
		return nil
	})
}

// Get returns the task id with its stored status.
func (d *DB) Get(id string) (*api.Task, error) {
	var t *api.Task
	err := d.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketTasks).Bucket([]byte(id))
		if b == nil {
			return fmt.Errorf("task %s: %w", id, ErrNotFound)
		}
		var err error
		t, err = decodeTask(id, b)
		return err
	})
	return t, err
}

// Delete forgets tasks in one transaction.
func (d *DB) Delete(ids ...string) error {
	if len(ids) == 0 {
		return nil
	}
	return d.db.Update(func(tx *bolt.Tx) error {
		all := tx.Bucket(bucketTasks)
		for _, id := range ids {
			err := all.DeleteBucket([]byte(id))
			if err != nil && !errors.Is(err, bolterrors.ErrBucketNotFound) {
				return fmt.Errorf("task DB: delete task %s: %w", id, err)
			}
		}
		return nil
	})
}

// List returns every task with its stored status.
func (d *DB) List() ([]*api.Task, error) {
	var tasks []*api.Task
	err := d.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketTasks).ForEachBucket(func(k []byte) error {
			t, err := decodeTask(string(k), tx.Bucket(bucketTasks).Bucket(k))
			if err != nil {
				return err
			}
			tasks = append(tasks, t)
			return nil
		})
	})
	return tasks, err
}

// PutStatus records a task's status. Concurrent calls share a transaction.
func (d *DB) PutStatus(id string, s *api.TaskStatus) error {
	data, err := s.Marshal()
	if err != nil {
		return fmt.Errorf("task DB: encode status of task %s: %w", id, err)
	}
	// Batch may run the function more than once: it only puts.
	return d.db.Batch(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketTasks).Bucket([]byte(id))
		if b == nil {
			return fmt.Errorf("status of task %s: %w", id, ErrNotFound)
		}
		return b.Put(keyStatus, data)
	})
}

// WalkStatuses calls fn with each stored status.
func (d *DB) WalkStatuses(fn func(id string, s *api.TaskStatus) error) error {
	return d.db.View(func(tx *bolt.Tx) error {
		all := tx.Bucket(bucketTasks)
		return all.ForEachBucket(func(k []byte) error {
			data := all.Bucket(k).Get(keyStatus)
			if data == nil {
				return nil
			}
			s := &api.TaskStatus{}
			if err := s.Unmarshal(data); err != nil {
				return fmt.Errorf("task DB: decode status of task %s: %w", k, err)
			}
			return fn(string(k), s)
		})
	})
}

func decodeTask(id string, b *bolt.Bucket) (*api.Task, error) {
	data := b.Get(keyTask)
	if data == nil {
		// PutStatus never creates a bucket, so this is damage.
		return nil, fmt.Errorf("task DB: task %s has no record", id)
	}
	t := &api.Task{}
	if err := t.Unmarshal(data); err != nil {
		return nil, fmt.Errorf("task DB: decode task %s: %w", id, err)
	}
	if data := b.Get(keyStatus); data != nil {
		var s api.TaskStatus
		if err := s.Unmarshal(data); err != nil {
			return nil, fmt.Errorf("task DB: decode status of task %s: %w", id, err)
		}
		t.Status = s
	}
	return t, nil
}
