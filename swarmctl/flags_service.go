package main

import (
	"fmt"
	"math"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/gogo/protobuf/types"
	"github.com/urfave/cli/v2"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/api/constraint"
)

// flagValues is what the service flag parsing reads; *cli.Context has it.
// Only flags the user gave (IsSet) change a spec.
type flagValues interface {
	IsSet(name string) bool
	String(name string) string
	StringSlice(name string) []string
	Bool(name string) bool
}

// serviceSharedFlags are the flags of both service create and service update.
// On update a repeatable flag (--env, --label, --constraint, --mount,
// --publish, --network, --secret, --config, --placement-pref) replaces the
// whole list; --env-add/--env-rm and --constraint-add/--constraint-rm edit it.
func serviceSharedFlags() []cli.Flag {
	return []cli.Flag{
		str("image", "`IMAGE` to run"),
		str("mode", "`MODE`: replicated, global, replicated-job or global-job"),
		str("replicas", "`N` tasks (replicated) or completions (replicated-job)"),
		list("env", "environment variable `K=V` of the container"),
		str("workdir", "working directory `DIR` of the container"),
		str("user", "`USER`[:GROUP] the container runs as"),
		list("label", "service label `K=V`"),
		list("constraint", "placement constraint `EXPR`: ATTR==VALUE or ATTR!=VALUE, ATTR one of node.id, node.hostname, node.role, node.ip, node.platform.os, node.platform.arch, node.labels.KEY"),
		list("placement-pref", "spread tasks over a node attribute: `PREF` is spread=node.labels.KEY"),
		str("replicas-max-per-node", "at most `N` tasks of the service per node (0: unlimited)"),
		str("reserve-cpu", "CPUs `F` reserved for each task, e.g. 0.5"),
		str("reserve-memory", "memory `BYTES` reserved for each task, e.g. 64M, 1G (1024-based)"),
		str("limit-cpu", "CPU limit `F` of each task, e.g. 1.5"),
		str("limit-memory", "memory limit `BYTES` of each task, e.g. 512M"),
		str("restart-condition", "restart when `COND`: none, on-failure or any"),
		str("restart-delay", "delay `D` between restarts, e.g. 5s"),
		str("restart-max-attempts", "`N` restarts allowed within --restart-window (0: unbounded)"),
		str("restart-window", "window `D` in which restarts are counted, e.g. 2m"),
		str("update-parallelism", "`N` tasks updated at once (0: all)"),
		str("update-delay", "delay `D` between updates of groups of tasks"),
		str("update-failure-action", "on update failure `ACTION`: pause, continue or rollback"),
		str("update-monitor", "time `D` each updated task is watched for failure"),
		str("update-max-failure-ratio", "fraction `F` of failed tasks tolerated during an update, 0 to 1"),
		str("update-order", "`ORDER`: stop-first or start-first"),
		str("rollback-parallelism", "`N` tasks rolled back at once (0: all)"),
		str("rollback-delay", "delay `D` between rollbacks of groups of tasks"),
		str("rollback-failure-action", "on rollback failure `ACTION`: pause or continue"),
		str("rollback-monitor", "time `D` each rolled-back task is watched for failure"),
		str("rollback-max-failure-ratio", "fraction `F` of failed tasks tolerated during a rollback, 0 to 1"),
		str("rollback-order", "`ORDER`: stop-first or start-first"),
		str("stop-grace-period", "time `D` to wait after the stop signal before killing the container"),
		str("stop-signal", "signal `SIG` that stops the container, e.g. SIGTERM"),
		str("health-cmd", "health check `CMD`, run with /bin/sh -c (NONE disables the image's check)"),
		str("health-interval", "time `D` between health checks"),
		str("health-timeout", "time `D` a health check may take"),
		str("health-retries", "`N` consecutive failures that make a task unhealthy"),
		str("health-start-period", "time `D` after start during which failures do not count"),
		list("mount", "mount into the container: `SPEC` is type=bind|volume|tmpfs,source=SRC,target=/PATH[,readonly] (also tmpfs-size=BYTES, tmpfs-mode=OCTAL, volume-label=K=V)"),
		list("publish", "publish a port: `SPEC` is [mode=ingress|host,]published=P,target=T[,protocol=tcp|udp], or short P:T[/udp]"),
		list("network", "attach to a network: `NET` is NAME or name=NAME,alias=ALIAS"),
		str("endpoint-mode", "`MODE`: vip or dnsrr"),
		list("secret", "give the container a secret: `REF` is NAME[,target=PATH][,uid=N][,gid=N][,mode=0444]"),
		list("config", "give the container a config: `REF` is NAME[,target=PATH][,uid=N][,gid=N][,mode=0444]"),
		&cli.BoolFlag{Name: "with-registry-auth", Usage: "send the Docker client's credentials for the image's registry (~/.docker/config.json) to the nodes, to pull a private image"},
	}
}

