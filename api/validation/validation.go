// Package validation checks user-given specs. Each error says what is wrong
// and what to do; callers turn it into an InvalidArgument status.
package validation

import (
	"fmt"
	"path"
	"regexp"
	"strings"
	"time"

	"github.com/gogo/protobuf/types"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/api/constraint"
)

// MaxReplicas bounds a replicated service; beyond it a typo is likelier
// than intent (a cluster of 1,000 nodes at 100 tasks each).
const MaxReplicas = 100000

// MinNodeCertExpiry is the shortest node certificate validity a cluster may
// set. In-process tests lower it to watch renewal happen.
var MinNodeCertExpiry = time.Hour

// A name is a DNS label: it becomes a service's DNS name.
var nameRE = regexp.MustCompile(`^[a-zA-Z0-9](?:[-_]*[a-zA-Z0-9]+)*$`)

// Secret and config names may also hold dots (file-like names).
var dataNameRE = regexp.MustCompile(`^[a-zA-Z0-9]+(?:[a-zA-Z0-9-_.]*[a-zA-Z0-9])?$`)

// Name checks an object name.
func Name(kind, name string) error {
	if name == "" {
		return fmt.Errorf("%s name is required", kind)
	}
	if len(name) > 63 {
		return fmt.Errorf("%s name %q is %d characters long: at most 63 are allowed", kind, name, len(name))
	}
	re := nameRE
	if kind == api.KindSecret || kind == api.KindConfig {
		re = dataNameRE
	}
	if !re.MatchString(name) {
		return fmt.Errorf("%s name %q is invalid: use letters, digits, '-' and '_', starting and ending with a letter or digit", kind, name)
	}
	return nil
}

func duration(field string, d *types.Duration, min time.Duration) error {
	if d == nil {
		return nil
	}
	v, err := types.DurationFromProto(d)
	if err != nil {
		return fmt.Errorf("%s: %v", field, err)
	}
	if v < min {
		if min == 0 {
			return fmt.Errorf("%s must not be negative, got %s", field, v)
		}
		return fmt.Errorf("%s must be at least %s, got %s", field, min, v)
	}
	return nil
}

// ServiceSpec checks a service spec for create or update.
func ServiceSpec(s *api.ServiceSpec) error {
	if s == nil {
		return fmt.Errorf("service spec is required")
	}
	if err := Name(api.KindService, s.Annotations.Name); err != nil {
		return err
	}
	if err := serviceMode(&s.Mode); err != nil {
		return err
	}
	if err := TaskSpec(&s.Task); err != nil {
		return err
	}
	for _, u := range []struct {
		name string
		c    *api.UpdateConfig
	}{{"update", s.Update}, {"rollback", s.Rollback}} {
		if u.c == nil {
			continue
		}
		if err := duration(u.name+" delay", u.c.Delay, 0); err != nil {
			return err
		}
		if err := duration(u.name+" monitor", u.c.Monitor, 0); err != nil {
			return err
		}
		if u.c.MaxFailureRatio < 0 || u.c.MaxFailureRatio > 1 {
			return fmt.Errorf("%s max failure ratio must be between 0 and 1, got %g", u.name, u.c.MaxFailureRatio)
		}
	}
	if s.Endpoint != nil {
		if err := endpoint(s.Endpoint); err != nil {
			return err
		}
	}
	for _, n := range s.Networks {
		if n.Target == "" {
			return fmt.Errorf("a network attachment needs a network name or ID")
		}
	}
	return nil
}

func serviceMode(m *api.ServiceMode) error {
	switch v := m.Mode.(type) {
	case nil:
		return fmt.Errorf("service mode is required: replicated, global, replicated-job or global-job")
	case *api.ServiceMode_Replicated:
		if v.Replicated == nil {
			return fmt.Errorf("replicated mode needs a replica count")
		}
		if v.Replicated.Replicas > MaxReplicas {
			return fmt.Errorf("replicas %d is more than the limit of %d", v.Replicated.Replicas, MaxReplicas)
		}
	case *api.ServiceMode_ReplicatedJob:
		if v.ReplicatedJob == nil {
			return fmt.Errorf("replicated-job mode needs a completion count")
		}
		if v.ReplicatedJob.TotalCompletions > MaxReplicas || v.ReplicatedJob.MaxConcurrent > MaxReplicas {
			return fmt.Errorf("job completions and concurrency must be at most %d", MaxReplicas)
		}
	}
	return nil
}

