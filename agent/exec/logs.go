package exec

import (
	"context"
	"errors"
	"time"
)

// ControllerLogs is an optional Controller capability: the task's logs, as
// the node keeps them (the containerd executor: its rotated log files; the
// sim executor: lines in memory).
//
// Logs calls publish with the lines opts selects, oldest first: first the
// last opts.Tail lines of what the task logged so far (across rotated files),
// then, with opts.Follow, each line as it is logged, until the task has
// exited and everything it logged has been published (then nil) or ctx ends
// (then ctx's error). Without Follow it returns once the lines logged so far
// are published. An error from publish ends Logs with that error.
//
// The agent calls Logs from its own goroutines, possibly several at once for
// one task and concurrently with the Controller's other methods, but never
// after Close: the controller must allow that. A controller of a task that
// has not started yet (or whose logs are gone) publishes nothing; with
// Follow it waits for the task to start.
type ControllerLogs interface {
	Logs(ctx context.Context, opts LogsOptions, publish func(LogEntry) error) error
}

// LogsOptions select the lines of a task's log.
type LogsOptions struct {
	// Follow keeps Logs running: lines logged later are published as they
	// come, until the task exits.
	Follow bool
	// Tail is how much of what the task logged before the call to publish:
	// 0 all of it, N > 0 its last N lines, a negative value none.
	Tail int
	// Since, if not zero, leaves out lines logged before it.
	Since time.Time
	// Streams are the streams to publish; none means all.
	Streams []LogStream
}

// Wants reports whether opts select lines of stream s.
func (o LogsOptions) Wants(s LogStream) bool {
	if len(o.Streams) == 0 {
		return true
	}
	for _, w := range o.Streams {
		if w == s {
			return true
		}
	}
	return false
}

// Keeps reports whether a line of stream s logged at t passes the options'
// stream and Since filters (Tail is counted by the caller, over the lines
// that pass).
func (o LogsOptions) Keeps(s LogStream, t time.Time) bool {
	return o.Wants(s) && (o.Since.IsZero() || !t.Before(o.Since))
}

// LogStream is the output a log line came from.
type LogStream int

const (
	// Stdout is the task's standard output.
	Stdout LogStream = 1
	// Stderr is the task's standard error.
	Stderr LogStream = 2
)

func (s LogStream) String() string {
	switch s {
	case Stdout:
		return "stdout"
	case Stderr:
		return "stderr"
	}
	return "unknown"
}

// LogEntry is one line of a task's output.
type LogEntry struct {
	// Time is when the task wrote the line.
	Time   time.Time
	Stream LogStream
	// Data is the line without its newline; a line longer than the
	// executor keeps in one piece is published in several entries.
	Data []byte
}

// ErrNoLogs is returned (wrapped) by Logs when the executor keeps no logs
// for the task at all (as opposed to an empty log).
var ErrNoLogs = errors.New("no logs are kept for this task")
