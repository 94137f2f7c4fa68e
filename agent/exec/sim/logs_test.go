package sim

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/flotilla/flotilla/agent/exec"
	"github.com/flotilla/flotilla/api"
)

func logTask(id string, env ...string) *api.Task {
	return &api.Task{
		ID:                 id,
		Slot:               2,
		ServiceAnnotations: api.Annotations{Name: "web"},
		Spec: api.TaskSpec{Container: &api.ContainerSpec{
			Command: []string{"sleep"}, Args: []string{"1d"}, Env: env,
		}},
	}
}

// collect runs Logs and returns "stream:data" per line.
func collect(t *testing.T, ctx context.Context, c exec.Controller, opts exec.LogsOptions) ([]string, error) {
	t.Helper()
	var out []string
	err := c.(exec.ControllerLogs).Logs(ctx, opts, func(e exec.LogEntry) error {
		if e.Time.IsZero() {
			t.Errorf("line %q has no time", e.Data)
		}
		out = append(out, e.Stream.String()+":"+string(e.Data))
		return nil
	})
	return out, err
}

func TestSimTaskPrintsStartLineAndNumberedLines(t *testing.T) {
	e := New("n", nil)
	c, err := e.Controller(logTask("t1", "SIM_LOG=3", "SIM_LOG_STDERR=2"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// Not started: nothing yet.
	if got, err := collect(t, ctx, c, exec.LogsOptions{}); err != nil || len(got) != 0 {
		t.Fatalf("before start: %q, %v; want nothing", got, err)
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	all := []string{
		"stdout:sim task t1 (web.2) started: sleep 1d",
		"stdout:line 1 of 3", "stdout:line 2 of 3", "stdout:line 3 of 3",
		"stderr:error line 1 of 2", "stderr:error line 2 of 2",
	}
	for _, tc := range []struct {
		name string
		opts exec.LogsOptions
		want []string
	}{
		{"all", exec.LogsOptions{}, all},
		{"tail 2", exec.LogsOptions{Tail: 2}, all[4:]},
		{"tail more than there is", exec.LogsOptions{Tail: 100}, all},
		{"no history", exec.LogsOptions{Tail: -1}, nil},
		{"stdout only", exec.LogsOptions{Streams: []exec.LogStream{exec.Stdout}}, all[:4]},
		{"stderr tail 1", exec.LogsOptions{Streams: []exec.LogStream{exec.Stderr}, Tail: 1}, all[5:]},
		{"since the future", exec.LogsOptions{Since: time.Now().Add(time.Hour)}, nil},
	} {
		got, err := collect(t, ctx, c, tc.opts)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
	// Another controller of the same task (an agent restart) sees the
	// same output and does not print it again.
	c2, _ := e.Controller(logTask("t1", "SIM_LOG=3", "SIM_LOG_STDERR=2"))
	_ = c2.Start(ctx)
	if got, _ := collect(t, ctx, c2, exec.LogsOptions{}); !slices.Equal(got, all) {
		t.Errorf("second controller: %q, want %q", got, all)
	}
	// Removal forgets the output.
	_ = c.Shutdown(ctx)
	_ = c.Remove(ctx)
	c3, _ := e.Controller(logTask("t1"))
	if got, _ := collect(t, ctx, c3, exec.LogsOptions{}); len(got) != 0 {
		t.Errorf("after removal: %q, want nothing", got)
	}
}

func TestSimLogsFollowSeesNewLinesUntilExit(t *testing.T) {
	e := New("n", nil)
	c, err := e.Controller(logTask("t1", "SIM_LOG=1000", "SIM_LOG_INTERVAL=1ms"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var (
		mu  sync.Mutex
		got []string
	)
	done := make(chan error, 1)
	go func() {
		done <- c.(exec.ControllerLogs).Logs(ctx, exec.LogsOptions{Follow: true}, func(e exec.LogEntry) error {
			mu.Lock()
			got = append(got, string(e.Data))
			mu.Unlock()
			return nil
		})
	}()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// Lines arrive while the task runs...
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n >= 20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("follower saw %d lines, want 20 as they are printed", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// ... and the follower returns once the task stops.
	_ = c.Shutdown(ctx)
	if err := <-done; err != nil {
		t.Fatalf("follow ended with %v, want nil at the task's exit", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if got[0] != "sim task t1 (web.2) started: sleep 1d" {
		t.Errorf("first line %q", got[0])
	}
	for i, l := range got[1:] {
		if want := fmt.Sprintf("line %d of 1000", i+1); l != want {
			t.Fatalf("line %d: %q, want %q (in order, none lost)", i+1, l, want)
		}
	}
}

func TestSimLogsFollowEndsWithContextAndPublishError(t *testing.T) {
	e := New("n", nil)
	c, _ := e.Controller(logTask("t1", "SIM_LOG=5"))
	_ = c.Start(context.Background())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := collect(t, ctx, c, exec.LogsOptions{Follow: true}); !errors.Is(err, context.Canceled) {
		t.Errorf("follow after cancel: %v, want context.Canceled", err)
	}
	stop := errors.New("client gone")
	n := 0
	err := c.(exec.ControllerLogs).Logs(context.Background(), exec.LogsOptions{Follow: true}, func(exec.LogEntry) error {
		n++
		if n == 2 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || n != 2 {
		t.Errorf("publish error: Logs returned %v after %d lines, want the publish error after 2", err, n)
	}
}

func TestSimLogsKeepAtMostMaxLines(t *testing.T) {
	e := New("n", nil)
	c, _ := e.Controller(logTask("t1", fmt.Sprintf("SIM_LOG=%d", MaxLogLines+500)))
	_ = c.Start(context.Background())
	got, _ := collect(t, context.Background(), c, exec.LogsOptions{})
	if len(got) != MaxLogLines {
		t.Fatalf("%d lines kept, want %d", len(got), MaxLogLines)
	}
	if want := fmt.Sprintf("stdout:line %d of %d", 501, MaxLogLines+500); got[0] != want {
		t.Errorf("oldest kept %q, want %q", got[0], want)
	}
}

func TestSimExitingTaskLogsThenFollowEnds(t *testing.T) {
	e := New("n", nil)
	c, _ := e.Controller(logTask("t1", "SIM_EXIT=0", "SIM_LOG=2"))
	_ = c.Start(context.Background())
	got, err := collect(t, context.Background(), c, exec.LogsOptions{Follow: true})
	if err != nil || len(got) != 3 {
		t.Errorf("follow of an exited task: %q, %v; want its 3 lines and nil", got, err)
	}
}

func TestSimBadLogSettingsRejectTheTask(t *testing.T) {
	e := New("n", nil)
	for _, env := range []string{"SIM_LOG=x", "SIM_LOG=-1", "SIM_LOG_STDERR=2000000", "SIM_LOG_INTERVAL=soon"} {
		if _, err := e.Controller(logTask("t1", env)); err == nil {
			t.Errorf("%s: controller made, want an error", env)
		}
	}
}
