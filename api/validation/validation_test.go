package validation

import (
	"strings"
	"testing"
	"time"

	"github.com/gogo/protobuf/types"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/api/defaults"
)

func TestImage(t *testing.T) {
	for ref, wantErr := range map[string]string{
		"busybox":                         "",
		"busybox:1.36":                    "",
		"localhost:5000/team/app:v1":      "",
		"Registry.Example:5000/app":       "",
		"busybox@sha256:0123456789abcdef": "",
		"":                                "an image is required",
		"busy box":                        "whitespace",
		"Busybox":                         "lowercase",
		"busybox:":                        "invalid",
		"busybox@nodigest":                "invalid digest",
		"localhost:5000/Team/app":         "lowercase",
	} {
		err := Image(ref)
		if (wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), wantErr)) {
			t.Errorf("Image(%q) = %v, want error containing %q", ref, err, wantErr)
		}
	}
}

func TestName(t *testing.T) {
	for _, c := range []struct {
		kind, name string
		ok         bool
	}{
		{api.KindService, "web", true},
		{api.KindService, "web_api-2", true},
		{api.KindService, "web.api", false},
		{api.KindService, "-web", false},
		{api.KindService, "web-", false},
		{api.KindService, strings.Repeat("a", 63), true},
		{api.KindService, strings.Repeat("a", 64), false},
		{api.KindSecret, "db.password", true},
		{api.KindSecret, ".hidden", false},
	} {
		if err := Name(c.kind, c.name); (err == nil) != c.ok {
			t.Errorf("Name(%s, %q) = %v, want ok=%v", c.kind, c.name, err, c.ok)
		}
	}
}

func validSpec() *api.ServiceSpec {
	return &api.ServiceSpec{
		Annotations: api.Annotations{Name: "web"},
		Task:        api.TaskSpec{Container: &api.ContainerSpec{Image: "busybox"}},
		Mode:        api.ServiceMode{Mode: &api.ServiceMode_Replicated{Replicated: &api.ReplicatedService{Replicas: 1}}},
	}
}

func TestServiceSpec(t *testing.T) {
	for _, c := range []struct {
		name   string
		mutate func(*api.ServiceSpec)
		want   string
	}{
		{"valid", func(*api.ServiceSpec) {}, ""},
		{"relative workdir", func(s *api.ServiceSpec) { s.Task.Container.Dir = "app" }, "absolute path"},
		{"bad env", func(s *api.ServiceSpec) { s.Task.Container.Env = []string{"=x"} }, "KEY=VALUE"},
		{"negative grace", func(s *api.ServiceSpec) { s.Task.Container.StopGracePeriod = types.DurationProto(-time.Second) }, "negative"},
		{"bind without abs source", func(s *api.ServiceSpec) {
			s.Task.Container.Mounts = []api.Mount{{Type: api.MountTypeBind, Source: "data", Target: "/data"}}
		}, "absolute path on the node"},
		{"tmpfs with source", func(s *api.ServiceSpec) {
			s.Task.Container.Mounts = []api.Mount{{Type: api.MountTypeTmpfs, Source: "x", Target: "/t"}}
		}, "takes no source"},
		{"reservation over limit", func(s *api.ServiceSpec) {
			s.Task.Resources = &api.ResourceRequirements{Limits: &api.Resources{MemoryBytes: 64 << 20}, Reservations: &api.Resources{MemoryBytes: 128 << 20}}
		}, "larger than the memory limit"},
		{"tiny memory limit", func(s *api.ServiceSpec) {
			s.Task.Resources = &api.ResourceRequirements{Limits: &api.Resources{MemoryBytes: 1 << 20}}
		}, "minimum of 6MiB"},
		{"duplicate published port", func(s *api.ServiceSpec) {
			s.Endpoint = &api.EndpointSpec{Ports: []*api.PortConfig{{TargetPort: 80, PublishedPort: 8080}, {TargetPort: 81, PublishedPort: 8080}}}
		}, "given twice"},
		{"dnsrr ingress", func(s *api.ServiceSpec) {
			s.Endpoint = &api.EndpointSpec{Mode: api.ResolutionModeDNSRoundRobin, Ports: []*api.PortConfig{{TargetPort: 80, PublishedPort: 8080}}}
		}, "mode=host"},
		{"failure ratio", func(s *api.ServiceSpec) { s.Update = &api.UpdateConfig{MaxFailureRatio: 1.5} }, "between 0 and 1"},
		{"bad preference", func(s *api.ServiceSpec) {
			s.Task.Placement = &api.Placement{Preferences: []*api.PlacementPreference{{Spread: "zone"}}}
		}, "spread=node.labels.NAME"},
		{"job too large", func(s *api.ServiceSpec) {
			s.Mode = api.ServiceMode{Mode: &api.ServiceMode_ReplicatedJob{ReplicatedJob: &api.ReplicatedJob{TotalCompletions: MaxReplicas + 1}}}
		}, "at most"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := validSpec()
			c.mutate(s)
			err := ServiceSpec(s)
			if (c.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
				t.Errorf("got %v, want error containing %q", err, c.want)
			}
		})
	}
}

func TestClusterSpec(t *testing.T) {
	s := defaults.ClusterSpec()
	if err := ClusterSpec(&s); err != nil {
		t.Fatalf("default cluster spec invalid: %v", err)
	}
	s.CAConfig.NodeCertExpiry = types.DurationProto(30 * time.Minute)
	if err := ClusterSpec(&s); err == nil || !strings.Contains(err.Error(), "at least 1h0m0s") {
		t.Errorf("30m cert expiry: %v", err)
	}
}
