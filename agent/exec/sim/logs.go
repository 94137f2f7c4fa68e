package sim

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/flotilla/flotilla/agent/exec"
	"github.com/flotilla/flotilla/api"
)

// Simulated output. A simulated task "prints", when it starts, one line on
// stdout naming itself and its command:
//
//	sim task <task ID> (<service>.<slot>) started: <command> <args>
//
// then, if its container spec's environment (or labels) has
//
//	SIM_LOG=N           N numbered lines on stdout: "line 1 of N" ...
//	SIM_LOG_STDERR=M    M numbered lines on stderr: "error line 1 of M" ...
//	SIM_LOG_INTERVAL=D  a Go duration: one line every D (stdout ones first)
//	                    while the task runs, instead of all at once
//
// The lines are kept in memory per task, at most MaxLogLines (the oldest go
// first), until the task is removed. A follower sees lines as they are
// printed and stops when the task has exited.
const (
	LogEnv         = "SIM_LOG"
	LogStderrEnv   = "SIM_LOG_STDERR"
	LogIntervalEnv = "SIM_LOG_INTERVAL"
	// MaxLogLines is how many lines a simulated task keeps.
	MaxLogLines = 10000
	// maxSimLines bounds SIM_LOG and SIM_LOG_STDERR.
	maxSimLines = 1_000_000
)

// logPlan is what a task prints, from its spec.
type logPlan struct {
	start    string
	stdout   int
	stderr   int
	interval time.Duration
}

func planLogs(t *api.Task) (logPlan, error) {
	c := t.Spec.Container
	var cmd []string
	if c != nil {
		cmd = append(append(cmd, c.Command...), c.Args...)
	}
	p := logPlan{start: fmt.Sprintf("sim task %s (%s.%d) started: %s",
		t.ID, t.ServiceAnnotations.Name, t.Slot, strings.Join(cmd, " "))}
	for _, n := range []struct {
		env string
		out *int
	}{{LogEnv, &p.stdout}, {LogStderrEnv, &p.stderr}} {
		v, ok := envOrLabel(c, n.env)
		if !ok {
			continue
		}
		i, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || i < 0 || i > maxSimLines {
			return p, fmt.Errorf("%s=%q: want a number of lines from 0 to %d", n.env, v, maxSimLines)
		}
		*n.out = i
	}
	if v, ok := envOrLabel(c, LogIntervalEnv); ok {
		d, err := time.ParseDuration(strings.TrimSpace(v))
		if err != nil || d < 0 {
			return p, fmt.Errorf("%s=%q: want a duration such as 100ms", LogIntervalEnv, v)
		}
		p.interval = d
	}
	return p, nil
}

// taskLog is a simulated task's output: a bounded list of lines, numbered
// from 0 since the task's first line, and whether the task has exited.
type taskLog struct {
	mu      sync.Mutex
	entries []exec.LogEntry // lines first..first+len-1
	first   uint64
	changed chan struct{} // closed (and replaced) when a line comes or the task exits
	started bool
	exited  bool
}

func newTaskLog() *taskLog { return &taskLog{changed: make(chan struct{})} }

func (l *taskLog) notifyLocked() {
	close(l.changed)
	l.changed = make(chan struct{})
}

func (l *taskLog) print(s exec.LogStream, line string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.exited {
		return // a line racing with the stop: the task is gone
	}
	l.entries = append(l.entries, exec.LogEntry{Time: time.Now(), Stream: s, Data: []byte(line)})
	if over := len(l.entries) - MaxLogLines; over > 0 {
		// Drop the oldest; copy now and then so the array does not grow.
		l.entries = l.entries[over:]
		l.first += uint64(over)
		if cap(l.entries) > 2*MaxLogLines {
			l.entries = append([]exec.LogEntry(nil), l.entries...)
		}
	}
	l.notifyLocked()
}

// exit marks the task exited: followers stop once they have its last line.
func (l *taskLog) exit() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.exited {
		l.exited = true
		l.notifyLocked()
	}
}

// begin reports whether the task starts for the first time (it prints then).
func (l *taskLog) begin() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	first := !l.started
	l.started = true
	return first
}

// run prints the plan: the start line and the numbered lines, at once or one
// per interval until stopped.
func (l *taskLog) run(p logPlan, stopped <-chan struct{}) {
	l.print(exec.Stdout, p.start)
	var tick *time.Ticker
	if p.interval > 0 {
		tick = time.NewTicker(p.interval)
		defer tick.Stop()
	}
	lines := func(s exec.LogStream, n int, format string) bool {
		for i := 1; i <= n; i++ {
			if tick != nil {
				select {
				case <-tick.C:
				case <-stopped:
					return false
				}
			}
			l.print(s, fmt.Sprintf(format, i, n))
		}
		return true
	}
	if lines(exec.Stdout, p.stdout, "line %d of %d") {
		lines(exec.Stderr, p.stderr, "error line %d of %d")
	}
}

// Logs publishes the task's simulated output (exec.ControllerLogs).
func (c *Controller) Logs(ctx context.Context, opts exec.LogsOptions, publish func(exec.LogEntry) error) error {
	l := c.log
	l.mu.Lock()
	var backlog []exec.LogEntry
	if opts.Tail >= 0 {
		for _, e := range l.entries {
			if opts.Keeps(e.Stream, e.Time) {
				backlog = append(backlog, e)
			}
		}
		if opts.Tail > 0 && len(backlog) > opts.Tail {
			backlog = backlog[len(backlog)-opts.Tail:]
		}
	}
	next := l.first + uint64(len(l.entries))
	l.mu.Unlock()
	for _, e := range backlog {
		if err := publish(e); err != nil {
			return err
		}
	}
	if !opts.Follow {
		return nil
	}
	for {
		l.mu.Lock()
		if next < l.first {
			next = l.first // lines dropped before this reader got them
		}
		fresh := l.entries[next-l.first:]
		next += uint64(len(fresh))
		changed, exited := l.changed, l.exited
		l.mu.Unlock()
		for _, e := range fresh {
			if !opts.Keeps(e.Stream, e.Time) {
				continue
			}
			if err := publish(e); err != nil {
				return err
			}
		}
		if exited && len(fresh) == 0 {
			return nil
		}
		if len(fresh) > 0 {
			continue
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

var _ exec.ControllerLogs = (*Controller)(nil)
