package main

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/gogo/protobuf/proto"
	"github.com/urfave/cli/v2"

	"github.com/flotilla/flotilla/api"
)

func serviceCommand() *cli.Command {
	return &cli.Command{
		Name:  "service",
		Usage: "manage services",
		Subcommands: []*cli.Command{
			{
				Name:      "create",
				Usage:     "create a service",
				ArgsUsage: "[-- COMMAND [ARG...]]",
				Description: "Creates a service and prints its ID. Arguments after the flags (after --)\n" +
					"become the container's command: all of them go into ContainerSpec.Command,\n" +
					"which replaces the image's entrypoint (there is no separate Args form).\n" +
					"Without --mode the service is replicated with 1 replica.",
				Flags:  serviceCreateFlags(),
				Action: serviceCreate,
			},
			{
				Name:   "ls",
				Usage:  "list services",
				Flags:  listFlags(),
				Action: serviceList,
			},
			{
				Name:      "inspect",
				Usage:     "print services as JSON",
				ArgsUsage: "SERVICE...",
				Action:    serviceInspect,
			},
			{
				Name:      "ps",
				Usage:     "list the tasks of services, newest first within each slot",
				ArgsUsage: "SERVICE...",
				Flags:     listFlags(),
				Action:    servicePs,
			},
			{
				Name:      "logs",
				Usage:     "print the logs of a service's tasks, from every node that runs them",
				ArgsUsage: "SERVICE",
				Flags:     logsFlags(),
				Action:    serviceLogs,
			},
			{
				Name:      "update",
				Usage:     "change a service; only the flags given change it",
				ArgsUsage: "SERVICE",
				Description: "Repeatable flags (--env, --label, --constraint, --mount, --publish, --network,\n" +
					"--secret, --config, --placement-pref) replace the whole list; --env-add/--env-rm\n" +
					"and --constraint-add/--constraint-rm edit it. Flags go before SERVICE.",
				Flags:  serviceUpdateFlags(),
				Action: serviceUpdate,
			},
			{
				Name:      "rollback",
				Usage:     "go back to a service's previous spec",
				ArgsUsage: "SERVICE",
				Action:    serviceRollback,
			},
			{
				Name:      "scale",
				Usage:     "set the number of replicas of replicated services",
				ArgsUsage: "SERVICE=N...",
				Action:    serviceScale,
			},
			{
				Name:      "rm",
				Aliases:   []string{"remove"},
				Usage:     "remove services",
				ArgsUsage: "SERVICE...",
				Action:    serviceRemove,
			},
		},
	}
}

func serviceCreate(c *cli.Context) error {
	name := strings.TrimSpace(c.String("name"))
	if name == "" {
		return errors.New("--name is required: swarmctl service create --name NAME --image IMAGE [flags] [-- COMMAND [ARG...]]")
	}
	if strings.TrimSpace(c.String("image")) == "" {
		return errors.New("--image is required: swarmctl service create --name NAME --image IMAGE [flags] [-- COMMAND [ARG...]]")
	}
	spec := newServiceSpec(name)
	if err := applyServiceFlags(c, spec); err != nil {
		return err
	}
	if c.NArg() > 0 {
		spec.Task.Container.Command = c.Args().Slice()
	}
	return withClient(c, func(cl *client) error {
		if err := resolveReferences(c, cl, spec); err != nil {
			return err
		}
		ctx, cancel := rpcContext(c)
		defer cancel()
		resp, err := cl.CreateService(ctx, &api.CreateServiceRequest{Spec: spec})
		if err != nil {
			return err
		}
		fmt.Fprintln(c.App.Writer, resp.Service.ID)
		return nil
	})
}

