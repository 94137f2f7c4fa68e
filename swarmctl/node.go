package main

import (
	"fmt"
	"sort"

	"github.com/gogo/protobuf/proto"
	"github.com/urfave/cli/v2"

	"github.com/flotilla/flotilla/api"
)

func nodeCommand() *cli.Command {
	return &cli.Command{
		Name:  "node",
		Usage: "manage nodes",
		Subcommands: []*cli.Command{
			{Name: "ls", Usage: "list nodes", Flags: listFlags(), Action: nodeList},
			{Name: "inspect", Usage: "print nodes as JSON", ArgsUsage: "NODE...", Action: nodeInspect},
			availabilityCommand("activate", "let a node take new tasks", api.NodeAvailabilityActive),
			availabilityCommand("pause", "keep a node's tasks but give it no new ones", api.NodeAvailabilityPause),
			availabilityCommand("drain", "move a node's tasks to other nodes", api.NodeAvailabilityDrain),
			roleCommand("promote", "make a node a manager", api.NodeRoleManager),
			roleCommand("demote", "make a manager a worker", api.NodeRoleWorker),
			{
				Name:      "update",
				Usage:     "change a node's labels",
				ArgsUsage: "NODE",
				Flags: []cli.Flag{
					list("label-add", "add or change a node label `K=V`"),
					list("label-rm", "remove the node label `K`"),
				},
				Action: nodeUpdate,
			},
			{
				Name:      "rm",
				Aliases:   []string{"remove"},
				Usage:     "remove nodes from the cluster",
				ArgsUsage: "NODE...",
				Flags: []cli.Flag{
					&cli.BoolFlag{Name: "force", Aliases: []string{"f"}, Usage: "remove a node even if it is still ready"},
				},
				Action: nodeRemove,
			},
		},
	}
}

func getNode(c *cli.Context, cl *client, ref string) (*api.Node, error) {
	ctx, cancel := rpcContext(c)
	defer cancel()
	resp, err := cl.GetNode(ctx, &api.GetNodeRequest{NodeID: ref})
	if err != nil {
		return nil, cl.explain(err)
	}
	return resp.Node, nil
}

// updateNodeSpec reads a node, lets change edit its spec and writes it back
// with the version read. change returns false when nothing needs to change.
func updateNodeSpec(c *cli.Context, cl *client, ref string, change func(n *api.Node, spec *api.NodeSpec) (bool, error)) (*api.Node, bool, error) {
	n, err := getNode(c, cl, ref)
	if err != nil {
		return nil, false, err
	}
	spec := n.Spec.Copy()
	changed, err := change(n, spec)
	if err != nil || !changed {
		return n, false, err
	}
	ctx, cancel := rpcContext(c)
	defer cancel()
	if _, err := cl.UpdateNode(ctx, &api.UpdateNodeRequest{NodeID: n.ID, NodeVersion: n.Meta.Version, Spec: spec}); err != nil {
		return n, false, cl.explain(err)
	}
	return n, true, nil
}

func nodeList(c *cli.Context) error {
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
		resp, err := cl.ListNodes(ctx, &api.ListNodesRequest{})
		if err != nil {
			return err
		}
		nodes := resp.Nodes
		sortNodes(nodes)
		objs := make([]proto.Message, len(nodes))
		ids := make([]string, len(nodes))
		for i, n := range nodes {
			objs[i], ids[i] = n, n.ID
		}
		return l.print(c.App.Writer, objs, ids,
			[]string{"ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS"}, nodeTable(nodes))
	})
}

// sortNodes orders nodes by hostname, then ID.
func sortNodes(nodes []*api.Node) {
	sort.Slice(nodes, func(i, j int) bool {
		if a, b := nodeHostname(nodes[i]), nodeHostname(nodes[j]); a != b {
			return a < b
		}
		return nodes[i].ID < nodes[j].ID
	})
}

func nodeTable(nodes []*api.Node) [][]string {
	rows := make([][]string, len(nodes))
	for i, n := range nodes {
		rows[i] = []string{n.ID, nodeHostname(n), pretty(n.Status.State.String()), pretty(n.Spec.Availability.String()), managerStatus(n)}
	}
	return rows
}

// nodeHostname is the node's reported hostname, else its name.
func nodeHostname(n *api.Node) string {
	if n.Description != nil && n.Description.Hostname != "" {
		return n.Description.Hostname
	}
	return n.GetName()
}

// managerStatus is Docker's MANAGER STATUS column: Leader, Reachable,
// Unreachable (Unknown while not yet known), empty for workers.
func managerStatus(n *api.Node) string {
	m := n.ManagerStatus
	switch {
	case m == nil:
		return ""
	case m.Leader:
		return "Leader"
	default:
		return pretty(m.Reachability.String())
	}
}