// serviceCreateFlags are the flags of service create.
func serviceCreateFlags() []cli.Flag {
	return append([]cli.Flag{str("name", "service `NAME` (required)")}, serviceSharedFlags()...)
}

// serviceUpdateFlags are the flags of service update.
func serviceUpdateFlags() []cli.Flag {
	return append(serviceSharedFlags(),
		list("env-add", "add or change an environment variable `K=V`"),
		list("env-rm", "remove the environment variable `K`"),
		list("constraint-add", "add a placement constraint `EXPR`"),
		list("constraint-rm", "remove a placement constraint `EXPR`"),
		&cli.BoolFlag{Name: "force", Usage: "restart every task even without a spec change"},
	)
}

// Values are parsed by us, not by urfave/cli, so that a bad one gives one
// line naming the flag and the expected form. The usage marks the
// placeholder of the value with backquotes.
func str(name, usage string) *cli.StringFlag {
	return &cli.StringFlag{Name: name, Usage: usage}
}

// list is a repeatable flag.
func list(name, usage string) *cli.StringSliceFlag {
	return &cli.StringSliceFlag{Name: name, Usage: usage + " (repeatable)"}
}

// newServiceSpec is the spec service create starts from.
func newServiceSpec(name string) *api.ServiceSpec {
	spec := &api.ServiceSpec{
		Annotations: api.Annotations{Name: name},
		Mode:        api.ServiceMode{Mode: &api.ServiceMode_Replicated{Replicated: &api.ReplicatedService{Replicas: 1}}},
	}
	spec.Task.Container = &api.ContainerSpec{}
	return spec
}

// serviceStep changes one part of a spec from the flags that were given.
type serviceStep func(fv flagValues, spec *api.ServiceSpec) error

// serviceSteps run in order; the edit flags come after the replacing ones.
var serviceSteps = []serviceStep{
	applyImage,
	applyMode,
	applyContainer,
	applyEnvEdits,
	applyLabels,
	applyPlacement,
	applyConstraintEdits,
	applyResources,
	applyRestart,
	applyUpdateConfigs,
	applyHealth,
	applyMounts,
	applyEndpoint,
	applyNetworks,
	applyReferences,
	applyRegistryAuth,
	applyForce,
}

// applyServiceFlags changes spec for every flag given, the one function
// behind service create and service update. Secret and config references it
// adds carry names only; resolveReferences fills their IDs.
func applyServiceFlags(fv flagValues, spec *api.ServiceSpec) error {
	if spec.Task.Container == nil {
		spec.Task.Container = &api.ContainerSpec{}
	}
	for _, step := range serviceSteps {
		if err := step(fv, spec); err != nil {
			return err
		}
	}
	return nil
}

// anySet says whether any of the named flags was given.
func anySet(fv flagValues, names ...string) bool {
	for _, n := range names {
		if fv.IsSet(n) {
			return true
		}
	}
	return false
}

// invalid is the one-line error for a bad flag value.
func invalid(flag, value, expected string) error {
	return fmt.Errorf("--%s: invalid value %q: expected %s", flag, value, expected)
}

func applyImage(fv flagValues, spec *api.ServiceSpec) error {
	if !fv.IsSet("image") {
		return nil
	}
	img := strings.TrimSpace(fv.String("image"))
	if img == "" {
		return invalid("image", fv.String("image"), "an image reference like nginx:1.27")
	}
	spec.Task.Container.Image = img
	return nil
}

// Service mode names, as the CLI shows and takes them.
const (
	modeReplicated    = "replicated"
	modeGlobal        = "global"
	modeReplicatedJob = "replicated-job"
	modeGlobalJob     = "global-job"
)

// modeName names a service's mode.
func modeName(m api.ServiceMode) string {
	switch m.Mode.(type) {
	case *api.ServiceMode_Replicated:
		return modeReplicated
	case *api.ServiceMode_Global:
		return modeGlobal
	case *api.ServiceMode_ReplicatedJob:
		return modeReplicatedJob
	case *api.ServiceMode_GlobalJob:
		return modeGlobalJob
	}
	return ""
}

