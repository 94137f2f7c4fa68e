package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/flotilla/flotilla/api"
)

func clusterCommand() *cli.Command {
	return &cli.Command{
		Name:  "cluster",
		Usage: "inspect and configure the cluster",
		Subcommands: []*cli.Command{
			{Name: "inspect", Usage: "print the cluster as JSON (without its keys)", Action: clusterInspect},
			{
				Name:  "update",
				Usage: "change the cluster's configuration; only the flags given change it",
				Flags: []cli.Flag{
					str("cert-expiry", "validity `D` of node certificates, e.g. 2160h"),
					str("heartbeat-period", "period `D` at which agents report to the dispatcher, e.g. 5s"),
					str("task-history-limit", "`N` old tasks kept per slot"),
					str("snapshot-interval", "`N` raft log entries between snapshots"),
					&cli.BoolFlag{Name: "autolock", Usage: "lock managers' keys with an unlock key (--autolock=true|false)"},
					str("rotate-join-token", "issue a new join token for `ROLE`: worker or manager"),
					&cli.BoolFlag{Name: "rotate-unlock-key", Usage: "issue a new unlock key"},
					list("external-ca", "external CA that signs node certificates, replacing the list: `SPEC` is protocol=cfssl,url=URL[,cacert=FILE][,KEY=VALUE]"),
				},
				Action: clusterUpdate,
			},
			{
				Name:      "join-token",
				Usage:     "print the command that joins a node to the cluster",
				ArgsUsage: "worker|manager",
				Flags: []cli.Flag{
					&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "print only the token"},
				},
				Action: clusterJoinToken,
			},
			{
				Name:  "unlock-key",
				Usage: "print the key that unlocks a locked manager (autolock)",
				Flags: []cli.Flag{
					&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "print only the key"},
				},
				Action: clusterUnlockKey,
			},
			{
				Name:  "ca",
				Usage: "manage the cluster's root CA",
				Subcommands: []*cli.Command{
					{
						Name:  "rotate",
						Usage: "rotate the root CA (not available yet)",
						Action: func(*cli.Context) error {
							return errors.New("cluster ca rotate is not implemented yet: ClusterSpec.CAConfig has no force_rotate field")
						},
					},
				},
			},
		},
	}
}

// getCluster returns the one cluster.
func getCluster(c *cli.Context, cl *client) (*api.Cluster, error) {
	ctx, cancel := rpcContext(c)
	defer cancel()
	resp, err := cl.ListClusters(ctx, &api.ListClustersRequest{})
	if err != nil {
		return nil, err
	}
	if len(resp.Clusters) == 0 {
		return nil, errors.New("no cluster found: the manager has not created or joined one yet")
	}
	return resp.Clusters[0], nil
}

func clusterInspect(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	return withClient(c, func(cl *client) error {
		cluster, err := getCluster(c, cl)
		if err != nil {
			return err
		}
		return writeJSONObject(c.App.Writer, redacted(cluster))
	})
}

// clusterChange is what cluster update was asked to do.
type clusterChange struct {
	apply    func(spec *api.ClusterSpec)
	rotation api.KeyRotation
}

