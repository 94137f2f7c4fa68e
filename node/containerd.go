package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	ctrexec "github.com/flotilla/flotilla/agent/exec/containerd"
	"github.com/flotilla/flotilla/agent/exec/containerd/daemon"
	"github.com/flotilla/flotilla/networking/hostnet"
)

// DefaultContainerdAddr is where swarmd looks for a containerd.
const DefaultContainerdAddr = "/run/containerd/containerd.sock"

// containerRuntime is what the containerd executor stands on: a containerd
// (the one at --containerd-addr, or one swarmd runs itself), the node's task
// network and the executor. The node opens it in Start and closes it when it
// stops; closing leaves containers running (the next start adopts them).
type containerRuntime struct {
	log      *slog.Logger
	daemon   *daemon.Daemon // nil: someone else's containerd
	daemonCf daemon.Config
	network  *hostnet.Manager
	executor *ctrexec.Executor
}

// openContainerRuntime finds or starts containerd, sets up the task network
// and connects the executor. On failure it leaves nothing running.
func (n *Node) openContainerRuntime(ctx context.Context) (rt *containerRuntime, err error) {
	cfg := n.cfg
	rt = &containerRuntime{log: n.log.With("module", "containerd")}
	defer func() {
		if err != nil {
			rt.close(context.WithoutCancel(ctx))
		}
	}()
	addr := cfg.ContainerdAddr
	if perr := daemon.Probe(ctx, addr); perr != nil {
		bin, lerr := exec.LookPath("containerd")
		if lerr != nil {
			return nil, fmt.Errorf("no containerd answers at %s (%v), and none is on PATH to run: install containerd and runc (make deps), or point --containerd-addr at a running one", addr, perr)
		}
		dir := filepath.Join(cfg.StateDir, "containerd")
		rt.daemonCf = daemon.Config{
			Address: filepath.Join(dir, "containerd.sock"),
			Root:    filepath.Join(dir, "root"),
			State:   filepath.Join(dir, "state"),
			Binary:  bin,
			LogPath: filepath.Join(dir, "containerd.log"),
		}
		rt.log.Info("no containerd at the address: running our own", "addr", addr, "reason", perr, "socket", rt.daemonCf.Address)
		if rt.daemon, err = daemon.Start(ctx, rt.daemonCf); err != nil {
			return nil, fmt.Errorf("run containerd: %w", err)
		}
		addr = rt.daemon.Address()
	}
	subnet := hostnet.DefaultSubnet
	if cfg.BridgeSubnet != "" {
		if subnet, err = netip.ParsePrefix(cfg.BridgeSubnet); err != nil {
			return nil, fmt.Errorf("--bridge-subnet %q: %w (want a CIDR such as 10.213.0.0/16)", cfg.BridgeSubnet, err)
		}
	}
	rt.network, err = hostnet.New(ctx, hostnet.Config{
		BridgeName: cfg.BridgeName,
		Subnet:     subnet,
		StateDir:   filepath.Join(cfg.StateDir, "network"),
		Logger:     n.cfg.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("task network: %w", err)
	}
	logBinary := cfg.LogBinary
	if logBinary == "" {
		if logBinary, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("find swarmd's own executable (containerd runs it as each container's logger): %w", err)
		}
	}
	rt.executor, err = ctrexec.New(ctx, ctrexec.Config{
		Address:            addr,
		Namespace:          cfg.ContainerdNamespace,
		Hostname:           cfg.Hostname,
		StateDir:           filepath.Join(cfg.StateDir, "executor"),
		InsecureRegistries: cfg.InsecureRegistries,
		Network:            rt.network,
		LogBinary:          logBinary,
		Log:                n.cfg.Logger,
	})
	if err != nil {
		return nil, err
	}
	return rt, nil
}

// superviseDaemon restarts swarmd's own containerd when it exits under a
// running node, with a growing delay, until ctx ends. Containers survive a
// containerd restart (their shims are separate processes); the executor
// reconnects on its own.
func (rt *containerRuntime) superviseDaemon(ctx context.Context) error {
	if rt.daemon == nil {
		return nil
	}
	delay := time.Second
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-rt.daemon.Done():
		}
		rt.log.Error("our containerd exited; restarting it", "error", rt.daemon.Err(), "in", delay)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		d, err := daemon.Start(ctx, rt.daemonCf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			rt.log.Error("cannot restart containerd", "error", err)
			delay = min(2*delay, 30*time.Second)
			// Wait on the dead daemon again: its Done is closed, so the
			// loop comes straight back to the delay.
			continue
		}
		rt.daemon, delay = d, time.Second
	}
}

// close disconnects the executor, releases the network's handles and stops
// swarmd's own containerd; containers keep running.
func (rt *containerRuntime) close(ctx context.Context) {
	var errs []error
	if rt.executor != nil {
		errs = append(errs, rt.executor.Close())
	}
	if rt.network != nil {
		errs = append(errs, rt.network.Close())
	}
	if rt.daemon != nil {
		sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		errs = append(errs, rt.daemon.Stop(sctx))
		cancel()
	}
	if err := errors.Join(errs...); err != nil {
		rt.log.Warn("closing the container runtime", "error", err)
	}
}