func applyMode(fv flagValues, spec *api.ServiceSpec) error {
	if fv.IsSet("mode") {
		v := fv.String("mode")
		if v != modeName(spec.Mode) {
			switch v {
			case modeReplicated:
				spec.Mode.Mode = &api.ServiceMode_Replicated{Replicated: &api.ReplicatedService{Replicas: 1}}
			case modeGlobal:
				spec.Mode.Mode = &api.ServiceMode_Global{Global: &api.GlobalService{}}
			case modeReplicatedJob:
				spec.Mode.Mode = &api.ServiceMode_ReplicatedJob{ReplicatedJob: &api.ReplicatedJob{TotalCompletions: 1}}
			case modeGlobalJob:
				spec.Mode.Mode = &api.ServiceMode_GlobalJob{GlobalJob: &api.GlobalJob{}}
			default:
				return invalid("mode", v, "replicated, global, replicated-job or global-job")
			}
		}
	}
	if fv.IsSet("replicas") {
		n, err := parseUint("replicas", fv.String("replicas"))
		if err != nil {
			return err
		}
		switch m := spec.Mode.Mode.(type) {
		case *api.ServiceMode_Replicated:
			m.Replicated.Replicas = n
		case *api.ServiceMode_ReplicatedJob:
			m.ReplicatedJob.TotalCompletions = n
		default:
			return fmt.Errorf("--replicas: only replicated and replicated-job services have replicas (this one is %s)", modeName(spec.Mode))
		}
	}
	return nil
}

func applyContainer(fv flagValues, spec *api.ServiceSpec) error {
	c := spec.Task.Container
	if fv.IsSet("env") {
		env, err := parseEnvList("env", fv.StringSlice("env"))
		if err != nil {
			return err
		}
		c.Env = env
	}
	if fv.IsSet("workdir") {
		dir := fv.String("workdir")
		if dir != "" && !strings.HasPrefix(dir, "/") {
			return invalid("workdir", dir, "an absolute path like /app")
		}
		c.Dir = dir
	}
	if fv.IsSet("user") {
		c.User = fv.String("user")
	}
	if fv.IsSet("stop-grace-period") {
		d, err := parseDuration("stop-grace-period", fv.String("stop-grace-period"))
		if err != nil {
			return err
		}
		c.StopGracePeriod = d
	}
	if fv.IsSet("stop-signal") {
		sig := strings.TrimSpace(fv.String("stop-signal"))
		if sig == "" {
			return invalid("stop-signal", fv.String("stop-signal"), "a signal name or number like SIGTERM or 15")
		}
		c.StopSignal = sig
	}
	return nil
}

// parseEnvList checks K=V entries.
func parseEnvList(flag string, vals []string) ([]string, error) {
	out := make([]string, 0, len(vals))
	for _, v := range vals {
		k, _, ok := strings.Cut(v, "=")
		if !ok || strings.TrimSpace(k) == "" {
			return nil, invalid(flag, v, "KEY=VALUE")
		}
		out = append(out, v)
	}
	return out, nil
}

// envKey is the variable an env entry sets.
func envKey(entry string) string {
	k, _, _ := strings.Cut(entry, "=")
	return k
}

// editEnv removes the variables named in rm, then sets those in add
// (replacing an existing entry in place, else appending), as Docker does.
func editEnv(env, add, rm []string) []string {
	drop := map[string]bool{}
	for _, k := range rm {
		drop[envKey(k)] = true
	}
	out := make([]string, 0, len(env)+len(add))
	for _, e := range env {
		if !drop[envKey(e)] {
			out = append(out, e)
		}
	}
	for _, a := range add {
		replaced := false
		for i, e := range out {
			if envKey(e) == envKey(a) {
				out[i] = a
				replaced = true
				break
			}
		}
		if !replaced {
			out = append(out, a)
		}
	}
	return out
}

func applyEnvEdits(fv flagValues, spec *api.ServiceSpec) error {
	if !anySet(fv, "env-add", "env-rm") {
		return nil
	}
	add, err := parseEnvList("env-add", fv.StringSlice("env-add"))
	if err != nil {
		return err
	}
	rm := fv.StringSlice("env-rm")
	for _, k := range rm {
		if strings.TrimSpace(envKey(k)) == "" {
			return invalid("env-rm", k, "a variable name KEY")
		}
	}
	spec.Task.Container.Env = editEnv(spec.Task.Container.Env, add, rm)
	return nil
}

func applyLabels(fv flagValues, spec *api.ServiceSpec) error {
	if !fv.IsSet("label") {
		return nil
	}
	labels, err := parseLabels("label", fv.StringSlice("label"))
	if err != nil {
		return err
	}
	spec.Annotations.Labels = labels
	return nil
}

// parseLabels reads K=V entries (a bare K is a label with an empty value).
func parseLabels(flag string, vals []string) (map[string]string, error) {
	labels := map[string]string{}
	for _, v := range vals {
		k, val, _ := strings.Cut(v, "=")
		if strings.TrimSpace(k) == "" {
			return nil, invalid(flag, v, "KEY=VALUE")
		}
		labels[k] = val
	}
	return labels, nil
}

func placement(spec *api.ServiceSpec) *api.Placement {
	if spec.Task.Placement == nil {
		spec.Task.Placement = &api.Placement{}
	}
	return spec.Task.Placement
}

