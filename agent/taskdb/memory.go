package taskdb

import (
	"fmt"
	"slices"
	"sync"

	"github.com/flotilla/flotilla/api"
)

// Memory is a Store that keeps nothing across restarts, for tests and
// simulated agents. Its methods are safe for concurrent use; it stores and
// returns copies.
type Memory struct {
	mu    sync.Mutex
	tasks map[string]*memTask
}

type memTask struct {
	task   *api.Task
	status *api.TaskStatus
}

// NewMemory returns an empty Memory.
func NewMemory() *Memory { return &Memory{tasks: map[string]*memTask{}} }

// Put records tasks.
func (m *Memory) Put(tasks ...*api.Task) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, t := range tasks {
		if t.ID == "" {
			return fmt.Errorf("task DB: a task without an ID")
		}
	}
	for _, t := range tasks {
		if e := m.tasks[t.ID]; e != nil {
			e.task = t.Copy()
		} else {
			m.tasks[t.ID] = &memTask{task: t.Copy()}
		}
	}
	return nil
}

// Get returns the task id with its stored status.
func (m *Memory) Get(id string) (*api.Task, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.tasks[id]
	if e == nil {
		return nil, fmt.Errorf("task %s: %w", id, ErrNotFound)
	}
	return e.get(), nil
}

func (e *memTask) get() *api.Task {
	t := e.task.Copy()
	if e.status != nil {
		t.Status = *e.status.Copy()
	}
	return t
}

// Delete forgets tasks.
func (m *Memory) Delete(ids ...string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, id := range ids {
		delete(m.tasks, id)
	}
	return nil
}

// List returns every task with its stored status, ordered by ID.
func (m *Memory) List() ([]*api.Task, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var tasks []*api.Task
	for _, id := range m.ids() {
		tasks = append(tasks, m.tasks[id].get())
	}
	return tasks, nil
}

// PutStatus records a task's status.
func (m *Memory) PutStatus(id string, s *api.TaskStatus) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.tasks[id]
	if e == nil {
		return fmt.Errorf("status of task %s: %w", id, ErrNotFound)
	}
	e.status = s.Copy()
	return nil
}

// WalkStatuses calls fn with each stored status, ordered by task ID. fn
// must not call m.
func (m *Memory) WalkStatuses(fn func(id string, s *api.TaskStatus) error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, id := range m.ids() {
		if s := m.tasks[id].status; s != nil {
			if err := fn(id, s.Copy()); err != nil {
				return err
			}
		}
	}
	return nil
}

// Close does nothing.
func (m *Memory) Close() error { return nil }

func (m *Memory) ids() []string {
	ids := make([]string, 0, len(m.tasks))
	for id := range m.tasks {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}
