package taskdb

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/flotilla/flotilla/api"
)

func tk(id string, state api.TaskState) *api.Task {
	return &api.Task{
		ID:           id,
		DesiredState: api.TaskStateRunning,
		Spec:         api.TaskSpec{Container: &api.ContainerSpec{Image: "busybox"}},
		Status:       api.TaskStatus{State: state, Message: "from the manager"},
	}
}

func openDB(t *testing.T, path string) *DB {
	t.Helper()
	db, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	return db
}

// stores runs f against each Store implementation.
func stores(t *testing.T, f func(t *testing.T, s Store)) {
	t.Run("bolt", func(t *testing.T) {
		db := openDB(t, filepath.Join(t.TempDir(), "worker", "tasks.db"))
		defer db.Close()
		f(t, db)
	})
	t.Run("memory", func(t *testing.T) { f(t, NewMemory()) })
}

func ids(tasks []*api.Task) []string {
	var out []string
	for _, t := range tasks {
		out = append(out, t.ID)
	}
	return out
}

func TestStoreKeepsTasksAndTheirStatusApart(t *testing.T) {
	stores(t, func(t *testing.T, s Store) {
		if err := s.Put(tk("b", api.TaskStateAssigned), tk("a", api.TaskStateAssigned)); err != nil {
			t.Fatal(err)
		}
		// No status yet: the manager's.
		got, err := s.Get("a")
		if err != nil || got.Status.Message != "from the manager" || got.Spec.Container.GetImage() != "busybox" {
			t.Fatalf("Get(a) = %v, %v; want the task as put", got, err)
		}
		if err := s.PutStatus("a", &api.TaskStatus{State: api.TaskStateRunning, Message: "started"}); err != nil {
			t.Fatal(err)
		}
		// A new record from the manager keeps the agent's status.
		up := tk("a", api.TaskStateAssigned)
		up.DesiredState = api.TaskStateShutdown
		if err := s.Put(up); err != nil {
			t.Fatal(err)
		}
		got, _ = s.Get("a")
		if got.Status.State != api.TaskStateRunning || got.DesiredState != api.TaskStateShutdown {
			t.Errorf("Get(a) = status %s desired %s, want the stored RUNNING and the new desired SHUTDOWN", got.Status.State, got.DesiredState)
		}

		all, err := s.List()
		if err != nil || !slices.Equal(ids(all), []string{"a", "b"}) {
			t.Errorf("List = %v, %v; want a, b", ids(all), err)
		}
		var walked []string
		err = s.WalkStatuses(func(id string, st *api.TaskStatus) error {
			walked = append(walked, fmt.Sprintf("%s=%s", id, st.State))
			return nil
		})
		if err != nil || !slices.Equal(walked, []string{"a=RUNNING"}) {
			t.Errorf("WalkStatuses = %v, %v; want only a's status", walked, err)
		}
		stop := errors.New("stop")
		if err := s.WalkStatuses(func(string, *api.TaskStatus) error { return stop }); !errors.Is(err, stop) {
			t.Errorf("WalkStatuses = %v, want fn's error", err)
		}

		if err := s.Delete("a", "unknown"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Get("a"); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get after Delete = %v, want ErrNotFound", err)
		}
		if err := s.PutStatus("a", &api.TaskStatus{State: api.TaskStateShutdown}); !errors.Is(err, ErrNotFound) {
			t.Errorf("PutStatus of a deleted task = %v, want ErrNotFound", err)
		}
		if all, _ := s.List(); !slices.Equal(ids(all), []string{"b"}) {
			t.Errorf("List after Delete = %v, want b", ids(all))
		}
		if err := s.Put(&api.Task{}); err == nil {
			t.Error("Put of a task without an ID succeeded")
		}
	})
}

func TestStoreReturnsCopies(t *testing.T) {
	stores(t, func(t *testing.T, s Store) {
		in := tk("a", api.TaskStateAssigned)
		st := &api.TaskStatus{State: api.TaskStateRunning}
		s.Put(in)
		s.PutStatus("a", st)
		in.DesiredState, st.State = api.TaskStateRemove, api.TaskStateFailed
		got, _ := s.Get("a")
		got.Spec.Container.Image = "changed"
		again, _ := s.Get("a")
		if again.DesiredState != api.TaskStateRunning || again.Status.State != api.TaskStateRunning || again.Spec.Container.Image != "busybox" {
			t.Errorf("stored task changed through the caller's pointers: %v", again)
		}
	})
}

func TestStoreTakesConcurrentStatuses(t *testing.T) {
	stores(t, func(t *testing.T, s Store) {
		const n = 200
		var tasks []*api.Task
		for i := range n {
			tasks = append(tasks, tk(fmt.Sprintf("t%03d", i), api.TaskStateAssigned))
		}
		if err := s.Put(tasks...); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for _, task := range tasks {
			wg.Go(func() {
				for _, state := range []api.TaskState{api.TaskStateAccepted, api.TaskStatePreparing, api.TaskStateRunning} {
					if err := s.PutStatus(task.ID, &api.TaskStatus{State: state}); err != nil {
						t.Error(err)
					}
				}
			})
		}
		wg.Wait()
		running := 0
		s.WalkStatuses(func(_ string, st *api.TaskStatus) error {
			if st.State == api.TaskStateRunning {
				running++
			}
			return nil
		})
		if running != n {
			t.Errorf("%d tasks stored RUNNING, want %d", running, n)
		}
	})
}

func TestDBReopenKeepsTasksAndStatuses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "worker", "tasks.db")
	db := openDB(t, path)
	db.Put(tk("a", api.TaskStateAssigned), tk("b", api.TaskStateAssigned), tk("c", api.TaskStateAssigned))
	db.PutStatus("a", &api.TaskStatus{State: api.TaskStateRunning, ContainerStatus: &api.ContainerStatus{ContainerID: "c-a"}})
	db.Delete("c")
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	db = openDB(t, path)
	defer db.Close()
	all, err := db.List()
	if err != nil || !slices.Equal(ids(all), []string{"a", "b"}) {
		t.Fatalf("List after reopen = %v, %v; want a, b", ids(all), err)
	}
	if st := all[0].Status; st.State != api.TaskStateRunning || st.ContainerStatus.GetContainerID() != "c-a" {
		t.Errorf("a's status after reopen = %v, want RUNNING in c-a", st)
	}
	if all[1].Status.State != api.TaskStateAssigned {
		t.Errorf("b's status after reopen = %v, want the manager's ASSIGNED", all[1].Status)
	}
}

func TestDBIsOpenedByOneProcessAtATime(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tasks.db")
	db := openDB(t, path)
	defer db.Close()
	if _, err := Open(path); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second Open = %v, want the DB reported in use", err)
	}
}

func TestDBRefusesAnUnknownLayout(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tasks.db")
	db := openDB(t, path)
	db.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyVersion, []byte("2")) })
	db.Close()
	if _, err := Open(path); err == nil || !strings.Contains(err.Error(), "layout version") {
		t.Errorf("Open of a version 2 DB = %v, want a refusal", err)
	}
}
