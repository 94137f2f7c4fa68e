package containerd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/cap"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/moby/sys/signal"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/flotilla/flotilla/api"
)

const (
	// cpuPeriod is the CFS period of a CPU limit, in microseconds (Docker's).
	cpuPeriod = 100000
	// minMemoryLimit is the smallest memory limit a container may have
	// (Docker's): below it the runtime itself cannot start the process.
	minMemoryLimit = 6 << 20
	// hostnameLen is how much of the task ID makes the default hostname.
	hostnameLen = 12
)

// specInput is what the OCI spec is made from, besides the task.
type specInput struct {
	task   *api.Task
	image  ocispec.ImageConfig
	mounts []specs.Mount // resolved: the task's, then the generated files
	// netns is the path of the task's network namespace; empty: a new one
	// with only loopback.
	netns  string
	cgroup string
}

// hostname is the container's hostname: the spec's, else the task ID's
// prefix (as Docker uses the container ID's).
func hostname(t *api.Task) string {
	if h := t.Spec.Container.Hostname; h != "" {
		return h
	}
	if len(t.ID) > hostnameLen {
		return t.ID[:hostnameLen]
	}
	return t.ID
}

// processArgs is the container's command line: Command replaces the image's
// entrypoint (and then its cmd too, as `docker run --entrypoint` does), Args
// replaces its cmd.
func processArgs(c *api.ContainerSpec, img ocispec.ImageConfig) ([]string, error) {
	var args []string
	switch {
	case len(c.Command) > 0:
		args = append(slices.Clone(c.Command), c.Args...)
	case len(c.Args) > 0:
		args = append(slices.Clone(img.Entrypoint), c.Args...)
	default:
		args = append(slices.Clone(img.Entrypoint), img.Cmd...)
	}
	if len(args) == 0 {
		return nil, errors.New("no command to run: the image has no entrypoint or command, and the service gives none")
	}
	return args, nil
}

// stopSignal is the signal that asks the container to stop: the spec's,
// else the image's, else SIGTERM.
func stopSignal(c *api.ContainerSpec, img ocispec.ImageConfig) (syscall.Signal, error) {
	s := c.StopSignal
	if s == "" {
		s = img.StopSignal
	}
	if s == "" {
		return syscall.SIGTERM, nil
	}
	sig, err := signal.ParseSignal(s)
	if err != nil {
		return 0, fmt.Errorf("stop signal %q: %w", s, err)
	}
	return sig, nil
}

// cpuQuota is the CFS quota (per cpuPeriod) of a limit in nano-CPUs.
func cpuQuota(nanoCPUs int64) int64 {
	q := nanoCPUs * cpuPeriod / 1e9
	if q < 1000 {
		q = 1000 // the kernel's minimum
	}
	return q
}

// capabilityList normalizes capability names ("net_admin", "CAP_NET_ADMIN")
// to the kernel's; "ALL" stays as is.
func capabilityList(caps []string) ([]string, error) {
	known := cap.Known()
	var out []string
	for _, c := range caps {
		c = strings.ToUpper(strings.TrimSpace(c))
		if c == "ALL" {
			out = append(out, c)
			continue
		}
		if !strings.HasPrefix(c, "CAP_") {
			c = "CAP_" + c
		}
		if !slices.Contains(known, c) {
			return nil, fmt.Errorf("capability %q is unknown", c)
		}
		out = append(out, c)
	}
	return out, nil
}

// capabilities applies the spec's drops, then its adds, to the default set
// (Docker's order: --cap-drop ALL --cap-add X leaves X alone).
func capabilities(add, drop []string) (oci.SpecOpts, error) {
	addL, err := capabilityList(add)
	if err != nil {
		return nil, fmt.Errorf("capability_add: %w", err)
	}
	dropL, err := capabilityList(drop)
	if err != nil {
		return nil, fmt.Errorf("capability_drop: %w", err)
	}
	return func(ctx context.Context, cl oci.Client, c *containers.Container, s *oci.Spec) error {
		var ops []oci.SpecOpts
		if slices.Contains(dropL, "ALL") {
			ops = append(ops, oci.WithCapabilities(nil))
		} else if len(dropL) > 0 {
			ops = append(ops, oci.WithDroppedCapabilities(dropL))
		}
		if slices.Contains(addL, "ALL") {
			ops = append(ops, oci.WithCapabilities(cap.Known()))
		} else if len(addL) > 0 {
			ops = append(ops, oci.WithAddedCapabilities(addL))
		}
		return oci.ApplyOpts(ctx, cl, c, s, ops...)
	}, nil
}

