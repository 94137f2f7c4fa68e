package containerd

import (
	"path/filepath"

	"github.com/containerd/containerd/v2/pkg/cio"
)

// logIO sends the container's stdout and stderr to its log directory.
func (e *Executor) logIO(dir string) cio.Creator {
	return cio.LogFile(filepath.Join(dir, "container.log"))
}
