package containerd

import (
	"os"
	"time"

	"github.com/containerd/containerd/v2/pkg/cio"

	"github.com/flotilla/flotilla/agent/exec/containerd/logging"
)

// loggerCloseWait bounds how long Remove waits for a task's logger to finish
// (it does once the task is deleted) before removing its files.
const loggerCloseWait = 3 * time.Second

// logIO sends the container's stdout and stderr to the logger
// (Config.LogBinary, acting as agent/exec/containerd/logging's logger),
// which writes them into dir.
// With tty, the process gets a terminal whose output goes to the logger
// (as stdout).
func (e *Executor) logIO(dir string, tty bool) cio.Creator {
	create := cio.BinaryIO(e.cfg.LogBinary, logging.ShimArgs(dir, e.cfg.Logger))
	if !tty {
		return create
	}
	return func(id string) (cio.IO, error) {
		io, err := create(id)
		if err != nil {
			return nil, err
		}
		return terminalIO{io}, nil
	}
}

// terminalIO asks the shim for a terminal (the spec's process has one).
type terminalIO struct{ cio.IO }

func (t terminalIO) Config() cio.Config {
	c := t.IO.Config()
	c.Terminal = true
	return c
}

// waitLoggerClosed waits, up to loggerCloseWait, for the logger of dir to
// finish, so that removing dir does not race its last writes. A dir never
// written is not waited for.
func waitLoggerClosed(dir string) {
	if _, err := os.Stat(dir); err != nil {
		return
	}
	deadline := time.Now().Add(loggerCloseWait)
	for !logging.Closed(dir) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
}
