package main

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/gogo/protobuf/proto"
	"github.com/gogo/protobuf/types"
	"github.com/urfave/cli/v2"

	"github.com/flotilla/flotilla/api"
)

// parseService runs the real flag parsing of service create (start == nil)
// or service update (applied to a copy of start) over args, without a server.
func parseService(t *testing.T, start *api.ServiceSpec, args ...string) (*api.ServiceSpec, []string, error) {
	t.Helper()
	var spec *api.ServiceSpec
	var positional []string
	flags := serviceCreateFlags()
	if start != nil {
		flags = serviceUpdateFlags()
	}
	app := &cli.App{
		Name:                      "swarmctl",
		DisableSliceFlagSeparator: true,
		Writer:                    io.Discard,
		ErrWriter:                 io.Discard,
		ExitErrHandler:            func(*cli.Context, error) {},
		Commands: []*cli.Command{{
			Name:  "cmd",
			Flags: flags,
			Action: func(c *cli.Context) error {
				if start == nil {
					spec = newServiceSpec(c.String("name"))
				} else {
					spec = start.Copy()
				}
				positional = c.Args().Slice()
				return applyServiceFlags(c, spec)
			},
			OnUsageError: usageError,
		}},
	}
	err := app.Run(append([]string{"swarmctl", "cmd"}, args...))
	return spec, positional, err
}

func mustParse(t *testing.T, start *api.ServiceSpec, args ...string) *api.ServiceSpec {
	t.Helper()
	spec, _, err := parseService(t, start, args...)
	if err != nil {
		t.Fatalf("%v: %v", args, err)
	}
	return spec
}