// withSysctls sets kernel parameters in the container's namespaces.
func withSysctls(sysctls map[string]string) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		if s.Linux == nil {
			s.Linux = &specs.Linux{}
		}
		if s.Linux.Sysctl == nil {
			s.Linux.Sysctl = map[string]string{}
		}
		for k, v := range sysctls {
			s.Linux.Sysctl[k] = v
		}
		return nil
	}
}

// withNoSwap forbids swapping beyond the memory limit where the kernel
// accounts swap (memory+swap = memory), as Docker does.
func withNoSwap(limit int64) oci.SpecOpts {
	return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		if _, err := os.Stat("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes"); err != nil {
			return nil
		}
		if s.Linux.Resources.Memory == nil {
			s.Linux.Resources.Memory = &specs.LinuxMemory{}
		}
		s.Linux.Resources.Memory.Swap = &limit
		return nil
	}
}

// specOpts builds the container's OCI spec from the image's config and the
// task's container spec; img is what oci.WithImageConfig reads.
func specOpts(in specInput, img oci.Image) ([]oci.SpecOpts, error) {
	c := in.task.Spec.Container
	if c.Init {
		return nil, errors.New("init: an init process in the container is not supported by the containerd executor yet: update the service without --init (a shell or the program itself is PID 1)")
	}
	args, err := processArgs(c, in.image)
	if err != nil {
		return nil, err
	}
	opts := []oci.SpecOpts{
		oci.WithDefaultUnixDevices,
		oci.WithImageConfig(img), // env, cwd, user (and its groups) from the image
		oci.WithProcessArgs(args...),
		oci.WithHostname(hostname(in.task)),
		oci.WithCgroup(in.cgroup),
		// The container's own cgroup, read-only, as Docker mounts it
		// (runtimes size themselves from its limits).
		oci.WithMounts([]specs.Mount{{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}}}),
	}
	if len(c.Env) > 0 {
		opts = append(opts, oci.WithEnv(c.Env))
	}
	if c.Dir != "" {
		if !path.IsAbs(c.Dir) {
			return nil, fmt.Errorf("working directory %q: want an absolute path", c.Dir)
		}
		opts = append(opts, oci.WithProcessCwd(c.Dir))
	}
	if c.User != "" {
		name, _, _ := strings.Cut(c.User, ":")
		opts = append(opts, withUser(c.User), oci.WithAdditionalGIDs(name))
	}
	if len(c.Groups) > 0 {
		opts = append(opts, withGroups(c.Groups))
	}
	if c.TTY {
		opts = append(opts, oci.WithTTY)
	}
	if c.ReadOnly {
		opts = append(opts, oci.WithRootFSReadonly())
	}
	if in.netns != "" {
		opts = append(opts, oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: in.netns}))
	}
	if len(in.mounts) > 0 {
		opts = append(opts, oci.WithMounts(in.mounts))
	}
	if r := in.task.Spec.Resources; r != nil && r.Limits != nil {
		if n := r.Limits.NanoCPUs; n > 0 {
			opts = append(opts, oci.WithCPUCFS(cpuQuota(n), cpuPeriod))
		}
		if m := r.Limits.MemoryBytes; m > 0 {
			if m < minMemoryLimit {
				return nil, fmt.Errorf("memory limit %s is below the minimum of %s", humanBytes(m), humanBytes(minMemoryLimit))
			}
			opts = append(opts, oci.WithMemoryLimit(uint64(m)), withNoSwap(m))
		}
	}
	if len(c.CapabilityAdd) > 0 || len(c.CapabilityDrop) > 0 {
		o, err := capabilities(c.CapabilityAdd, c.CapabilityDrop)
		if err != nil {
			return nil, err
		}
		opts = append(opts, o)
	}
	if len(c.Sysctls) > 0 {
		opts = append(opts, withSysctls(c.Sysctls))
	}
	return opts, nil
}

// withUser runs the process as user ("name", "uid", "name:group",
// "uid:gid"), names resolved from the image's /etc/passwd and /etc/group,
// with an error that says so when they are not there.
func withUser(user string) oci.SpecOpts {
	return func(ctx context.Context, cl oci.Client, c *containers.Container, s *oci.Spec) error {
		if err := oci.WithUser(user)(ctx, cl, c, s); err != nil {
			if errors.Is(err, oci.ErrNoUsersFound) || errors.Is(err, oci.ErrNoGroupsFound) || errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("user %q is not in the image's /etc/passwd or /etc/group: use a numeric uid[:gid] or a user the image has", user)
			}
			return fmt.Errorf("user %q: %w", user, err)
		}
		return nil
	}
}