func applyPlacement(fv flagValues, spec *api.ServiceSpec) error {
	if fv.IsSet("constraint") {
		cs, err := parseConstraints("constraint", fv.StringSlice("constraint"))
		if err != nil {
			return err
		}
		placement(spec).Constraints = cs
	}
	if fv.IsSet("placement-pref") {
		var prefs []*api.PlacementPreference
		for _, v := range fv.StringSlice("placement-pref") {
			p, err := parsePlacementPref(v)
			if err != nil {
				return err
			}
			prefs = append(prefs, p)
		}
		placement(spec).Preferences = prefs
	}
	if fv.IsSet("replicas-max-per-node") {
		n, err := parseUint("replicas-max-per-node", fv.String("replicas-max-per-node"))
		if err != nil {
			return err
		}
		placement(spec).MaxReplicas = n
	}
	return nil
}

// parseConstraints checks each expression with the parser the manager uses,
// so that a bad one is refused before anything is sent. Expressions are
// passed on unchanged.
func parseConstraints(flag string, vals []string) ([]string, error) {
	out := make([]string, 0, len(vals))
	for _, v := range vals {
		if _, err := constraint.Parse(v); err != nil {
			return nil, fmt.Errorf("--%s: %w", flag, err)
		}
		out = append(out, v)
	}
	return out, nil
}

// sameConstraint compares expressions ignoring spaces around the operator.
func sameConstraint(a, b string) bool {
	return strings.Join(strings.Fields(a), "") == strings.Join(strings.Fields(b), "")
}

func applyConstraintEdits(fv flagValues, spec *api.ServiceSpec) error {
	if !anySet(fv, "constraint-add", "constraint-rm") {
		return nil
	}
	add, err := parseConstraints("constraint-add", fv.StringSlice("constraint-add"))
	if err != nil {
		return err
	}
	rm := fv.StringSlice("constraint-rm")
	p := placement(spec)
	var out []string
	for _, c := range p.Constraints {
		removed := false
		for _, r := range rm {
			if sameConstraint(c, r) {
				removed = true
				break
			}
		}
		if !removed {
			out = append(out, c)
		}
	}
	for _, a := range add {
		present := false
		for _, c := range out {
			if sameConstraint(c, a) {
				present = true
				break
			}
		}
		if !present {
			out = append(out, a)
		}
	}
	p.Constraints = out
	return nil
}

// parsePlacementPref reads spread=node.labels.K.
func parsePlacementPref(v string) (*api.PlacementPreference, error) {
	k, attr, ok := strings.Cut(v, "=")
	if !ok || k != "spread" || strings.TrimSpace(attr) == "" {
		return nil, invalid("placement-pref", v, "spread=node.labels.KEY")
	}
	return &api.PlacementPreference{Spread: attr}, nil
}

func applyResources(fv flagValues, spec *api.ServiceSpec) error {
	if !anySet(fv, "reserve-cpu", "reserve-memory", "limit-cpu", "limit-memory") {
		return nil
	}
	if spec.Task.Resources == nil {
		spec.Task.Resources = &api.ResourceRequirements{}
	}
	r := spec.Task.Resources
	set := func(res **api.Resources, cpuFlag, memFlag string) error {
		if !anySet(fv, cpuFlag, memFlag) {
			return nil
		}
		if *res == nil {
			*res = &api.Resources{}
		}
		if fv.IsSet(cpuFlag) {
			n, err := parseCPU(cpuFlag, fv.String(cpuFlag))
			if err != nil {
				return err
			}
			(*res).NanoCPUs = n
		}
		if fv.IsSet(memFlag) {
			n, err := parseBytes(fv.String(memFlag))
			if err != nil {
				return fmt.Errorf("--%s: %w", memFlag, err)
			}
			(*res).MemoryBytes = n
		}
		return nil
	}
	if err := set(&r.Reservations, "reserve-cpu", "reserve-memory"); err != nil {
		return err
	}
	return set(&r.Limits, "limit-cpu", "limit-memory")
}

// parseCPU reads a number of CPUs ("0.5") into nano-CPUs.
func parseCPU(flag, v string) (int64, error) {
	f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
	if err != nil || f < 0 || math.IsInf(f, 0) || math.IsNaN(f) || f*1e9 > math.MaxInt64 {
		return 0, invalid(flag, v, "a number of CPUs like 0.5 or 2")
	}
	return int64(math.Round(f * 1e9)), nil
}

