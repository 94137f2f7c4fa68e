//go:build !linux

package exec

import (
	"fmt"
	"runtime"
)

func totalMemory() (int64, error) {
	return 0, fmt.Errorf("not implemented on %s: Flotilla nodes run on Linux", runtime.GOOS)
}
