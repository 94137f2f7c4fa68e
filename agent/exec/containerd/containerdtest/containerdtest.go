// Package containerdtest is the harness every test that needs a real
// containerd uses: a containerd of the test's own, busybox images built in
// Go, a registry on loopback, and a cleanup that leaves the machine as it
// found it even when the test failed.
//
//	d := containerdtest.StartDaemon(t)           // containerd under /tmp/ctrd*, stopped in t.Cleanup
//	client := d.Client(t, "swarmd")               // closed in t.Cleanup
//	archive := containerdtest.BusyboxImage(t, containerdtest.ImageOptions{Cmd: []string{"sleep", "60"}})
//	containerdtest.Import(t, client, "swarmd", archive, "docker.io/library/busybox:test")
//
//	addr := containerdtest.StartRegistry(t, containerdtest.RegistryOptions{Username: "u", Password: "p"})
//	containerdtest.Push(t, archive, addr, "app/busybox:1", "u:p")
//	client.Pull(ctx, addr+"/app/busybox:1", containerd.WithResolver(containerdtest.Resolver("u", "p")), ...)
//
// Requirements: root, and the containerd, runc, busybox-static,
// docker-registry and skopeo packages (make deps). When a binary is
// missing, the helpers fail the test when running as root (CI runs as
// root and must never skip these tests) and skip it otherwise.
//
// What the cleanup of StartDaemon removes, in order (see Daemon.Clean):
//
//  1. in every namespace of that daemon: every task (SIGKILL, then delete),
//     every container (with its snapshot), every image, every snapshot of
//     the overlayfs and native snapshotters, every lease, then the
//     namespace itself;
//  2. the daemon process (SIGTERM, SIGKILL after 5s), by its PID;
//  3. leftover shims of that daemon: containerd-shim-runc-v2 processes whose
//     command line names this daemon's socket (-address), found by scanning
//     /proc, each killed with all its descendants (the container's
//     processes, the logging binary) by PID; then what runc kept of their
//     containers (`runc delete --force`: its state dir, the container's
//     cgroups) and the shim's socket under /run/containerd/s;
//  4. anything still mounted under the daemon's directory (rootfs overlay
//     mounts, shm), deepest first (lazy unmount);
//  5. the daemon's directory (root, state, sockets, config, log).
//
// Left on purpose: the empty per-namespace parents other daemons share
// (/run/containerd/runc/NS, /sys/fs/cgroup/*/NS), which another test's
// containerd may be using at that moment.
//
// runc keeps container state under a root shared by every containerd on
// the machine (/run/containerd/runc/NS/ID): tests that run containers
// should use random container IDs or Daemon.WithRuncRoot, since go test
// runs packages in parallel.
//
// The daemon's log is kept at Daemon.Dir/containerd.log while it runs; a
// failed test prints its tail.
package containerdtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/api/types/runc/options"
	containerd "github.com/containerd/containerd/v2/client"

	"github.com/flotilla/flotilla/agent/exec/containerd/daemon"
)

// Snapshotter is the snapshotter the harness unpacks images for (the
// executor's).
const Snapshotter = "overlayfs"

// Daemon is a containerd started by StartDaemon.
type Daemon struct {
	*daemon.Daemon
	// Dir holds everything of this daemon: root/, state/, c.sock,
	// containerd.log. It is short (/tmp/ctrdNNNN) because socket paths
	// are limited to 107 bytes.
	Dir string
	cfg daemon.Config
}

// Restart stops the daemon (SIGTERM; if it is already dead, for instance
// killed by the test, nothing) and starts it again on the same root, state
// and socket, as a restarted swarmd does with its managed containerd.
// Running containers keep running through it (their shims are separate
// processes) and the new daemon finds them. Clients keep working: they
// reconnect.
func (d *Daemon) Restart(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := d.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	nd, err := daemon.Start(ctx, d.cfg)
	if err != nil {
		t.Fatalf("restart containerd: %v", err)
	}
	d.Daemon = nd
}

// Require fails the test when running as root (CI, which must never skip
// these tests) or skips it otherwise when any of the named binaries is
// missing (a name is looked up on PATH, a path is checked as it is).
func Require(t testing.TB, binaries ...string) {
	t.Helper()
	for _, b := range binaries {
		if _, err := exec.LookPath(b); err != nil {
			if os.Geteuid() == 0 {
				t.Fatalf("%s is not installed: run make deps (%v)", b, err)
			}
			t.Skipf("%s is not installed and not running as root: %v", b, err)
		}
	}
}