// TaskSpec checks the task part of a service spec.
func TaskSpec(t *api.TaskSpec) error {
	c := t.Container
	if c == nil {
		return fmt.Errorf("a container spec is required")
	}
	if err := Image(c.Image); err != nil {
		return err
	}
	for _, e := range c.Env {
		if e == "" || strings.HasPrefix(e, "=") {
			return fmt.Errorf("environment entry %q is invalid: write KEY=VALUE", e)
		}
	}
	if c.Dir != "" && !path.IsAbs(c.Dir) {
		return fmt.Errorf("working directory %q must be an absolute path", c.Dir)
	}
	if err := duration("stop grace period", c.StopGracePeriod, 0); err != nil {
		return err
	}
	for i := range c.Mounts {
		if err := mount(&c.Mounts[i]); err != nil {
			return err
		}
	}
	if h := c.Healthcheck; h != nil {
		for _, f := range []struct {
			n string
			d *types.Duration
		}{{"health interval", h.Interval}, {"health timeout", h.Timeout}, {"health start period", h.StartPeriod}} {
			if err := duration(f.n, f.d, 0); err != nil {
				return err
			}
		}
		if h.Retries < 0 {
			return fmt.Errorf("health retries must not be negative, got %d", h.Retries)
		}
	}
	if r := t.Resources; r != nil {
		if err := resources(r); err != nil {
			return err
		}
	}
	if r := t.Restart; r != nil {
		if err := duration("restart delay", r.Delay, 0); err != nil {
			return err
		}
		if err := duration("restart window", r.Window, 0); err != nil {
			return err
		}
	}
	if p := t.Placement; p != nil {
		if _, err := constraint.ParseAll(p.Constraints); err != nil {
			return err
		}
		for _, pref := range p.Preferences {
			if !strings.HasPrefix(pref.Spread, "node.labels.") || len(pref.Spread) == len("node.labels.") {
				return fmt.Errorf("placement preference %q is invalid: write spread=node.labels.NAME", pref.Spread)
			}
		}
	}
	return nil
}

// Image checks an image reference's syntax (not whether it exists).
func Image(ref string) error {
	if ref == "" {
		return fmt.Errorf("an image is required (e.g. --image busybox:latest)")
	}
	if strings.TrimSpace(ref) != ref || strings.ContainsAny(ref, " \t\n") {
		return fmt.Errorf("image reference %q must not contain whitespace", ref)
	}
	name := ref
	if i := strings.Index(name, "@"); i >= 0 {
		if !strings.Contains(name[i:], ":") {
			return fmt.Errorf("image reference %q has an invalid digest: write NAME@sha256:HEX", ref)
		}
		name = name[:i]
	}
	if name == "" || strings.HasSuffix(name, ":") || strings.HasSuffix(name, "/") || strings.HasPrefix(name, "/") {
		return fmt.Errorf("image reference %q is invalid", ref)
	}
	repo := name
	if i := strings.LastIndex(name, ":"); i > strings.LastIndex(name, "/") {
		repo = name[:i]
	}
	// The registry host may hold capitals; the repository path must not.
	path := repo
	if i := strings.Index(repo, "/"); i >= 0 && strings.ContainsAny(repo[:i], ".:") {
		path = repo[i+1:]
	}
	if strings.ToLower(path) != path {
		return fmt.Errorf("image reference %q is invalid: repository names must be lowercase", ref)
	}
	return nil
}