// parseBytes reads a size: a number of bytes, or one with a 1024-based
// suffix K, M, G, T (also KB/KiB and so on; case does not matter), e.g. 64M, 1.5G.
func parseBytes(v string) (int64, error) {
	s := strings.ToLower(strings.TrimSpace(v))
	bad := fmt.Errorf("invalid size %q: expected bytes like 512K, 64M or 1G (1024-based)", v)
	s = strings.TrimSuffix(strings.TrimSuffix(s, "ib"), "b")
	mult := float64(1)
	if s != "" {
		switch s[len(s)-1] {
		case 'k':
			mult = 1 << 10
		case 'm':
			mult = 1 << 20
		case 'g':
			mult = 1 << 30
		case 't':
			mult = 1 << 40
		}
		if mult != 1 {
			s = s[:len(s)-1]
		}
	}
	if s == "" || strings.Trim(s, "0123456789.") != "" || strings.Count(s, ".") > 1 || s == "." {
		return 0, bad
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, bad
	}
	n := f * mult
	if n > math.MaxInt64 {
		return 0, bad
	}
	return int64(n), nil
}

func applyRestart(fv flagValues, spec *api.ServiceSpec) error {
	if !anySet(fv, "restart-condition", "restart-delay", "restart-max-attempts", "restart-window") {
		return nil
	}
	if spec.Task.Restart == nil {
		spec.Task.Restart = &api.RestartPolicy{}
	}
	r := spec.Task.Restart
	if fv.IsSet("restart-condition") {
		switch v := fv.String("restart-condition"); v {
		case "none":
			r.Condition = api.RestartOnNone
		case "on-failure":
			r.Condition = api.RestartOnFailure
		case "any":
			r.Condition = api.RestartOnAny
		default:
			return invalid("restart-condition", v, "none, on-failure or any")
		}
	}
	var err error
	if fv.IsSet("restart-delay") {
		if r.Delay, err = parseDuration("restart-delay", fv.String("restart-delay")); err != nil {
			return err
		}
	}
	if fv.IsSet("restart-max-attempts") {
		if r.MaxAttempts, err = parseUint("restart-max-attempts", fv.String("restart-max-attempts")); err != nil {
			return err
		}
	}
	if fv.IsSet("restart-window") {
		if r.Window, err = parseDuration("restart-window", fv.String("restart-window")); err != nil {
			return err
		}
	}
	return nil
}

// defaultUpdateConfig is what an update or rollback config starts from when
// the first of its flags is given: one task at a time, pause on failure,
// watch each task 5s, stop the old task first (Docker's defaults). Zero
// values would mean "all tasks at once".
func defaultUpdateConfig() *api.UpdateConfig {
	return &api.UpdateConfig{
		Parallelism:   1,
		FailureAction: api.UpdateFailureActionPause,
		Monitor:       types.DurationProto(5 * time.Second),
		Order:         api.UpdateOrderStopFirst,
	}
}

func applyUpdateConfigs(fv flagValues, spec *api.ServiceSpec) error {
	if err := applyUpdateConfig(fv, "update", &spec.Update); err != nil {
		return err
	}
	return applyUpdateConfig(fv, "rollback", &spec.Rollback)
}

// applyUpdateConfig reads the six --PREFIX-* flags into *cfg.
func applyUpdateConfig(fv flagValues, prefix string, cfg **api.UpdateConfig) error {
	name := func(s string) string { return prefix + "-" + s }
	if !anySet(fv, name("parallelism"), name("delay"), name("failure-action"), name("monitor"), name("max-failure-ratio"), name("order")) {
		return nil
	}
	if *cfg == nil {
		*cfg = defaultUpdateConfig()
	}
	u := *cfg
	var err error
	if f := name("parallelism"); fv.IsSet(f) {
		if u.Parallelism, err = parseUint(f, fv.String(f)); err != nil {
			return err
		}
	}
	if f := name("delay"); fv.IsSet(f) {
		if u.Delay, err = parseDuration(f, fv.String(f)); err != nil {
			return err
		}
	}
	if f := name("failure-action"); fv.IsSet(f) {
		switch v := fv.String(f); {
		case v == "pause":
			u.FailureAction = api.UpdateFailureActionPause
		case v == "continue":
			u.FailureAction = api.UpdateFailureActionContinue
		case v == "rollback" && prefix == "update":
			u.FailureAction = api.UpdateFailureActionRollback
		case prefix == "update":
			return invalid(f, v, "pause, continue or rollback")
		default:
			return invalid(f, v, "pause or continue")
		}
	}
	if f := name("monitor"); fv.IsSet(f) {
		if u.Monitor, err = parseDuration(f, fv.String(f)); err != nil {
			return err
		}
	}
	if f := name("max-failure-ratio"); fv.IsSet(f) {
		v := fv.String(f)
		r, perr := strconv.ParseFloat(strings.TrimSpace(v), 32)
		if perr != nil || r < 0 || r > 1 {
			return invalid(f, v, "a number from 0 to 1, e.g. 0.2")
		}
		u.MaxFailureRatio = float32(r)
	}
	if f := name("order"); fv.IsSet(f) {
		switch v := fv.String(f); v {
		case "stop-first":
			u.Order = api.UpdateOrderStopFirst
		case "start-first":
			u.Order = api.UpdateOrderStartFirst
		default:
			return invalid(f, v, "stop-first or start-first")
		}
	}
	return nil
}