// RequireRoot skips the test when not running as root (containerd, mounts
// and namespaces need it).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("this test needs root")
	}
}

// StartDaemon starts a containerd in a fresh directory under /tmp and
// registers its cleanup (Clean) with t.Cleanup. It fails the test (as root)
// or skips it (not root) when containerd or runc is missing.
func StartDaemon(t testing.TB) *Daemon {
	t.Helper()
	Require(t, "containerd", "runc", "containerd-shim-runc-v2")
	RequireRoot(t)
	dir, err := os.MkdirTemp("/tmp", "ctrd")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cfg := daemon.Config{
		Address:     filepath.Join(dir, "c.sock"),
		Root:        filepath.Join(dir, "root"),
		State:       filepath.Join(dir, "state"),
		LogLevel:    "warn",
		LogPath:     filepath.Join(dir, "containerd.log"),
		StopTimeout: 5 * time.Second,
	}
	dd, err := daemon.Start(ctx, cfg)
	if err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	d := &Daemon{Daemon: dd, Dir: dir, cfg: cfg}
	t.Cleanup(func() {
		if t.Failed() {
			if b, err := os.ReadFile(filepath.Join(dir, "containerd.log")); err == nil && len(b) > 0 {
				t.Logf("containerd log (%s):\n%s", dir, tail(b, 4<<10))
			}
		}
		if err := d.clean(t.Logf); err != nil {
			t.Errorf("containerdtest cleanup: %v", err)
		}
	})
	return d
}

// Client returns a client of the daemon whose default namespace is
// namespace, closed in t.Cleanup.
func (d *Daemon) Client(t testing.TB, namespace string) *containerd.Client {
	t.Helper()
	c, err := containerd.New(d.Address(), containerd.WithDefaultNamespace(namespace), containerd.WithTimeout(5*time.Second))
	if err != nil {
		t.Fatalf("containerd client: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// RuncRoot is a runc root inside the daemon's directory. runc keeps each
// container's state under ROOT/NAMESPACE/ID, and its default root
// (/run/containerd/runc) is shared by every containerd on the machine, so
// two test daemons running containers with the same namespace and ID at
// once (go test runs packages in parallel) would collide there; WithRuncRoot
// keeps a container's runc state in this daemon's directory. Random
// container IDs avoid the collision too.
func (d *Daemon) RuncRoot() string { return filepath.Join(d.Dir, "runc") }

// WithRuncRoot is the container option that runs the container with runc's
// state in RuncRoot (runtime io.containerd.runc.v2).
func (d *Daemon) WithRuncRoot() containerd.NewContainerOpts {
	return containerd.WithRuntime("io.containerd.runc.v2", &options.Options{Root: d.RuncRoot()})
}

// Clean removes everything of the daemon from the machine (see the package
// doc for the list) and stops it. It goes on after errors and returns them
// all. StartDaemon calls it in t.Cleanup; calling it again is harmless.
func (d *Daemon) Clean() error { return d.clean(func(string, ...any) {}) }

func (d *Daemon) clean(logf func(string, ...any)) error {
	var errs []error
	select {
	case <-d.Done():
	default:
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := d.removeAll(ctx); err != nil {
			errs = append(errs, err)
		}
		if err := d.Stop(ctx); err != nil {
			errs = append(errs, err)
		}
		cancel()
	}
	n, err := killShims(d.Address(), d.State())
	if err != nil {
		errs = append(errs, err)
	}
	if n > 0 {
		logf("containerdtest cleanup: killed %d leftover shim(s) of %s and their processes", n, d.Address())
	}
	if err := unmountUnder(d.Dir); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(d.Dir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", d.Dir, err))
	}
	return errors.Join(errs...)
}

// Shims returns the PIDs of the shim processes of this daemon still
// running.
func (d *Daemon) Shims() ([]int, error) {
	shims, err := findShims(d.Address())
	pids := make([]int, 0, len(shims))
	for _, s := range shims {
		pids = append(pids, s.pid)
	}
	return pids, err
}

// Mounts returns the mount points under the daemon's directory.
func (d *Daemon) Mounts() ([]string, error) { return mountsUnder(d.Dir) }

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}
