package containerd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/flotilla/flotilla/agent/exec"
	"github.com/flotilla/flotilla/agent/exec/containerd/logging"
)

var _ exec.ControllerLogs = (*Controller)(nil)

// logDirWait is how often Logs with Follow looks for the log dir of a task
// that has not started yet.
const logDirWait = 100 * time.Millisecond

// Logs publishes the task's stdout and stderr from the files its logger
// writes (exec.ControllerLogs). With Follow it returns once the logger has
// closed its files (the container's task was deleted) or ctx ends.
//
// With a stream filter and a Tail, the tail is counted over the lines of the
// wanted streams, in a first pass over what is logged so far; following
// then starts after that pass, so a line logged between the two is missed.
func (c *Controller) Logs(ctx context.Context, opts exec.LogsOptions, publish func(exec.LogEntry) error) error {
	dir := c.e.LogDir(c.id())
	for {
		if _, err := os.Stat(dir); err == nil {
			break
		} else if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("logs of task %s: %w", c.id(), err)
		}
		if !opts.Follow {
			return nil // not started: nothing logged yet
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(logDirWait):
		}
	}
	emit := func(e logging.Entry) error {
		s := exec.LogStream(e.Stream)
		if !opts.Keeps(s, e.Time) {
			return nil
		}
		return publish(exec.LogEntry{Time: e.Time, Stream: s, Data: e.Line})
	}
	read := logging.ReadOptions{Tail: readTail(opts.Tail), Since: opts.Since, Follow: opts.Follow}
	if len(opts.Streams) == 0 || opts.Tail <= 0 {
		return logging.Read(ctx, dir, read, emit)
	}
	// The tail of the wanted streams only: keep the last Tail of them.
	ring := make([]logging.Entry, 0, opts.Tail)
	err := logging.Read(ctx, dir, logging.ReadOptions{Tail: logging.TailAll, Since: opts.Since}, func(e logging.Entry) error {
		if !opts.Keeps(exec.LogStream(e.Stream), e.Time) {
			return nil
		}
		if len(ring) == opts.Tail {
			copy(ring, ring[1:])
			ring = ring[:len(ring)-1]
		}
		e.Line = append([]byte(nil), e.Line...)
		ring = append(ring, e)
		return nil
	})
	if err != nil {
		return err
	}
	for _, e := range ring {
		if err := emit(e); err != nil {
			return err
		}
	}
	if !opts.Follow {
		return nil
	}
	read.Tail = 0 // only what comes next
	return logging.Read(ctx, dir, read, emit)
}

// readTail converts exec's Tail (0 all, N last N, negative none) to
// logging's (TailAll, N, 0 none).
func readTail(tail int) int {
	switch {
	case tail == 0:
		return logging.TailAll
	case tail < 0:
		return 0
	}
	return tail
}
