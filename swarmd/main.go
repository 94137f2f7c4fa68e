// Command swarmd runs a Flotilla node. Flag parsing and wiring only: the node
// itself is package node.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/flotilla/flotilla/agent/exec/containerd/logging"
	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/node"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	// containerd's shim runs this binary as each container's logger (binary
	// logging): that is not the daemon, and must be recognised before any
	// flag parsing.
	if logging.Invoked(os.Args[1:]) {
		os.Exit(logging.Main(os.Args[1:]))
	}
	app := &cli.App{
		Name:    "swarmd",
		Usage:   "run a Flotilla node",
		Version: version,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "state-dir", Value: node.DefaultStateDir, EnvVars: []string{"SWARMD_STATE_DIR"}, Usage: "directory that holds the node's state"},
			&cli.StringFlag{Name: "hostname", Usage: "node name (default: the OS hostname)"},
			&cli.StringFlag{Name: "listen-control-api", Usage: "unix socket for swarmctl (default: <state-dir>/swarmd.sock)"},
			&cli.StringFlag{Name: "listen-remote-api", Value: node.DefaultListenRemoteAPI, Usage: "address managers listen on for other nodes"},
			&cli.StringFlag{Name: "advertise-remote-api", Usage: "address other nodes use to reach this one"},
			&cli.StringFlag{Name: "join-addr", Usage: "join an existing cluster through this manager"},
			&cli.StringFlag{Name: "join-token", Usage: "worker or manager join token"},
			&cli.StringFlag{Name: "executor", Value: "containerd", Usage: "what runs tasks: containerd or sim (no containers)"},
			&cli.StringFlag{Name: "containerd-addr", Value: node.DefaultContainerdAddr, Usage: "containerd's socket; if nothing answers and containerd is on PATH, swarmd runs its own under <state-dir>/containerd"},
			&cli.StringFlag{Name: "containerd-namespace", Value: "swarmd", Usage: "containerd namespace of this node's containers"},
			&cli.StringSliceFlag{Name: "insecure-registry", Usage: "registry `HOST:PORT` pulled from over plain HTTP (repeatable; loopback registries always are)"},
			&cli.StringFlag{Name: "bridge-name", Value: "flotilla0", Usage: "node-local bridge of the tasks' network namespaces"},
			&cli.StringFlag{Name: "bridge-subnet", Value: "10.213.0.0/16", Usage: "subnet of the tasks' addresses on the bridge"},
			&cli.IntFlag{Name: "heartbeat-tick", Usage: "raft ticks between leader heartbeats (default 1)"},
			&cli.IntFlag{Name: "election-tick", Usage: "raft ticks without a leader before an election (default 10)"},
			&cli.DurationFlag{Name: "raft-tick", Usage: "duration of one raft tick (default 100ms)"},
			&cli.BoolFlag{Name: "force-new-cluster", Usage: "recover from quorum loss using this manager's state: restart the cluster with this manager as its only manager, keeping services, tasks, nodes and secrets (the other managers are removed for good; new ones join with the manager token)"},
			&cli.StringFlag{Name: "unlock-key", EnvVars: []string{"SWARMD_UNLOCK_KEY"}, Usage: "`KEY` (SWMKEY-1-...) that opens a manager locked by autolock; swarmctl cluster unlock-key on another manager shows it"},
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error"},
		},
		Action: run,
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintf(os.Stderr, "swarmd: %v\n", err)
		os.Exit(1)
	}
}

// printManagerHelp tells the operator how to control this manager and how
// to add nodes to its cluster.
func printManagerHelp(ctx context.Context, n *node.Node) {
	sock := n.ControlSocket()
	hint := "swarmctl node ls"
	if abs, _ := filepath.Abs(sock); abs != filepath.Join(node.DefaultStateDir, node.ControlSocketName) {
		hint = "swarmctl --socket " + sock + " node ls"
	}
	fmt.Fprintf(os.Stdout, "Node %s is a manager of its cluster and ready. Control it with:\n\n    %s\n\n", n.NodeID(), hint)
	tokens, addr, err := joinInfo(ctx, sock)
	if err != nil {
		slog.Warn("cannot read the join tokens", "err", err)
		return
	}
	fmt.Fprintf(os.Stdout, "To add a worker to this cluster, run on it:\n\n    swarmd --join-addr %s --join-token %s\n\n", addr, tokens.Worker)
	fmt.Fprintf(os.Stdout, "To add a manager to this cluster, run on it:\n\n    swarmd --join-addr %s --join-token %s\n\n", addr, tokens.Manager)
}

// joinInfo reads the join tokens and this manager's address.
func joinInfo(ctx context.Context, sock string) (api.JoinTokens, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return api.JoinTokens{}, "", err
	}
	defer conn.Close()
	ctl := api.NewControlClient(conn)
	clusters, err := ctl.ListClusters(ctx, &api.ListClustersRequest{})
	if err != nil {
		return api.JoinTokens{}, "", err
	}
	if len(clusters.Clusters) != 1 {
		return api.JoinTokens{}, "", fmt.Errorf("%d cluster objects", len(clusters.Clusters))
	}
	nodes, err := ctl.ListNodes(ctx, &api.ListNodesRequest{Filters: &api.ListNodesRequest_Filters{Roles: []api.NodeRole{api.NodeRoleManager}}})
	if err != nil {
		return api.JoinTokens{}, "", err
	}
	addr := ""
	for _, m := range nodes.Nodes {
		if m.ManagerStatus != nil && m.ManagerStatus.Leader {
			addr = m.ManagerStatus.Addr
		}
	}
	return clusters.Clusters[0].RootCA.JoinTokens, addr, nil
}

func run(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: swarmd takes only flags", c.Args().First())
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return fmt.Errorf("--log-level %q: use debug, info, warn or error", c.String("log-level"))
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(logger)

	n, err := node.New(node.Config{
		StateDir:            c.String("state-dir"),
		Hostname:            c.String("hostname"),
		ListenControlAPI:    c.String("listen-control-api"),
		ListenRemoteAPI:     c.String("listen-remote-api"),
		AdvertiseRemoteAPI:  c.String("advertise-remote-api"),
		JoinAddr:            c.String("join-addr"),
		JoinToken:           c.String("join-token"),
		Executor:            c.String("executor"),
		ContainerdAddr:      c.String("containerd-addr"),
		ContainerdNamespace: c.String("containerd-namespace"),
		InsecureRegistries:  c.StringSlice("insecure-registry"),
		BridgeName:          c.String("bridge-name"),
		BridgeSubnet:        c.String("bridge-subnet"),
		TickInterval:        c.Duration("raft-tick"),
		ElectionTick:        c.Int("election-tick"),
		HeartbeatTick:       c.Int("heartbeat-tick"),
		UnlockKey:           c.String("unlock-key"),
		ForceNewCluster:     c.Bool("force-new-cluster"),
		Logger:              logger,
	})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := n.Start(ctx); err != nil {
		return err
	}
	select {
	case <-n.Ready():
		if n.IsManager() {
			printManagerHelp(ctx, n)
		} else {
			fmt.Fprintf(os.Stdout, "Node %s is a worker of its cluster and ready.\n", n.NodeID())
		}
	case <-n.Done():
		return n.Err()
	case <-ctx.Done():
	}
	select {
	case <-n.Done():
		return n.Err()
	case <-ctx.Done():
	}
	logger.Info("stopping", "signal", "received")
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return n.Stop(sctx)
}
