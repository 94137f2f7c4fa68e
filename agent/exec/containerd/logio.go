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
func (e *Executor) logIO(dir string) cio.Creator {
	return cio.BinaryIO(e.cfg.LogBinary, logging.ShimArgs(dir, e.cfg.Logger))
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