func applyHealth(fv flagValues, spec *api.ServiceSpec) error {
	if !anySet(fv, "health-cmd", "health-interval", "health-timeout", "health-retries", "health-start-period") {
		return nil
	}
	c := spec.Task.Container
	if c.Healthcheck == nil {
		c.Healthcheck = &api.HealthConfig{}
	}
	h := c.Healthcheck
	if fv.IsSet("health-cmd") {
		switch cmd := strings.TrimSpace(fv.String("health-cmd")); cmd {
		case "":
			return invalid("health-cmd", fv.String("health-cmd"), "a shell command, or NONE")
		case "NONE":
			h.Test = []string{"NONE"}
		default:
			h.Test = []string{"CMD-SHELL", cmd}
		}
	}
	var err error
	for _, d := range []struct {
		flag string
		dst  **types.Duration
	}{
		{"health-interval", &h.Interval},
		{"health-timeout", &h.Timeout},
		{"health-start-period", &h.StartPeriod},
	} {
		if fv.IsSet(d.flag) {
			if *d.dst, err = parseDuration(d.flag, fv.String(d.flag)); err != nil {
				return err
			}
		}
	}
	if fv.IsSet("health-retries") {
		v := fv.String("health-retries")
		n, perr := strconv.ParseInt(strings.TrimSpace(v), 10, 32)
		if perr != nil || n < 0 {
			return invalid("health-retries", v, "a non-negative integer")
		}
		h.Retries = int32(n)
	}
	return nil
}

func applyMounts(fv flagValues, spec *api.ServiceSpec) error {
	if !fv.IsSet("mount") {
		return nil
	}
	var mounts []api.Mount
	for _, v := range fv.StringSlice("mount") {
		m, err := parseMount(v)
		if err != nil {
			return err
		}
		mounts = append(mounts, m)
	}
	spec.Task.Container.Mounts = mounts
	return nil
}

// mountForm is the expected form named in --mount errors.
const mountForm = "type=bind|volume|tmpfs,source=SRC,target=/PATH[,readonly]"

// parseMount reads type=bind|volume|tmpfs,source=,target=[,readonly] (also
// src, dst/destination, ro, tmpfs-size, tmpfs-mode, volume-label). The type
// defaults to volume, as in Docker.
func parseMount(v string) (api.Mount, error) {
	m := api.Mount{Type: api.MountTypeVolume}
	fail := func(why string) (api.Mount, error) {
		return api.Mount{}, fmt.Errorf("--mount: invalid value %q: %s (expected %s)", v, why, mountForm)
	}
	for _, field := range strings.Split(v, ",") {
		key, val, hasVal := strings.Cut(field, "=")
		key = strings.ToLower(strings.TrimSpace(key))
		switch key {
		case "type":
			switch strings.ToLower(val) {
			case "bind":
				m.Type = api.MountTypeBind
			case "volume":
				m.Type = api.MountTypeVolume
			case "tmpfs":
				m.Type = api.MountTypeTmpfs
			default:
				return fail("unknown type " + strconv.Quote(val))
			}
		case "source", "src":
			m.Source = val
		case "target", "dst", "destination":
			m.Target = val
		case "readonly", "ro":
			ro := true
			if hasVal {
				b, err := strconv.ParseBool(val)
				if err != nil {
					return fail(key + " takes true or false")
				}
				ro = b
			}
			m.ReadOnly = ro
		case "tmpfs-size":
			n, err := parseBytes(val)
			if err != nil {
				return fail("tmpfs-size: " + err.Error())
			}
			m.TmpfsSizeBytes = n
		case "tmpfs-mode":
			n, err := strconv.ParseUint(val, 8, 32)
			if err != nil {
				return fail("tmpfs-mode takes an octal mode like 1770")
			}
			m.TmpfsMode = int64(n)
		case "volume-label":
			k, lv, _ := strings.Cut(val, "=")
			if k == "" {
				return fail("volume-label takes KEY=VALUE")
			}
			if m.VolumeLabels == nil {
				m.VolumeLabels = map[string]string{}
			}
			m.VolumeLabels[k] = lv
		case "":
			return fail("empty field")
		default:
			return fail("unknown field " + strconv.Quote(key))
		}
	}
	switch {
	case m.Target == "":
		return fail("target is required")
	case !strings.HasPrefix(m.Target, "/"):
		return fail("target must be an absolute path")
	case m.Type == api.MountTypeBind && m.Source == "":
		return fail("a bind mount needs a source")
	case m.Type == api.MountTypeBind && !strings.HasPrefix(m.Source, "/"):
		return fail("the source of a bind mount must be an absolute path")
	case m.Type == api.MountTypeTmpfs && m.Source != "":
		return fail("a tmpfs mount takes no source")
	case m.Type != api.MountTypeTmpfs && (m.TmpfsSizeBytes != 0 || m.TmpfsMode != 0):
		return fail("tmpfs-size and tmpfs-mode are for type=tmpfs")
	case m.Type != api.MountTypeVolume && m.VolumeLabels != nil:
		return fail("volume-label is for type=volume")
	}
	return m, nil
}