func nodeInspect(c *cli.Context) error {
	if err := minArgs(c, 1, "NODE..."); err != nil {
		return err
	}
	return withClient(c, func(cl *client) error {
		return inspectEach(c, func(ref string) (proto.Message, error) {
			return getNode(c, cl, ref)
		})
	})
}

func availabilityCommand(name, usage string, a api.NodeSpec_Availability) *cli.Command {
	return &cli.Command{
		Name:      name,
		Usage:     usage,
		ArgsUsage: "NODE...",
		Action: func(c *cli.Context) error {
			if err := minArgs(c, 1, "NODE..."); err != nil {
				return err
			}
			return withClient(c, func(cl *client) error {
				return forEach(c, func(ref string) (string, error) {
					_, _, err := updateNodeSpec(c, cl, ref, func(_ *api.Node, spec *api.NodeSpec) (bool, error) {
						if spec.Availability == a {
							return false, nil
						}
						spec.Availability = a
						return true, nil
					})
					return ref, err
				})
			})
		},
	}
}

func roleCommand(name, usage string, role api.NodeRole) *cli.Command {
	return &cli.Command{
		Name:      name,
		Usage:     usage,
		ArgsUsage: "NODE...",
		Action: func(c *cli.Context) error {
			if err := minArgs(c, 1, "NODE..."); err != nil {
				return err
			}
			return withClient(c, func(cl *client) error {
				return forEach(c, func(ref string) (string, error) {
					n, changed, err := updateNodeSpec(c, cl, ref, func(n *api.Node, spec *api.NodeSpec) (bool, error) {
						if spec.DesiredRole == role {
							return false, nil
						}
						spec.DesiredRole = role
						return true, nil
					})
					if err != nil {
						return "", err
					}
					switch {
					case !changed && role == api.NodeRoleManager:
						return fmt.Sprintf("Node %s is already a manager.", n.GetName()), nil
					case !changed:
						return fmt.Sprintf("Node %s is already a worker.", n.GetName()), nil
					case role == api.NodeRoleManager:
						return fmt.Sprintf("Node %s promoted to a manager in the swarm.", n.GetName()), nil
					default:
						return fmt.Sprintf("Manager %s demoted in the swarm.", n.GetName()), nil
					}
				})
			})
		},
	}
}

// editLabels removes the keys in rm, then sets those in add.
func editLabels(labels map[string]string, add map[string]string, rm []string) map[string]string {
	out := map[string]string{}
	for k, v := range labels {
		out[k] = v
	}
	for _, k := range rm {
		delete(out, k)
	}
	for k, v := range add {
		out[k] = v
	}
	return out
}

func nodeUpdate(c *cli.Context) error {
	if err := exactArgs(c, 1, "NODE"); err != nil {
		return err
	}
	if !anySet(c, "label-add", "label-rm") {
		return fmt.Errorf("nothing to update: give --label-add K=V or --label-rm K (see 'swarmctl node update --help')")
	}
	add, err := parseLabels("label-add", c.StringSlice("label-add"))
	if err != nil {
		return err
	}
	rm := c.StringSlice("label-rm")
	for _, k := range rm {
		if k == "" {
			return invalid("label-rm", k, "a label key")
		}
	}
	ref := c.Args().First()
	return withClient(c, func(cl *client) error {
		_, _, err := updateNodeSpec(c, cl, ref, func(n *api.Node, spec *api.NodeSpec) (bool, error) {
			for _, k := range rm {
				if _, ok := spec.Annotations.Labels[k]; !ok {
					return false, fmt.Errorf("--label-rm %s: node %s has no such label", k, n.GetName())
				}
			}
			spec.Annotations.Labels = editLabels(spec.Annotations.Labels, add, rm)
			return true, nil
		})
		if err != nil {
			return err
		}
		fmt.Fprintln(c.App.Writer, ref)
		return nil
	})
}

func nodeRemove(c *cli.Context) error {
	if err := minArgs(c, 1, "NODE..."); err != nil {
		return err
	}
	force := c.Bool("force")
	return withClient(c, func(cl *client) error {
		return forEach(c, func(ref string) (string, error) {
			ctx, cancel := rpcContext(c)
			defer cancel()
			if _, err := cl.RemoveNode(ctx, &api.RemoveNodeRequest{NodeID: ref, Force: force}); err != nil {
				return "", cl.explain(err)
			}
			return ref, nil
		})
	})
}
