package main

import (
	"testing"

	"github.com/flotilla/flotilla/api"
)

func svcWithMode(m api.ServiceMode) *api.Service {
	s := &api.Service{ID: "svc-web"}
	s.Spec.Mode = m
	return s
}

func TestReplicasColumn(t *testing.T) {
	run, shut, done := api.TaskStateRunning, api.TaskStateShutdown, api.TaskStateCompleted
	tk := func(state, desired api.TaskState) *api.Task {
		return &api.Task{Status: api.TaskStatus{State: state}, DesiredState: desired}
	}
	replicated := svcWithMode(api.ServiceMode{Mode: &api.ServiceMode_Replicated{Replicated: &api.ReplicatedService{Replicas: 3}}})
	tasks := []*api.Task{tk(run, run), tk(run, run), tk(api.TaskStatePreparing, run), tk(run, shut), tk(shut, shut)}
	if got := replicasColumn(replicated, tasks); got != "2/3" {
		t.Errorf("replicated = %q, want 2/3 (a running task meant to stop does not count)", got)
	}
	replicated.Spec.Task.Placement = &api.Placement{MaxReplicas: 1}
	if got := replicasColumn(replicated, tasks); got != "2/3 (max 1 per node)" {
		t.Errorf("replicated with max = %q", got)
	}
	global := svcWithMode(api.ServiceMode{Mode: &api.ServiceMode_Global{Global: &api.GlobalService{}}})
	if got := replicasColumn(global, tasks); got != "2/3" {
		t.Errorf("global = %q, want 2/3 (desired = tasks meant to run)", got)
	}
	job := svcWithMode(api.ServiceMode{Mode: &api.ServiceMode_ReplicatedJob{ReplicatedJob: &api.ReplicatedJob{TotalCompletions: 5, MaxConcurrent: 2}}})
	jobTasks := []*api.Task{tk(done, done), tk(run, done), tk(run, done)}
	if got := replicasColumn(job, jobTasks); got != "2/2 (1/5 completed)" {
		t.Errorf("replicated job = %q", got)
	}
	globalJob := svcWithMode(api.ServiceMode{Mode: &api.ServiceMode_GlobalJob{GlobalJob: &api.GlobalJob{}}})
	if got := replicasColumn(globalJob, jobTasks); got != "2/2 (1/3 completed)" {
		t.Errorf("global job = %q", got)
	}
}

func TestPortsColumnPrefersAllocatedPorts(t *testing.T) {
	s := &api.Service{}
	s.Spec.Endpoint = &api.EndpointSpec{Ports: []*api.PortConfig{{TargetPort: 80}, {TargetPort: 53, PublishedPort: 53, Protocol: api.ProtocolUDP, PublishMode: api.PublishModeHost}}}
	if got := portsColumn(s); got != "*:*->80/tcp, *:53->53/udp (host)" {
		t.Errorf("spec ports = %q", got)
	}
	s.Endpoint = &api.Endpoint{Ports: []*api.PortConfig{{TargetPort: 80, PublishedPort: 30001}}}
	if got := portsColumn(s); got != "*:30001->80/tcp" {
		t.Errorf("allocated ports = %q", got)
	}
}

func TestScaleArguments(t *testing.T) {
	got, err := parseScaleArgs([]string{"web=5", "api=0"})
	if err != nil || len(got) != 2 || got[0] != (scaleArg{"web", 5}) || got[1] != (scaleArg{"api", 0}) {
		t.Fatalf("got %v, %v", got, err)
	}
	for _, bad := range []string{"web", "web=", "=3", "web=-1", "web=many"} {
		if _, err := parseScaleArgs([]string{"ok=1", bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestImageColumnDropsDigest(t *testing.T) {
	if got := imageColumn(&api.ContainerSpec{Image: "nginx:1.27@sha256:0123"}); got != "nginx:1.27" {
		t.Errorf("got %q", got)
	}
}