// resolveReferences fills the IDs of secret and config references that name
// their object; the manager accepts names and ID prefixes in Get.
func resolveReferences(c *cli.Context, cl *client, spec *api.ServiceSpec) error {
	ctr := spec.Task.Container
	for _, ref := range ctr.Secrets {
		if ref.SecretID != "" {
			continue
		}
		ctx, cancel := rpcContext(c)
		resp, err := cl.GetSecret(ctx, &api.GetSecretRequest{SecretID: ref.SecretName})
		cancel()
		if err != nil {
			return describe("--secret "+ref.SecretName, cl.explain(err))
		}
		if ref.Target == ref.SecretName {
			ref.Target = resp.Secret.Spec.Annotations.Name
		}
		ref.SecretID, ref.SecretName = resp.Secret.ID, resp.Secret.Spec.Annotations.Name
	}
	for _, ref := range ctr.Configs {
		if ref.ConfigID != "" {
			continue
		}
		ctx, cancel := rpcContext(c)
		resp, err := cl.GetConfig(ctx, &api.GetConfigRequest{ConfigID: ref.ConfigName})
		cancel()
		if err != nil {
			return describe("--config "+ref.ConfigName, cl.explain(err))
		}
		if ref.Target == ref.ConfigName {
			ref.Target = resp.Config.Spec.Annotations.Name
		}
		ref.ConfigID, ref.ConfigName = resp.Config.ID, resp.Config.Spec.Annotations.Name
	}
	return nil
}

func getService(c *cli.Context, cl *client, ref string) (*api.Service, error) {
	ctx, cancel := rpcContext(c)
	defer cancel()
	resp, err := cl.GetService(ctx, &api.GetServiceRequest{ServiceID: ref})
	if err != nil {
		return nil, cl.explain(err)
	}
	return resp.Service, nil
}

func serviceList(c *cli.Context) error {
	l, err := newLister(c)
	if err != nil {
		return err
	}
	if err := noArgs(c); err != nil {
		return err
	}
	return withClient(c, func(cl *client) error {
		ctx, cancel := rpcContext(c)
		defer cancel()
		resp, err := cl.ListServices(ctx, &api.ListServicesRequest{})
		if err != nil {
			return err
		}
		services := resp.Services
		sort.Slice(services, func(i, j int) bool {
			if a, b := services[i].Spec.Annotations.Name, services[j].Spec.Annotations.Name; a != b {
				return a < b
			}
			return services[i].ID < services[j].ID
		})
		byService := map[string][]*api.Task{}
		if !l.quiet && l.format == formatTable && len(services) > 0 {
			ids := make([]string, len(services))
			for i, s := range services {
				ids[i] = s.ID
			}
			tresp, err := cl.ListTasks(ctx, &api.ListTasksRequest{Filters: &api.ListTasksRequest_Filters{ServiceIDs: ids}})
			if err != nil {
				return err
			}
			for _, t := range tresp.Tasks {
				byService[t.ServiceID] = append(byService[t.ServiceID], t)
			}
		}
		objs := make([]proto.Message, len(services))
		ids := make([]string, len(services))
		rows := make([][]string, len(services))
		for i, s := range services {
			objs[i], ids[i] = redacted(s), s.ID
			rows[i] = []string{s.ID, s.Spec.Annotations.Name, modeName(s.Spec.Mode), replicasColumn(s, byService[s.ID]), imageColumn(s.Spec.Task.Container), portsColumn(s)}
		}
		return l.print(c.App.Writer, objs, ids, []string{"ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"}, rows)
	})
}

// replicasColumn shows running/desired tasks of a service, Docker style:
// "2/3", "1/1 (max 1 per node)" or, for jobs, "1/2 (3/5 completed)". A
// task counts as running when it runs and is meant to; desired is the
// replica count (replicated), the tasks meant to run (global), or what a job
// still has to run.
func replicasColumn(s *api.Service, tasks []*api.Task) string {
	var iteration uint64
	if s.JobStatus != nil {
		iteration = s.JobStatus.JobIteration
	}
	var running, meant, completed uint64
	for _, t := range tasks {
		job := isJob(s.Spec.Mode)
		if job && t.JobIteration != iteration {
			continue
		}
		live := t.DesiredState == api.TaskStateRunning || (job && t.DesiredState == api.TaskStateCompleted)
		if t.Status.State == api.TaskStateRunning && live {
			running++
		}
		if live {
			meant++
		}
		if t.Status.State == api.TaskStateCompleted {
			completed++
		}
	}
	switch m := s.Spec.Mode.Mode.(type) {
	case *api.ServiceMode_Replicated:
		out := fmt.Sprintf("%d/%d", running, m.Replicated.Replicas)
		if p := s.Spec.Task.Placement; p != nil && p.MaxReplicas > 0 {
			out += fmt.Sprintf(" (max %d per node)", p.MaxReplicas)
		}
		return out
	case *api.ServiceMode_Global:
		return fmt.Sprintf("%d/%d", running, meant)
	case *api.ServiceMode_ReplicatedJob:
		total := m.ReplicatedJob.TotalCompletions
		desired := uint64(0)
		if completed < total {
			desired = total - completed
		}
		if mc := m.ReplicatedJob.MaxConcurrent; mc > 0 && mc < desired {
			desired = mc
		}
		return fmt.Sprintf("%d/%d (%d/%d completed)", running, desired, completed, total)
	case *api.ServiceMode_GlobalJob:
		return fmt.Sprintf("%d/%d (%d/%d completed)", running, meant-completed, completed, meant)
	}
	return ""
}

