package orchestrator_test

import (
	"testing"
	"time"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/manager/orchestrator"
)

// A new task carries its service's published ports (the executor publishes
// host-mode ones; the scheduler keeps equal host ports apart), as its own
// copy.
func TestNewTaskCarriesTheServicePorts(t *testing.T) {
	port := &api.PortConfig{PublishMode: api.PublishModeHost, PublishedPort: 8080, TargetPort: 80}
	svc := &api.Service{ID: "s", Spec: api.ServiceSpec{Endpoint: &api.EndpointSpec{Ports: []*api.PortConfig{port}}}}
	task := orchestrator.NewTask(svc, 1, "", time.Now())
	if task.Endpoint == nil || len(task.Endpoint.Ports) != 1 || task.Endpoint.Ports[0].PublishedPort != 8080 ||
		task.Endpoint.Spec == nil || len(task.Endpoint.Spec.Ports) != 1 {
		t.Fatalf("task endpoint = %+v, want the service's port", task.Endpoint)
	}
	task.Endpoint.Ports[0].PublishedPort = 1
	if port.PublishedPort != 8080 {
		t.Fatal("the task's ports alias the service's")
	}
	if task := orchestrator.NewTask(&api.Service{ID: "s"}, 1, "", time.Now()); task.Endpoint != nil {
		t.Fatalf("a service without ports gave its task an endpoint: %+v", task.Endpoint)
	}
}
