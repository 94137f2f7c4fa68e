package exec

import (
	"runtime"
	"testing"
)

func TestHostDescriptionDescribesThisMachine(t *testing.T) {
	d, err := HostDescription("host-a", "containerd")
	if err != nil {
		t.Fatal(err)
	}
	if d.Hostname != "host-a" {
		t.Errorf("hostname = %q, want host-a", d.Hostname)
	}
	if d.Platform.GetOS() != runtime.GOOS || d.Platform.GetArchitecture() != runtime.GOARCH {
		t.Errorf("platform = %+v, want %s/%s", d.Platform, runtime.GOOS, runtime.GOARCH)
	}
	if want := int64(runtime.NumCPU()) * 1e9; d.Resources.GetNanoCPUs() != want {
		t.Errorf("nano CPUs = %d, want %d", d.Resources.GetNanoCPUs(), want)
	}
	if d.Resources.GetMemoryBytes() <= 0 {
		t.Errorf("memory = %d, want the machine's total", d.Resources.GetMemoryBytes())
	}
	if d.Engine.GetExecutor() != "containerd" {
		t.Errorf("engine executor = %q, want containerd", d.Engine.GetExecutor())
	}
}