func isJob(m api.ServiceMode) bool {
	switch m.Mode.(type) {
	case *api.ServiceMode_ReplicatedJob, *api.ServiceMode_GlobalJob:
		return true
	}
	return false
}

// imageColumn shows an image without its digest, as Docker does.
func imageColumn(c *api.ContainerSpec) string {
	if c == nil {
		return ""
	}
	img, _, _ := strings.Cut(c.Image, "@")
	return img
}

// portsColumn shows published ports as *:P->T/proto, the allocated ones
// when the manager has filled them in.
func portsColumn(s *api.Service) string {
	ports := []*api.PortConfig(nil)
	if s.Endpoint != nil && len(s.Endpoint.Ports) > 0 {
		ports = s.Endpoint.Ports
	} else if s.Spec.Endpoint != nil {
		ports = s.Spec.Endpoint.Ports
	}
	return formatPorts(ports, true)
}

// formatPorts shows ports as Docker does, *:P->T/proto ("*" for a port not
// chosen yet), marking host-mode ones when markHost is set.
func formatPorts(ports []*api.PortConfig, markHost bool) string {
	var out []string
	for _, p := range ports {
		published := "*"
		if p.PublishedPort != 0 {
			published = strconv.FormatUint(uint64(p.PublishedPort), 10)
		}
		col := fmt.Sprintf("*:%s->%d/%s", published, p.TargetPort, strings.ToLower(p.Protocol.String()))
		if markHost && p.PublishMode == api.PublishModeHost {
			col += " (host)"
		}
		out = append(out, col)
	}
	return strings.Join(out, ", ")
}

func serviceInspect(c *cli.Context) error {
	if err := minArgs(c, 1, "SERVICE..."); err != nil {
		return err
	}
	return withClient(c, func(cl *client) error {
		return inspectEach(c, func(ref string) (proto.Message, error) {
			ctx, cancel := rpcContext(c)
			defer cancel()
			// With the per-state task counts in status.
			resp, err := cl.GetService(ctx, &api.GetServiceRequest{ServiceID: ref, IncludeStatus: true})
			if err != nil {
				return nil, cl.explain(err)
			}
			return redacted(resp.Service), nil
		})
	})
}

func servicePs(c *cli.Context) error {
	l, err := newLister(c)
	if err != nil {
		return err
	}
	if err := minArgs(c, 1, "SERVICE..."); err != nil {
		return err
	}
	return withClient(c, func(cl *client) error {
		var ids []string
		for _, ref := range c.Args().Slice() {
			s, err := getService(c, cl, ref)
			if err != nil {
				return err
			}
			ids = append(ids, s.ID)
		}
		return listTasks(c, cl, l, &api.ListTasksRequest_Filters{ServiceIDs: ids})
	})
}

// serviceFlagsGiven says whether update was given anything to change.
func serviceFlagsGiven(c *cli.Context) bool {
	for _, f := range serviceUpdateFlags() {
		if c.IsSet(f.Names()[0]) {
			return true
		}
	}
	return false
}

func serviceUpdate(c *cli.Context) error {
	if err := exactArgs(c, 1, "SERVICE"); err != nil {
		return err
	}
	if !serviceFlagsGiven(c) {
		return errors.New("nothing to update: give the flags to change, or --force to restart every task (see 'swarmctl service update --help')")
	}
	// Check every value before anything is sent; what depends on the
	// current spec (--replicas of a global service) is checked again below.
	if err := applyServiceFlags(c, newServiceSpec("check")); err != nil {
		return err
	}
	ref := c.Args().First()
	return withClient(c, func(cl *client) error {
		s, err := getService(c, cl, ref)
		if err != nil {
			return err
		}
		spec := s.Spec.Copy()
		if err := applyServiceFlags(c, spec); err != nil {
			return err
		}
		if err := resolveReferences(c, cl, spec); err != nil {
			return err
		}
		ctx, cancel := rpcContext(c)
		defer cancel()
		_, err = cl.UpdateService(ctx, &api.UpdateServiceRequest{ServiceID: s.ID, ServiceVersion: s.Meta.Version, Spec: spec})
		if err != nil {
			return err
		}
		fmt.Fprintln(c.App.Writer, ref)
		return nil
	})
}