func applyEndpoint(fv flagValues, spec *api.ServiceSpec) error {
	if !anySet(fv, "publish", "endpoint-mode") {
		return nil
	}
	if spec.Endpoint == nil {
		spec.Endpoint = &api.EndpointSpec{}
	}
	if fv.IsSet("publish") {
		var ports []*api.PortConfig
		for _, v := range fv.StringSlice("publish") {
			p, err := parsePublish(v)
			if err != nil {
				return err
			}
			ports = append(ports, p)
		}
		spec.Endpoint.Ports = ports
	}
	if fv.IsSet("endpoint-mode") {
		switch v := fv.String("endpoint-mode"); v {
		case "vip":
			spec.Endpoint.Mode = api.ResolutionModeVirtualIP
		case "dnsrr":
			spec.Endpoint.Mode = api.ResolutionModeDNSRoundRobin
		default:
			return invalid("endpoint-mode", v, "vip or dnsrr")
		}
	}
	return nil
}

const publishForm = "[mode=ingress|host,]published=P,target=T[,protocol=tcp|udp] or P:T[/udp]"

// parsePublish reads a port in the long form
// mode=ingress|host,published=P,target=T,protocol=tcp|udp or the short
// form [P:]T[/PROTOCOL]. Without a published port the cluster picks one.
func parsePublish(v string) (*api.PortConfig, error) {
	fail := func(why string) (*api.PortConfig, error) {
		return nil, fmt.Errorf("--publish: invalid value %q: %s (expected %s)", v, why, publishForm)
	}
	p := &api.PortConfig{}
	if !strings.Contains(v, "=") {
		spec, proto, hasProto := strings.Cut(v, "/")
		if hasProto {
			pr, ok := parseProtocol(proto)
			if !ok {
				return fail("unknown protocol " + strconv.Quote(proto))
			}
			p.Protocol = pr
		}
		published, target, hasPublished := strings.Cut(spec, ":")
		if !hasPublished {
			target, published = published, ""
		}
		t, err := parsePort(target)
		if err != nil {
			return fail("target port: " + err.Error())
		}
		p.TargetPort = t
		if hasPublished {
			pp, err := parsePort(published)
			if err != nil {
				return fail("published port: " + err.Error())
			}
			p.PublishedPort = pp
		}
		return p, nil
	}
	for _, field := range strings.Split(v, ",") {
		key, val, ok := strings.Cut(field, "=")
		if !ok {
			return fail("field " + strconv.Quote(field) + " is not KEY=VALUE")
		}
		switch strings.ToLower(strings.TrimSpace(key)) {
		case "mode":
			switch val {
			case "ingress":
				p.PublishMode = api.PublishModeIngress
			case "host":
				p.PublishMode = api.PublishModeHost
			default:
				return fail("mode is ingress or host")
			}
		case "published":
			n, err := parsePort(val)
			if err != nil {
				return fail("published port: " + err.Error())
			}
			p.PublishedPort = n
		case "target":
			n, err := parsePort(val)
			if err != nil {
				return fail("target port: " + err.Error())
			}
			p.TargetPort = n
		case "protocol":
			pr, ok := parseProtocol(val)
			if !ok {
				return fail("unknown protocol " + strconv.Quote(val))
			}
			p.Protocol = pr
		default:
			return fail("unknown field " + strconv.Quote(key))
		}
	}
	if p.TargetPort == 0 {
		return fail("target is required")
	}
	return p, nil
}

func parsePort(s string) (uint32, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%q is not a port from 1 to 65535", s)
	}
	return uint32(n), nil
}

func parseProtocol(s string) (api.PortConfig_Protocol, bool) {
	switch strings.ToLower(s) {
	case "tcp":
		return api.ProtocolTCP, true
	case "udp":
		return api.ProtocolUDP, true
	case "sctp":
		return api.ProtocolSCTP, true
	}
	return 0, false
}