// parseClusterFlags checks the flags of cluster update and returns the change.
// readFile reads --external-ca cacert= files.
func parseClusterFlags(fv flagValues, readFile func(string) ([]byte, error)) (clusterChange, error) {
	var edits []func(*api.ClusterSpec)
	var ch clusterChange
	if fv.IsSet("cert-expiry") {
		d, err := parseDuration("cert-expiry", fv.String("cert-expiry"))
		if err != nil {
			return ch, err
		}
		edits = append(edits, func(s *api.ClusterSpec) { s.CAConfig.NodeCertExpiry = d })
	}
	if fv.IsSet("heartbeat-period") {
		d, err := parseDuration("heartbeat-period", fv.String("heartbeat-period"))
		if err != nil {
			return ch, err
		}
		edits = append(edits, func(s *api.ClusterSpec) { s.Dispatcher.HeartbeatPeriod = d })
	}
	if fv.IsSet("task-history-limit") {
		v := fv.String("task-history-limit")
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil || n < 0 {
			return ch, invalid("task-history-limit", v, "a non-negative integer")
		}
		edits = append(edits, func(s *api.ClusterSpec) { s.Orchestration.TaskHistoryRetentionLimit = n })
	}
	if fv.IsSet("snapshot-interval") {
		n, err := parseUint("snapshot-interval", fv.String("snapshot-interval"))
		if err != nil {
			return ch, err
		}
		edits = append(edits, func(s *api.ClusterSpec) { s.Raft.SnapshotInterval = n })
	}
	if fv.IsSet("autolock") {
		on := fv.Bool("autolock")
		edits = append(edits, func(s *api.ClusterSpec) { s.EncryptionConfig.AutoLockManagers = on })
	}
	if fv.IsSet("external-ca") {
		var cas []*api.ExternalCA
		for _, v := range fv.StringSlice("external-ca") {
			ca, err := parseExternalCA(v, readFile)
			if err != nil {
				return ch, err
			}
			cas = append(cas, ca)
		}
		edits = append(edits, func(s *api.ClusterSpec) { s.CAConfig.ExternalCAs = cas })
	}
	if fv.IsSet("rotate-join-token") {
		switch v := fv.String("rotate-join-token"); v {
		case "worker":
			ch.rotation.WorkerJoinToken = true
		case "manager":
			ch.rotation.ManagerJoinToken = true
		default:
			return ch, invalid("rotate-join-token", v, "worker or manager")
		}
	}
	if fv.IsSet("rotate-unlock-key") && fv.Bool("rotate-unlock-key") {
		ch.rotation.ManagerUnlockKey = true
	}
	ch.apply = func(s *api.ClusterSpec) {
		for _, e := range edits {
			e(s)
		}
	}
	if len(edits) == 0 && ch.rotation == (api.KeyRotation{}) {
		return ch, errors.New("nothing to update: give the flags to change (see 'swarmctl cluster update --help')")
	}
	return ch, nil
}

// parseExternalCA reads protocol=cfssl,url=URL[,cacert=FILE][,KEY=VALUE...].
func parseExternalCA(v string, readFile func(string) ([]byte, error)) (*api.ExternalCA, error) {
	const form = "protocol=cfssl,url=URL[,cacert=FILE]"
	ca := &api.ExternalCA{Protocol: api.ExternalCAProtocolCFSSL}
	for _, field := range strings.Split(v, ",") {
		key, val, ok := strings.Cut(field, "=")
		if !ok {
			return nil, invalid("external-ca", v, form)
		}
		switch strings.ToLower(key) {
		case "protocol":
			if strings.ToLower(val) != "cfssl" {
				return nil, fmt.Errorf("--external-ca: unknown protocol %q: only cfssl is supported", val)
			}
		case "url":
			ca.URL = val
		case "cacert":
			pem, err := readFile(val)
			if err != nil {
				return nil, fmt.Errorf("--external-ca: cannot read cacert: %w", err)
			}
			ca.CACert = pem
		default:
			if ca.Options == nil {
				ca.Options = map[string]string{}
			}
			ca.Options[key] = val
		}
	}
	if ca.URL == "" {
		return nil, invalid("external-ca", v, form)
	}
	return ca, nil
}

func clusterUpdate(c *cli.Context) error {
	if c.NArg() > 0 {
		if a := c.Args().First(); a == "true" || a == "false" {
			return fmt.Errorf("unexpected argument %q: write boolean flags as --autolock=%s", a, a)
		}
	}
	if err := noArgs(c); err != nil {
		return err
	}
	change, err := parseClusterFlags(c, os.ReadFile)
	if err != nil {
		return err
	}
	return withClient(c, func(cl *client) error {
		cluster, err := getCluster(c, cl)
		if err != nil {
			return err
		}
		spec := cluster.Spec.Copy()
		change.apply(spec)
		ctx, cancel := rpcContext(c)
		defer cancel()
		updated, err := cl.UpdateCluster(ctx, &api.UpdateClusterRequest{
			ClusterID:      cluster.ID,
			ClusterVersion: cluster.Meta.Version,
			Spec:           spec,
			Rotation:       change.rotation,
		})
		if err != nil {
			return err
		}
		w := c.App.Writer
		fmt.Fprintln(w, "Cluster updated.")
		if change.rotation.WorkerJoinToken {
			fmt.Fprintln(w, "Successfully rotated worker join token.")
		}
		if change.rotation.ManagerJoinToken {
			fmt.Fprintln(w, "Successfully rotated manager join token.")
		}
		if change.rotation.ManagerUnlockKey {
			fmt.Fprintln(w, "Successfully rotated manager unlock key.")
		}
		wasLocked := cluster.Spec.EncryptionConfig.AutoLockManagers
		switch locked := spec.EncryptionConfig.AutoLockManagers; {
		case locked && (!wasLocked || change.rotation.ManagerUnlockKey):
			var version uint64
			if updated.Cluster != nil {
				version = updated.Cluster.Meta.Version
			}
			key, err := newUnlockKey(c, cl, version)
			if err != nil {
				return fmt.Errorf("autolock is on, but the new unlock key could not be read (swarmctl cluster unlock-key shows it): %w", err)
			}
			fmt.Fprint(w, "\n"+unlockMessage(key))
		case !locked && wasLocked:
			fmt.Fprintln(w, "Autolock is off: managers keep their keys unencrypted again and restart without an unlock key.")
		}
		return nil
	})
}