func serviceRollback(c *cli.Context) error {
	if err := exactArgs(c, 1, "SERVICE"); err != nil {
		return err
	}
	ref := c.Args().First()
	return withClient(c, func(cl *client) error {
		s, err := getService(c, cl, ref)
		if err != nil {
			return err
		}
		if s.PreviousSpec == nil {
			return fmt.Errorf("service %s has no previous spec to roll back to", s.Spec.Annotations.Name)
		}
		ctx, cancel := rpcContext(c)
		defer cancel()
		_, err = cl.UpdateService(ctx, &api.UpdateServiceRequest{
			ServiceID:      s.ID,
			ServiceVersion: s.Meta.Version,
			Spec:           &s.Spec,
			Rollback:       api.UpdateServiceRollbackPrevious,
		})
		if err != nil {
			return err
		}
		fmt.Fprintln(c.App.Writer, ref)
		return nil
	})
}

// scaleArg is one SERVICE=N of service scale.
type scaleArg struct {
	service  string
	replicas uint64
}

func parseScaleArgs(args []string) ([]scaleArg, error) {
	out := make([]scaleArg, 0, len(args))
	for _, a := range args {
		name, n, ok := strings.Cut(a, "=")
		replicas, err := strconv.ParseUint(n, 10, 64)
		if !ok || name == "" || err != nil {
			return nil, fmt.Errorf("invalid argument %q: expected SERVICE=N with N a non-negative integer", a)
		}
		out = append(out, scaleArg{service: name, replicas: replicas})
	}
	return out, nil
}

func serviceScale(c *cli.Context) error {
	if err := minArgs(c, 1, "SERVICE=N..."); err != nil {
		return err
	}
	scales, err := parseScaleArgs(c.Args().Slice())
	if err != nil {
		return err
	}
	return withClient(c, func(cl *client) error {
		failed := false
		for _, sc := range scales {
			err := cl.explain(scaleOne(c, cl, sc))
			if isUnreachable(err) {
				return err
			}
			if err != nil {
				fmt.Fprintln(c.App.ErrWriter, "Error: "+errorMessage(err))
				failed = true
				continue
			}
			fmt.Fprintf(c.App.Writer, "%s scaled to %d\n", sc.service, sc.replicas)
		}
		if failed {
			return errReported
		}
		return nil
	})
}

func scaleOne(c *cli.Context, cl *client, sc scaleArg) error {
	s, err := getService(c, cl, sc.service)
	if err != nil {
		return err
	}
	if _, ok := s.Spec.Mode.Mode.(*api.ServiceMode_Replicated); !ok {
		return fmt.Errorf("service %s is %s: only replicated services can be scaled", s.Spec.Annotations.Name, modeName(s.Spec.Mode))
	}
	spec := s.Spec.Copy()
	spec.Mode.Mode = &api.ServiceMode_Replicated{Replicated: &api.ReplicatedService{Replicas: sc.replicas}}
	ctx, cancel := rpcContext(c)
	defer cancel()
	_, err = cl.UpdateService(ctx, &api.UpdateServiceRequest{ServiceID: s.ID, ServiceVersion: s.Meta.Version, Spec: spec})
	return err
}

func serviceRemove(c *cli.Context) error {
	if err := minArgs(c, 1, "SERVICE..."); err != nil {
		return err
	}
	return withClient(c, func(cl *client) error {
		return forEach(c, func(ref string) (string, error) {
			s, err := getService(c, cl, ref)
			if err != nil {
				return "", err
			}
			ctx, cancel := rpcContext(c)
			defer cancel()
			if _, err := cl.RemoveService(ctx, &api.RemoveServiceRequest{ServiceID: s.ID}); err != nil {
				return "", cl.explain(err)
			}
			return s.Spec.Annotations.Name, nil
		})
	})
}