func applyNetworks(fv flagValues, spec *api.ServiceSpec) error {
	if !fv.IsSet("network") {
		return nil
	}
	var nets []*api.NetworkAttachmentConfig
	for _, v := range fv.StringSlice("network") {
		n, err := parseNetwork(v)
		if err != nil {
			return err
		}
		nets = append(nets, n)
	}
	// Networks belong to the task spec; the service-level field is the
	// older place and is cleared so that the two never disagree.
	spec.Task.Networks = nets
	spec.Networks = nil
	return nil
}

// parseNetwork reads NAME or name=NAME,alias=ALIAS[,alias=...].
func parseNetwork(v string) (*api.NetworkAttachmentConfig, error) {
	const form = "NAME or name=NAME[,alias=ALIAS]"
	if !strings.Contains(v, "=") {
		if strings.TrimSpace(v) == "" || strings.Contains(v, ",") {
			return nil, invalid("network", v, form)
		}
		return &api.NetworkAttachmentConfig{Target: v}, nil
	}
	n := &api.NetworkAttachmentConfig{}
	for _, field := range strings.Split(v, ",") {
		key, val, _ := strings.Cut(field, "=")
		switch key {
		case "name", "target":
			n.Target = val
		case "alias":
			n.Aliases = append(n.Aliases, val)
		default:
			return nil, invalid("network", v, form)
		}
	}
	if n.Target == "" {
		return nil, invalid("network", v, form)
	}
	return n, nil
}

func applyReferences(fv flagValues, spec *api.ServiceSpec) error {
	c := spec.Task.Container
	if fv.IsSet("secret") {
		var refs []*api.SecretReference
		for _, v := range fv.StringSlice("secret") {
			r, err := parseFileReference("secret", v)
			if err != nil {
				return err
			}
			refs = append(refs, &api.SecretReference{SecretName: r.name, Target: r.target, UID: r.uid, GID: r.gid, Mode: r.mode})
		}
		c.Secrets = refs
	}
	if fv.IsSet("config") {
		var refs []*api.ConfigReference
		for _, v := range fv.StringSlice("config") {
			r, err := parseFileReference("config", v)
			if err != nil {
				return err
			}
			refs = append(refs, &api.ConfigReference{ConfigName: r.name, Target: r.target, UID: r.uid, GID: r.gid, Mode: r.mode})
		}
		c.Configs = refs
	}
	return nil
}

// fileReference is a parsed --secret or --config.
type fileReference struct {
	name, target string
	uid, gid     uint32
	mode         uint32
}

// parseFileReference reads NAME[,target=PATH] or
// source=NAME[,target=PATH][,uid=N][,gid=N][,mode=OCTAL]. The target
// defaults to the name (secrets land under /run/secrets/, configs under /),
// the mode to 0444.
func parseFileReference(flag, v string) (fileReference, error) {
	form := "NAME[,target=PATH][,uid=N][,gid=N][,mode=0444]"
	r := fileReference{mode: 0o444}
	for i, field := range strings.Split(v, ",") {
		key, val, ok := strings.Cut(field, "=")
		if !ok {
			if i != 0 {
				return r, invalid(flag, v, form)
			}
			r.name = field
			continue
		}
		switch key {
		case "source", "src", "name":
			r.name = val
		case "target":
			r.target = val
		case "uid", "gid":
			n, err := strconv.ParseUint(val, 10, 32)
			if err != nil {
				return r, invalid(flag, v, form)
			}
			if key == "uid" {
				r.uid = uint32(n)
			} else {
				r.gid = uint32(n)
			}
		case "mode":
			n, err := strconv.ParseUint(val, 8, 32)
			if err != nil {
				return r, invalid(flag, v, form)
			}
			r.mode = uint32(n)
		default:
			return r, invalid(flag, v, form)
		}
	}
	if strings.TrimSpace(r.name) == "" {
		return r, invalid(flag, v, form)
	}
	if r.target == "" {
		r.target = r.name
	}
	return r, nil
}

func applyForce(fv flagValues, spec *api.ServiceSpec) error {
	if fv.IsSet("force") && fv.Bool("force") {
		spec.Task.ForceUpdate++
	}
	return nil
}

// parseDuration reads a Go duration ("90s", "1m30s") that is not negative.
func parseDuration(flag, v string) (*types.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil || d < 0 {
		return nil, invalid(flag, v, "a duration like 10s, 1m30s or 2h")
	}
	return types.DurationProto(d), nil
}

// parseUint reads a non-negative integer.
func parseUint(flag, v string) (uint64, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
	if err != nil {
		return 0, invalid(flag, v, "a non-negative integer")
	}
	return n, nil
}

// parseCIDR checks a subnet like 10.0.9.0/24.
func parseCIDR(flag, v string) (string, error) {
	s := strings.TrimSpace(v)
	if _, _, err := net.ParseCIDR(s); err != nil {
		return "", invalid(flag, v, "a subnet in CIDR form like 10.0.9.0/24")
	}
	return s, nil
}