// unlockKey reads the cluster's unlock key; an empty one means autolock is off.
func unlockKey(c *cli.Context, cl *client) (string, error) {
	ctx, cancel := rpcContext(c)
	defer cancel()
	resp, err := cl.GetUnlockKey(ctx, &api.GetUnlockKeyRequest{})
	if err != nil {
		return "", err
	}
	return resp.UnlockKey, nil
}

// newUnlockKey reads the unlock key as of cluster version (or later): a
// manager that serves reads locally may not have applied the update yet.
func newUnlockKey(c *cli.Context, cl *client, version uint64) (string, error) {
	ctx, cancel := rpcContext(c)
	defer cancel()
	for {
		resp, err := cl.GetUnlockKey(ctx, &api.GetUnlockKeyRequest{})
		if err != nil {
			return "", err
		}
		if resp.ClusterVersion >= version && resp.UnlockKey != "" {
			return resp.UnlockKey, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("this manager has not applied the update yet: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// unlockMessage is what unlock-key prints, and cluster update when it makes a key.
func unlockMessage(key string) string {
	return "To unlock a locked manager, restart it with:\n\n    swarmd --unlock-key " + key +
		"\n\nKeep this key safe: a restarted manager does not start without it. swarmctl cluster unlock-key shows it again.\n"
}

func clusterUnlockKey(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	return withClient(c, func(cl *client) error {
		key, err := unlockKey(c, cl)
		if err != nil {
			return err
		}
		if key == "" {
			return errors.New("autolock is off, so this cluster has no unlock key: turn it on with swarmctl cluster update --autolock=true")
		}
		if c.Bool("quiet") {
			fmt.Fprintln(c.App.Writer, key)
			return nil
		}
		fmt.Fprint(c.App.Writer, unlockMessage(key))
		return nil
	})
}

func clusterJoinToken(c *cli.Context) error {
	if err := exactArgs(c, 1, "worker|manager"); err != nil {
		return err
	}
	role := c.Args().First()
	if role != "worker" && role != "manager" {
		return fmt.Errorf("invalid role %q: expected worker or manager", role)
	}
	return withClient(c, func(cl *client) error {
		cluster, err := getCluster(c, cl)
		if err != nil {
			return err
		}
		token := cluster.RootCA.JoinTokens.Worker
		if role == "manager" {
			token = cluster.RootCA.JoinTokens.Manager
		}
		if c.Bool("quiet") {
			fmt.Fprintln(c.App.Writer, token)
			return nil
		}
		ctx, cancel := rpcContext(c)
		defer cancel()
		resp, err := cl.ListNodes(ctx, &api.ListNodesRequest{Filters: &api.ListNodesRequest_Filters{Roles: []api.NodeRole{api.NodeRoleManager}}})
		if err != nil {
			return err
		}
		addr := managerAddr(resp.Nodes)
		if addr == "" {
			return errors.New("no manager address is known yet: retry in a moment, or use -q for the token alone")
		}
		fmt.Fprint(c.App.Writer, joinCommand(role, addr, token))
		return nil
	})
}

// managerAddr is where new nodes reach the cluster: the leader's address,
// else a reachable manager's.
func managerAddr(nodes []*api.Node) string {
	fallback := ""
	for _, n := range nodes {
		m := n.ManagerStatus
		if m == nil || m.Addr == "" {
			continue
		}
		if m.Leader {
			return m.Addr
		}
		if fallback == "" && m.Reachability == api.ReachabilityReachable {
			fallback = m.Addr
		}
	}
	return fallback
}

// joinCommand is what join-token prints.
func joinCommand(role, addr, token string) string {
	return fmt.Sprintf("To add a %s to this swarm, run the following command:\n\n    swarmd --join-addr %s --join-token %s\n", role, addr, token)
}
