package main

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/gogo/protobuf/proto"
	"github.com/urfave/cli/v2"

	"github.com/flotilla/flotilla/api"
)

func networkCommand() *cli.Command {
	return &cli.Command{
		Name:  "network",
		Usage: "manage networks",
		Subcommands: []*cli.Command{
			{
				Name:      "create",
				Usage:     "create a network",
				ArgsUsage: "[NAME]",
				Flags: []cli.Flag{
					str("name", "network `NAME` (or give it as the argument)"),
					&cli.StringFlag{Name: "driver", Value: "overlay", Usage: "network `DRIVER`"},
					str("subnet", "subnet `CIDR` of the network, e.g. 10.0.9.0/24 (default: allocated by the cluster)"),
					&cli.BoolFlag{Name: "attachable", Usage: "let standalone containers attach"},
					list("label", "network label `K=V`"),
				},
				Action: networkCreate,
			},
			{Name: "ls", Usage: "list networks", Flags: listFlags(), Action: networkList},
			{Name: "inspect", Usage: "print networks as JSON", ArgsUsage: "NETWORK...", Action: networkInspect},
			{Name: "rm", Aliases: []string{"remove"}, Usage: "remove networks", ArgsUsage: "NETWORK...", Action: networkRemove},
		},
	}
}

// objectName takes the name of a new object from --name or the one argument.
func objectName(c *cli.Context, what string) (string, error) {
	if err := trailingFlag(c, 0); err != nil {
		return "", err
	}
	name := strings.TrimSpace(c.String("name"))
	switch {
	case c.NArg() > 1:
		return "", fmt.Errorf("%q takes one %s name (see '%s --help')", helpName(c), what, helpName(c))
	case c.NArg() == 1 && name != "" && name != c.Args().First():
		return "", fmt.Errorf("two names given: --name %s and %s", name, c.Args().First())
	case c.NArg() == 1:
		name = c.Args().First()
	}
	if name == "" {
		return "", fmt.Errorf("--name is required (see '%s --help')", helpName(c))
	}
	return name, nil
}

// networkSpec builds a network spec from the create flags.
func networkSpec(fv flagValues, name string) (*api.NetworkSpec, error) {
	spec := &api.NetworkSpec{Annotations: api.Annotations{Name: name}}
	driver := strings.TrimSpace(fv.String("driver"))
	if driver == "" {
		return nil, errors.New("--driver: expected a driver name like overlay")
	}
	spec.DriverConfig = &api.Driver{Name: driver}
	if fv.IsSet("subnet") {
		subnet, err := parseCIDR("subnet", fv.String("subnet"))
		if err != nil {
			return nil, err
		}
		spec.IPAM = &api.IPAMOptions{Configs: []*api.IPAMConfig{{Subnet: subnet}}}
	}
	spec.Attachable = fv.Bool("attachable")
	if fv.IsSet("label") {
		labels, err := parseLabels("label", fv.StringSlice("label"))
		if err != nil {
			return nil, err
		}
		spec.Annotations.Labels = labels
	}
	return spec, nil
}

func networkCreate(c *cli.Context) error {
	name, err := objectName(c, "network")
	if err != nil {
		return err
	}
	spec, err := networkSpec(c, name)
	if err != nil {
		return err
	}
	return withClient(c, func(cl *client) error {
		ctx, cancel := rpcContext(c)
		defer cancel()
		resp, err := cl.CreateNetwork(ctx, &api.CreateNetworkRequest{Spec: spec})
		if err != nil {
			return err
		}
		fmt.Fprintln(c.App.Writer, resp.Network.ID)
		return nil
	})
}

func networkList(c *cli.Context) error {
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
		resp, err := cl.ListNetworks(ctx, &api.ListNetworksRequest{})
		if err != nil {
			return err
		}
		nets := resp.Networks
		sort.Slice(nets, func(i, j int) bool {
			if a, b := nets[i].Spec.Annotations.Name, nets[j].Spec.Annotations.Name; a != b {
				return a < b
			}
			return nets[i].ID < nets[j].ID
		})
		objs := make([]proto.Message, len(nets))
		ids := make([]string, len(nets))
		rows := make([][]string, len(nets))
		for i, n := range nets {
			objs[i], ids[i] = n, n.ID
			driver := ""
			if n.Spec.DriverConfig != nil {
				driver = n.Spec.DriverConfig.Name
			}
			rows[i] = []string{n.ID, n.Spec.Annotations.Name, driver, subnets(n)}
		}
		return l.print(c.App.Writer, objs, ids, []string{"ID", "NAME", "DRIVER", "SUBNET"}, rows)
	})
}

// subnets lists a network's subnets: the allocated ones, else the asked ones.
func subnets(n *api.Network) string {
	ipam := n.IPAM
	if ipam == nil || len(ipam.Configs) == 0 {
		ipam = n.Spec.IPAM
	}
	if ipam == nil {
		return ""
	}
	var out []string
	for _, cfg := range ipam.Configs {
		out = append(out, cfg.Subnet)
	}
	return strings.Join(out, ",")
}

func networkInspect(c *cli.Context) error {
	if err := minArgs(c, 1, "NETWORK..."); err != nil {
		return err
	}
	return withClient(c, func(cl *client) error {
		return inspectEach(c, func(ref string) (proto.Message, error) {
			ctx, cancel := rpcContext(c)
			defer cancel()
			resp, err := cl.GetNetwork(ctx, &api.GetNetworkRequest{NetworkID: ref})
			if err != nil {
				return nil, cl.explain(err)
			}
			return resp.Network, nil
		})
	})
}

func networkRemove(c *cli.Context) error {
	if err := minArgs(c, 1, "NETWORK..."); err != nil {
		return err
	}
	return withClient(c, func(cl *client) error {
		return forEach(c, func(ref string) (string, error) {
			ctx, cancel := rpcContext(c)
			defer cancel()
			if _, err := cl.RemoveNetwork(ctx, &api.RemoveNetworkRequest{NetworkID: ref}); err != nil {
				return "", cl.explain(err)
			}
			return ref, nil
		})
	})
}