func mount(m *api.Mount) error {
	if m.Target == "" || !path.IsAbs(m.Target) {
		return fmt.Errorf("mount target %q must be an absolute path", m.Target)
	}
	switch m.Type {
	case api.MountTypeBind:
		if !path.IsAbs(m.Source) {
			return fmt.Errorf("bind mount source %q must be an absolute path on the node", m.Source)
		}
	case api.MountTypeTmpfs:
		if m.Source != "" {
			return fmt.Errorf("a tmpfs mount takes no source, got %q", m.Source)
		}
		if m.TmpfsSizeBytes < 0 {
			return fmt.Errorf("tmpfs size must not be negative")
		}
	case api.MountTypeVolume:
		if m.Source != "" && !nameRE.MatchString(m.Source) {
			return fmt.Errorf("volume name %q is invalid", m.Source)
		}
	}
	return nil
}

func resources(r *api.ResourceRequirements) error {
	for _, x := range []struct {
		name string
		res  *api.Resources
	}{{"limit", r.Limits}, {"reservation", r.Reservations}} {
		if x.res == nil {
			continue
		}
		if x.res.NanoCPUs < 0 || x.res.MemoryBytes < 0 {
			return fmt.Errorf("CPU and memory %ss must not be negative", x.name)
		}
	}
	if l := r.Limits; l != nil && l.MemoryBytes != 0 && l.MemoryBytes < 6<<20 {
		return fmt.Errorf("memory limit %d bytes is below the minimum of 6MiB", l.MemoryBytes)
	}
	if l, res := r.Limits, r.Reservations; l != nil && res != nil {
		if l.MemoryBytes != 0 && res.MemoryBytes > l.MemoryBytes {
			return fmt.Errorf("memory reservation (%d bytes) is larger than the memory limit (%d bytes)", res.MemoryBytes, l.MemoryBytes)
		}
		if l.NanoCPUs != 0 && res.NanoCPUs > l.NanoCPUs {
			return fmt.Errorf("CPU reservation is larger than the CPU limit")
		}
	}
	return nil
}

func endpoint(e *api.EndpointSpec) error {
	seen := map[string]bool{}
	for _, p := range e.Ports {
		if p.TargetPort == 0 || p.TargetPort > 65535 {
			return fmt.Errorf("target port %d is out of range 1-65535", p.TargetPort)
		}
		if p.PublishedPort > 65535 {
			return fmt.Errorf("published port %d is out of range 1-65535", p.PublishedPort)
		}
		if e.Mode == api.ResolutionModeDNSRoundRobin && p.PublishMode == api.PublishModeIngress {
			return fmt.Errorf("port %d: endpoint mode dnsrr cannot publish through the routing mesh: use mode=host", p.PublishedPort)
		}
		if p.PublishedPort == 0 {
			continue
		}
		key := fmt.Sprintf("%d/%s", p.PublishedPort, p.Protocol)
		if seen[key] {
			return fmt.Errorf("published port %s is given twice", strings.ToLower(key))
		}
		seen[key] = true
	}
	return nil
}

// NodeSpec checks a node spec update.
func NodeSpec(s *api.NodeSpec) error {
	if s == nil {
		return fmt.Errorf("node spec is required")
	}
	if _, ok := api.NodeSpec_Availability_name[int32(s.Availability)]; !ok {
		return fmt.Errorf("node availability %d is invalid: use active, pause or drain", s.Availability)
	}
	if _, ok := api.NodeRole_name[int32(s.DesiredRole)]; !ok {
		return fmt.Errorf("node role %d is invalid: use worker or manager", s.DesiredRole)
	}
	if n := s.Annotations.Name; n != "" {
		return Name(api.KindNode, n)
	}
	return nil
}

// ClusterSpec checks a cluster spec update.
func ClusterSpec(s *api.ClusterSpec) error {
	if s == nil {
		return fmt.Errorf("cluster spec is required")
	}
	if s.Orchestration.TaskHistoryRetentionLimit < 0 {
		return fmt.Errorf("task history limit must not be negative, got %d", s.Orchestration.TaskHistoryRetentionLimit)
	}
	if err := duration("node certificate expiry", s.CAConfig.NodeCertExpiry, MinNodeCertExpiry); err != nil {
		return err
	}
	if err := duration("heartbeat period", s.Dispatcher.HeartbeatPeriod, time.Second); err != nil {
		return err
	}
	if s.Raft.SnapshotInterval == 0 {
		return fmt.Errorf("snapshot interval must be at least 1 entry")
	}
	return nil
}
