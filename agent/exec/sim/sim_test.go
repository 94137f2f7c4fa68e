package sim

import (
	"context"
	"runtime"
	"testing"
)

func TestDescribeReportsHostAsSimEngine(t *testing.T) {
	labels := map[string]string{"zone": "a"}
	e := New("sim-1", labels)
	labels["zone"] = "changed after New"

	d, err := e.Describe(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if d.Hostname != "sim-1" {
		t.Errorf("hostname = %q, want sim-1", d.Hostname)
	}
	if d.Platform.GetOS() != runtime.GOOS || d.Platform.GetArchitecture() != runtime.GOARCH {
		t.Errorf("platform = %+v, want %s/%s", d.Platform, runtime.GOOS, runtime.GOARCH)
	}
	if want := int64(runtime.NumCPU()) * 1e9; d.Resources.GetNanoCPUs() != want {
		t.Errorf("nano CPUs = %d, want %d", d.Resources.GetNanoCPUs(), want)
	}
	if d.Resources.GetMemoryBytes() <= 0 {
		t.Errorf("memory = %d, want the host's total", d.Resources.GetMemoryBytes())
	}
	if d.Engine.GetExecutor() != "sim" {
		t.Errorf("engine executor = %q, want sim", d.Engine.GetExecutor())
	}
	if got := d.Engine.GetLabels()["zone"]; got != "a" {
		t.Errorf("engine label zone = %q, want a (labels are copied by New)", got)
	}

	// Each description is the caller's to keep: changing one does not leak
	// into the next.
	d.Engine.Labels["zone"] = "mutated"
	d2, _ := e.Describe(context.Background())
	if got := d2.Engine.GetLabels()["zone"]; got != "a" {
		t.Errorf("second Describe label zone = %q, want a", got)
	}
}

func TestDescribeWithoutLabels(t *testing.T) {
	d, err := New("sim-2", nil).Describe(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if d.Engine.GetExecutor() != "sim" || len(d.Engine.GetLabels()) != 0 {
		t.Errorf("engine = %+v, want executor sim and no labels", d.Engine)
	}
}