// withGroups adds supplementary groups (names from the image's /etc/group,
// or numeric GIDs).
func withGroups(groups []string) oci.SpecOpts {
	return func(ctx context.Context, cl oci.Client, c *containers.Container, s *oci.Spec) error {
		if err := oci.WithAppendAdditionalGroups(groups...)(ctx, cl, c, s); err != nil {
			return fmt.Errorf("groups %s: %w (use numeric GIDs or groups the image's /etc/group has)", strings.Join(groups, ","), err)
		}
		return nil
	}
}

var volumeNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

// mountPlan is the task's mounts, resolved on this node.
type mountPlan struct {
	mounts []specs.Mount
	// mkdirs are directories to create (volumes) before the container is.
	mkdirs []string
}

// planMounts resolves the task's mounts: bind sources must exist on the node,
// named volumes live in volumesDir/NAME (kept after the task), anonymous
// ones in taskDir/volumes/N (removed with it), tmpfs get their size and
// mode. Errors say which mount is wrong and reject the task.
func planMounts(mounts []api.Mount, volumesDir, taskDir string) (mountPlan, error) {
	var p mountPlan
	seen := map[string]bool{}
	for i, m := range mounts {
		target := path.Clean(m.Target)
		if m.Target == "" || !path.IsAbs(target) {
			return p, fmt.Errorf("mount %d: target %q: want an absolute path in the container", i+1, m.Target)
		}
		if seen[target] {
			return p, fmt.Errorf("mount %d: target %s is mounted twice", i+1, target)
		}
		seen[target] = true
		switch m.Type {
		case api.MountTypeBind:
			if m.Source == "" || !filepath.IsAbs(m.Source) {
				return p, fmt.Errorf("bind mount %s: source %q: want an absolute path on the node", target, m.Source)
			}
			if _, err := os.Stat(m.Source); err != nil {
				if errors.Is(err, os.ErrNotExist) {
					return p, fmt.Errorf("bind mount %s: source %s does not exist on this node: create it, or constrain the service to nodes that have it", target, m.Source)
				}
				return p, fmt.Errorf("bind mount %s: source %s: %w", target, m.Source, err)
			}
			p.mounts = append(p.mounts, bindMount(m.Source, target, m.ReadOnly))
		case api.MountTypeVolume:
			var dir string
			if m.Source == "" {
				dir = filepath.Join(taskDir, "volumes", strconv.Itoa(i))
			} else {
				if !volumeNameRE.MatchString(m.Source) {
					return p, fmt.Errorf("volume mount %s: volume name %q: use letters, digits, '_', '.' and '-' (a path makes a bind mount)", target, m.Source)
				}
				dir = filepath.Join(volumesDir, m.Source)
			}
			p.mkdirs = append(p.mkdirs, dir)
			p.mounts = append(p.mounts, bindMount(dir, target, m.ReadOnly))
		case api.MountTypeTmpfs:
			opts := []string{"nosuid", "nodev", "noexec"}
			if m.TmpfsSizeBytes < 0 {
				return p, fmt.Errorf("tmpfs mount %s: negative size", target)
			}
			if m.TmpfsSizeBytes > 0 {
				opts = append(opts, "size="+strconv.FormatInt(m.TmpfsSizeBytes, 10))
			}
			if m.TmpfsMode != 0 {
				if m.TmpfsMode < 0 || m.TmpfsMode > 0o7777 {
					return p, fmt.Errorf("tmpfs mount %s: mode %o: want permission bits", target, m.TmpfsMode)
				}
				opts = append(opts, "mode="+strconv.FormatInt(m.TmpfsMode, 8))
			}
			if m.ReadOnly {
				opts = append(opts, "ro")
			}
			p.mounts = append(p.mounts, specs.Mount{Destination: target, Type: "tmpfs", Source: "tmpfs", Options: opts})
		default:
			return p, fmt.Errorf("mount %d (%s): type %v is not supported", i+1, target, m.Type)
		}
	}
	return p, nil
}

func bindMount(source, target string, readOnly bool) specs.Mount {
	opts := []string{"rbind", "rprivate"}
	if readOnly {
		opts = append(opts, "ro")
	}
	return specs.Mount{Destination: target, Type: "bind", Source: source, Options: opts}
}

// sortMounts orders mounts so that a parent is mounted before what is
// mounted inside it (Docker's order).
func sortMounts(ms []specs.Mount) {
	sort.SliceStable(ms, func(i, j int) bool {
		return strings.Count(path.Clean(ms[i].Destination), "/") < strings.Count(path.Clean(ms[j].Destination), "/")
	})
}