func TestPublishAcceptsLongAndShortForms(t *testing.T) {
	cases := []struct {
		in   string
		want api.PortConfig
	}{
		{"published=8080,target=80", api.PortConfig{PublishedPort: 8080, TargetPort: 80}},
		{"mode=host,published=8080,target=80,protocol=udp", api.PortConfig{PublishMode: api.PublishModeHost, PublishedPort: 8080, TargetPort: 80, Protocol: api.ProtocolUDP}},
		{"mode=ingress,target=80", api.PortConfig{TargetPort: 80}},
		{"target=53,published=53,protocol=sctp", api.PortConfig{PublishedPort: 53, TargetPort: 53, Protocol: api.ProtocolSCTP}},
		{"8080:80", api.PortConfig{PublishedPort: 8080, TargetPort: 80}},
		{"5353:53/udp", api.PortConfig{PublishedPort: 5353, TargetPort: 53, Protocol: api.ProtocolUDP}},
		{"80", api.PortConfig{TargetPort: 80}},
		{"80/tcp", api.PortConfig{TargetPort: 80}},
	}
	for _, tc := range cases {
		got, err := parsePublish(tc.in)
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if !proto.Equal(got, &tc.want) {
			t.Errorf("%q: got %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

func TestPublishRefusesBadValues(t *testing.T) {
	for _, in := range []string{
		"", "published=8080", "mode=bridge,target=80", "target=0", "target=70000",
		"8080:http", "8080:80/icmp", "published=8080,target=80,color=red", "published=8080;target=80",
	} {
		_, err := parsePublish(in)
		if err == nil {
			t.Errorf("%q: accepted", in)
			continue
		}
		if !strings.HasPrefix(err.Error(), "--publish: ") || !strings.Contains(err.Error(), "published=P,target=T") {
			t.Errorf("%q: error %q does not name the flag and the form", in, err)
		}
	}
}

func TestPublishFlagsReplaceEndpointPorts(t *testing.T) {
	spec := mustParse(t, nil, "--name", "web", "--image", "nginx",
		"--publish", "mode=host,published=8080,target=80", "--publish", "9090:90", "--endpoint-mode", "dnsrr")
	if spec.Endpoint == nil || len(spec.Endpoint.Ports) != 2 || spec.Endpoint.Mode != api.ResolutionModeDNSRoundRobin {
		t.Fatalf("endpoint = %+v", spec.Endpoint)
	}
	if p := spec.Endpoint.Ports[0]; p.PublishMode != api.PublishModeHost || p.PublishedPort != 8080 || p.TargetPort != 80 {
		t.Errorf("first port = %+v: the comma-separated value was split or misread", p)
	}
}

func TestMountAcceptsBindVolumeAndTmpfs(t *testing.T) {
	cases := []struct {
		in   string
		want api.Mount
	}{
		{"type=bind,source=/srv/data,target=/data,readonly", api.Mount{Type: api.MountTypeBind, Source: "/srv/data", Target: "/data", ReadOnly: true}},
		{"type=bind,src=/a,dst=/b,ro=false", api.Mount{Type: api.MountTypeBind, Source: "/a", Target: "/b"}},
		{"type=volume,source=pgdata,target=/var/lib/postgresql/data", api.Mount{Type: api.MountTypeVolume, Source: "pgdata", Target: "/var/lib/postgresql/data"}},
		{"source=cache,target=/cache,volume-label=team=db", api.Mount{Type: api.MountTypeVolume, Source: "cache", Target: "/cache", VolumeLabels: map[string]string{"team": "db"}}},
		{"type=tmpfs,target=/tmp,tmpfs-size=64M,tmpfs-mode=1770", api.Mount{Type: api.MountTypeTmpfs, Target: "/tmp", TmpfsSizeBytes: 64 << 20, TmpfsMode: 0o1770}},
		{"type=volume,destination=/anon", api.Mount{Type: api.MountTypeVolume, Target: "/anon"}},
	}
	for _, tc := range cases {
		got, err := parseMount(tc.in)
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if !proto.Equal(&got, &tc.want) {
			t.Errorf("%q: got %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

func TestMountRefusesBadValues(t *testing.T) {
	for _, in := range []string{
		"type=bind,target=/data",            // bind without source
		"type=bind,source=rel,target=/data", // relative bind source
		"type=nfs,source=/a,target=/b",      // unknown type
		"type=tmpfs,source=/a,target=/tmp",  // tmpfs with source
		"type=volume,source=v",              // no target
		"type=volume,source=v,target=data",  // relative target
		"type=bind,source=/a,target=/b,ro=maybe",
		"type=tmpfs,target=/t,tmpfs-size=lots",
		"type=volume,source=v,target=/v,tmpfs-size=1M",
		"type=volume,source=v,target=/v,color=red",
	} {
		_, err := parseMount(in)
		if err == nil {
			t.Errorf("%q: accepted", in)
			continue
		}
		if !strings.HasPrefix(err.Error(), "--mount: ") {
			t.Errorf("%q: error %q does not name the flag", in, err)
		}
	}
}

func TestBytesAre1024Based(t *testing.T) {
	cases := map[string]int64{
		"0":      0,
		"512":    512,
		"100b":   100,
		"1k":     1024,
		"512K":   512 << 10,
		"64M":    64 << 20,
		"64m":    64 << 20,
		"64MB":   64 << 20,
		"64MiB":  64 << 20,
		"1G":     1 << 30,
		"1.5g":   3 << 29,
		"2T":     2 << 40,
		" 1G ":   1 << 30,
		"0.5KiB": 512,
	}
	for in, want := range cases {
		got, err := parseBytes(in)
		if err != nil || got != want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "M", "-1M", "1e6", "0x10", "12Q", "1.2.3M", "abc", "1 G", "99999999999T"} {
		if got, err := parseBytes(in); err == nil {
			t.Errorf("parseBytes(%q) = %d, want an error", in, got)
		}
	}
}

func TestMemoryFlagsErrorNamesFlagAndForm(t *testing.T) {
	_, _, err := parseService(t, nil, "--name", "web", "--image", "nginx", "--limit-memory", "lots")
	if err == nil || err.Error() != `--limit-memory: invalid size "lots": expected bytes like 512K, 64M or 1G (1024-based)` {
		t.Fatalf("err = %v", err)
	}
}

func TestResourcesFlagsFillReservationsAndLimits(t *testing.T) {
	spec := mustParse(t, nil, "--name", "web", "--image", "nginx",
		"--reserve-cpu", "0.25", "--reserve-memory", "64M", "--limit-cpu", "1.5", "--limit-memory", "1G")
	want := &api.ResourceRequirements{
		Reservations: &api.Resources{NanoCPUs: 250_000_000, MemoryBytes: 64 << 20},
		Limits:       &api.Resources{NanoCPUs: 1_500_000_000, MemoryBytes: 1 << 30},
	}
	if !proto.Equal(spec.Task.Resources, want) {
		t.Fatalf("resources = %+v", spec.Task.Resources)
	}
	// Updating one value keeps the others.
	spec = mustParse(t, spec, "--limit-memory", "2G")
	want.Limits.MemoryBytes = 2 << 30
	if !proto.Equal(spec.Task.Resources, want) {
		t.Fatalf("after update resources = %+v", spec.Task.Resources)
	}
}

func TestConstraintsPassThroughUnchanged(t *testing.T) {
	exprs := []string{"node.labels.zone==a", "node.role != manager", "node.platform.os==linux", "node.hostname==db-1"}
	args := []string{"--name", "web", "--image", "nginx"}
	for _, e := range exprs {
		args = append(args, "--constraint", e)
	}
	spec := mustParse(t, nil, args...)
	if got := spec.Task.Placement.Constraints; strings.Join(got, "|") != strings.Join(exprs, "|") {
		t.Fatalf("constraints = %q, want %q", got, exprs)
	}
	for _, bad := range []string{"node.role=manager", "==manager", "node.role==", "zone", "node.colour==red"} {
		_, _, err := parseService(t, nil, "--name", "web", "--image", "nginx", "--constraint", bad)
		if err == nil || !strings.HasPrefix(err.Error(), "--constraint: ") {
			t.Errorf("%q: err = %v", bad, err)
		}
	}
}

func TestConstraintAddRmEditTheList(t *testing.T) {
	start := newServiceSpec("web")
	start.Task.Placement = &api.Placement{Constraints: []string{"node.role==worker", "node.labels.zone==a"}}
	spec := mustParse(t, start, "--constraint-rm", "node.role == worker", "--constraint-add", "node.labels.ssd==true", "--constraint-add", "node.labels.zone==a")
	if got := strings.Join(spec.Task.Placement.Constraints, "|"); got != "node.labels.zone==a|node.labels.ssd==true" {
		t.Fatalf("constraints = %s", got)
	}
}

func TestPlacementPrefsAndMaxReplicas(t *testing.T) {
	spec := mustParse(t, nil, "--name", "web", "--image", "nginx", "--placement-pref", "spread=node.labels.zone", "--replicas-max-per-node", "2")
	p := spec.Task.Placement
	if len(p.Preferences) != 1 || p.Preferences[0].Spread != "node.labels.zone" || p.MaxReplicas != 2 {
		t.Fatalf("placement = %+v", p)
	}
	if _, _, err := parseService(t, nil, "--name", "web", "--image", "nginx", "--placement-pref", "binpack=node.labels.zone"); err == nil {
		t.Fatal("binpack accepted")
	}
}

func TestDurationsBecomeProtoDurations(t *testing.T) {
	spec := mustParse(t, nil, "--name", "web", "--image", "nginx",
		"--stop-grace-period", "1m30s", "--restart-delay", "5s", "--restart-window", "2m",
		"--update-delay", "10s", "--update-monitor", "30s", "--rollback-delay", "1s",
		"--health-interval", "15s", "--health-timeout", "3s", "--health-start-period", "500ms")
	check := func(name string, d *types.Duration, want time.Duration) {
		t.Helper()
		got, err := types.DurationFromProto(d)
		if err != nil || got != want {
			t.Errorf("%s = %v (%v), want %v", name, got, err, want)
		}
	}
	c := spec.Task.Container
	check("stop-grace-period", c.StopGracePeriod, 90*time.Second)
	check("restart-delay", spec.Task.Restart.Delay, 5*time.Second)
	check("restart-window", spec.Task.Restart.Window, 2*time.Minute)
	check("update-delay", spec.Update.Delay, 10*time.Second)
	check("update-monitor", spec.Update.Monitor, 30*time.Second)
	check("rollback-delay", spec.Rollback.Delay, time.Second)
	check("health-interval", c.Healthcheck.Interval, 15*time.Second)
	check("health-timeout", c.Healthcheck.Timeout, 3*time.Second)
	check("health-start-period", c.Healthcheck.StartPeriod, 500*time.Millisecond)

	for _, bad := range []string{"5", "soon", "-1s"} {
		_, _, err := parseService(t, nil, "--name", "web", "--image", "nginx", "--restart-delay", bad)
		want := `--restart-delay: invalid value "` + bad + `": expected a duration like 10s, 1m30s or 2h`
		if err == nil || err.Error() != want {
			t.Errorf("%q: err = %v", bad, err)
		}
	}
}

func TestUpdateConfigStartsFromSafeDefaults(t *testing.T) {
	spec := mustParse(t, nil, "--name", "web", "--image", "nginx", "--update-delay", "10s")
	u := spec.Update
	if u.Parallelism != 1 || u.FailureAction != api.UpdateFailureActionPause || u.Order != api.UpdateOrderStopFirst || u.Monitor == nil {
		t.Fatalf("update config = %+v: one flag must not leave parallelism 0 (all at once)", u)
	}
	if spec.Rollback != nil {
		t.Fatalf("rollback config set without rollback flags: %+v", spec.Rollback)
	}
	spec = mustParse(t, nil, "--name", "web", "--image", "nginx",
		"--update-parallelism", "3", "--update-failure-action", "rollback", "--update-max-failure-ratio", "0.25", "--update-order", "start-first",
		"--rollback-parallelism", "0", "--rollback-failure-action", "continue")
	if u := spec.Update; u.Parallelism != 3 || u.FailureAction != api.UpdateFailureActionRollback || u.MaxFailureRatio != 0.25 || u.Order != api.UpdateOrderStartFirst {
		t.Fatalf("update config = %+v", u)
	}
	if r := spec.Rollback; r.Parallelism != 0 || r.FailureAction != api.UpdateFailureActionContinue {
		t.Fatalf("rollback config = %+v", r)
	}
	if _, _, err := parseService(t, nil, "--name", "web", "--image", "nginx", "--rollback-failure-action", "rollback"); err == nil {
		t.Fatal("--rollback-failure-action rollback accepted")
	}
}

func TestEnvAddRmOnUpdate(t *testing.T) {
	start := newServiceSpec("web")
	start.Task.Container.Env = []string{"A=1", "B=2", "C=3"}
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--env-add", "B=20"}, "A=1 B=20 C=3"},                // replaced in place
		{[]string{"--env-add", "D=4"}, "A=1 B=2 C=3 D=4"},              // appended
		{[]string{"--env-rm", "A", "--env-rm", "C"}, "B=2"},            // removed
		{[]string{"--env-rm", "B", "--env-add", "B=9"}, "A=1 C=3 B=9"}, // rm first, then add
		{[]string{"--env-rm", "NOPE"}, "A=1 B=2 C=3"},
		{[]string{"--env", "X=1", "--env-add", "Y=2"}, "X=1 Y=2"}, // --env replaces the list
		{[]string{"--env-add", "E=a=b,c"}, "A=1 B=2 C=3 E=a=b,c"},
	}
	for _, tc := range cases {
		spec := mustParse(t, start, tc.args...)
		if got := strings.Join(spec.Task.Container.Env, " "); got != tc.want {
			t.Errorf("%v: env = %s, want %s", tc.args, got, tc.want)
		}
	}
	if _, _, err := parseService(t, start, "--env-add", "NOEQUALS"); err == nil || !strings.HasPrefix(err.Error(), "--env-add: ") {
		t.Errorf("--env-add NOEQUALS: err = %v", err)
	}
}

func TestUpdateChangesOnlyTheFlagsGiven(t *testing.T) {
	start := mustParse(t, nil, "--name", "web", "--image", "nginx:1", "--replicas", "3",
		"--env", "A=1", "--label", "tier=front", "--constraint", "node.role==worker",
		"--mount", "type=volume,source=v,target=/v", "--publish", "80:80", "--restart-condition", "on-failure")
	spec := mustParse(t, start, "--image", "nginx:2")
	want := start.Copy()
	want.Task.Container.Image = "nginx:2"
	if !proto.Equal(spec, want) {
		t.Fatalf("update --image changed more than the image:\n got %v\nwant %v", spec, want)
	}
	spec = mustParse(t, start, "--replicas", "5")
	if spec.Mode.GetReplicated().Replicas != 5 || spec.Task.Container.Image != "nginx:1" {
		t.Fatalf("update --replicas: %v", spec)
	}
	spec = mustParse(t, start, "--force")
	if spec.Task.ForceUpdate != start.Task.ForceUpdate+1 {
		t.Fatalf("--force: forceUpdate = %d", spec.Task.ForceUpdate)
	}
	want = start.Copy()
	want.Task.ForceUpdate++
	if !proto.Equal(spec, want) {
		t.Fatal("--force changed more than forceUpdate")
	}
}

func TestModeFlags(t *testing.T) {
	spec := mustParse(t, nil, "--name", "web", "--image", "nginx")
	if spec.Mode.GetReplicated().GetReplicas() != 1 {
		t.Fatalf("default mode = %v, want replicated with 1 replica", spec.Mode)
	}
	spec = mustParse(t, nil, "--name", "agent", "--image", "a", "--mode", "global")
	if spec.Mode.GetGlobal() == nil {
		t.Fatalf("mode = %v", spec.Mode)
	}
	spec = mustParse(t, nil, "--name", "job", "--image", "a", "--mode", "replicated-job", "--replicas", "4")
	if spec.Mode.GetReplicatedJob().GetTotalCompletions() != 4 {
		t.Fatalf("mode = %v", spec.Mode)
	}
	_, _, err := parseService(t, nil, "--name", "agent", "--image", "a", "--mode", "global", "--replicas", "3")
	if err == nil || !strings.Contains(err.Error(), "--replicas: only replicated") {
		t.Fatalf("global with --replicas: err = %v", err)
	}
	if _, _, err := parseService(t, nil, "--name", "x", "--image", "a", "--mode", "daemon"); err == nil || !strings.HasPrefix(err.Error(), "--mode: ") {
		t.Fatalf("--mode daemon: err = %v", err)
	}
}

func TestCreateTakesTheCommandAfterDoubleDash(t *testing.T) {
	_, args, err := parseService(t, nil, "--name", "web", "--image", "busybox", "--", "sh", "-c", "echo hi; sleep 1")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(args, "|") != "sh|-c|echo hi; sleep 1" {
		t.Fatalf("args = %q", args)
	}
}

func TestContainerFlags(t *testing.T) {
	spec := mustParse(t, nil, "--name", "web", "--image", "nginx", "--workdir", "/app", "--user", "1000:1000",
		"--stop-signal", "SIGQUIT", "--health-cmd", "curl -f http://localhost/ || exit 1", "--health-retries", "3",
		"--label", "a=b", "--label", "flag", "--network", "front", "--network", "name=back,alias=api,alias=v1")
	c := spec.Task.Container
	if c.Dir != "/app" || c.User != "1000:1000" || c.StopSignal != "SIGQUIT" {
		t.Fatalf("container = %+v", c)
	}
	if strings.Join(c.Healthcheck.Test, "|") != "CMD-SHELL|curl -f http://localhost/ || exit 1" || c.Healthcheck.Retries != 3 {
		t.Fatalf("healthcheck = %+v", c.Healthcheck)
	}
	if spec.Annotations.Labels["a"] != "b" || spec.Annotations.Labels["flag"] != "" || len(spec.Annotations.Labels) != 2 {
		t.Fatalf("labels = %v", spec.Annotations.Labels)
	}
	if n := spec.Task.Networks; len(n) != 2 || n[0].Target != "front" || n[1].Target != "back" || strings.Join(n[1].Aliases, ",") != "api,v1" {
		t.Fatalf("networks = %v", n)
	}
}

func TestSecretAndConfigReferences(t *testing.T) {
	spec := mustParse(t, nil, "--name", "web", "--image", "nginx",
		"--secret", "db-pass", "--secret", "source=tls,target=/etc/tls/key.pem,mode=0400,uid=33",
		"--config", "nginx.conf,target=/etc/nginx/nginx.conf")
	s := spec.Task.Container.Secrets
	if len(s) != 2 || s[0].SecretName != "db-pass" || s[0].Target != "db-pass" || s[0].Mode != 0o444 {
		t.Fatalf("secrets = %v", s)
	}
	if s[1].SecretName != "tls" || s[1].Target != "/etc/tls/key.pem" || s[1].Mode != 0o400 || s[1].UID != 33 {
		t.Fatalf("secret 2 = %v", s[1])
	}
	cfg := spec.Task.Container.Configs
	if len(cfg) != 1 || cfg[0].ConfigName != "nginx.conf" || cfg[0].Target != "/etc/nginx/nginx.conf" {
		t.Fatalf("configs = %v", cfg)
	}
	if _, _, err := parseService(t, nil, "--name", "web", "--image", "nginx", "--secret", "a,target"); err == nil {
		t.Fatal("bad --secret accepted")
	}
}

func TestBadValuesNameTheFlag(t *testing.T) {
	cases := [][2]string{
		{"replicas", "-1"}, {"replicas", "two"}, {"reserve-cpu", "half"}, {"limit-cpu", "-1"},
		{"restart-condition", "always"}, {"restart-max-attempts", "x"}, {"update-parallelism", "-2"},
		{"update-failure-action", "retry"}, {"update-max-failure-ratio", "1.5"}, {"update-order", "random"},
		{"rollback-order", "x"}, {"health-retries", "-1"}, {"endpoint-mode", "nat"}, {"mode", "x"},
		{"stop-grace-period", "10"}, {"placement-pref", "spread"}, {"env", "=x"}, {"label", "=x"},
		{"network", "name=,alias=x"}, {"replicas-max-per-node", "many"}, {"image", " "}, {"workdir", "app"},
		{"constraint", "node.role=manager"}, {"mount", "type=bind,target=/x"}, {"publish", "80:http"},
		{"secret", ",target=/x"}, {"reserve-memory", "1Q"},
	}
	for _, tc := range cases {
		_, _, err := parseService(t, nil, "--name", "web", "--image", "nginx", "--"+tc[0], tc[1])
		if err == nil {
			t.Errorf("--%s %q accepted", tc[0], tc[1])
			continue
		}
		if !strings.HasPrefix(err.Error(), "--"+tc[0]+": ") || strings.Contains(err.Error(), "\n") {
			t.Errorf("--%s %q: error %q is not one line naming the flag", tc[0], tc[1], err)
		}
	}
}
