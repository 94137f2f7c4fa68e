package containerdtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// removeAll deletes every task, container, image, snapshot, lease and blob
// in every namespace of the daemon, then the namespaces.
func (d *Daemon) removeAll(ctx context.Context) error {
	c, err := containerd.New(d.Address(), containerd.WithTimeout(5*time.Second))
	if err != nil {
		return fmt.Errorf("connect to %s: %w", d.Address(), err)
	}
	defer c.Close()
	nss, err := c.NamespaceService().List(ctx)
	if err != nil {
		return fmt.Errorf("list namespaces: %w", err)
	}
	var errs []error
	keep := func(what string, err error) {
		if err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("%s: %w", what, err))
		}
	}
	for _, ns := range nss {
		nctx := namespaces.WithNamespace(ctx, ns)
		containers, err := c.Containers(nctx)
		keep("list containers in "+ns, err)
		for _, ctr := range containers {
			if task, err := ctr.Task(nctx, nil); err == nil {
				_, err := task.Delete(nctx, containerd.WithProcessKill)
				keep("delete task "+ns+"/"+ctr.ID(), err)
			} else {
				keep("load task "+ns+"/"+ctr.ID(), err)
			}
			keep("delete container "+ns+"/"+ctr.ID(), ctr.Delete(nctx, containerd.WithSnapshotCleanup))
		}
		imgs, err := c.ImageService().List(nctx)
		keep("list images in "+ns, err)
		for _, img := range imgs {
			keep("delete image "+ns+"/"+img.Name, c.ImageService().Delete(nctx, img.Name, images.SynchronousDelete()))
		}
		for _, name := range []string{"overlayfs", "native"} {
			keep("remove "+name+" snapshots in "+ns, removeSnapshots(nctx, c.SnapshotService(name)))
		}
		ls, err := c.LeasesService().List(nctx)
		keep("list leases in "+ns, err)
		for _, l := range ls {
			keep("delete lease "+ns+"/"+l.ID, c.LeasesService().Delete(nctx, l, leases.SynchronousDelete))
		}
		var blobs []string
		keep("list content in "+ns, c.ContentStore().Walk(nctx, func(info content.Info) error {
			blobs = append(blobs, info.Digest.String())
			return nil
		}))
		for _, b := range blobs {
			keep("delete blob "+b, c.ContentStore().Delete(nctx, digest.Digest(b)))
		}
		keep("delete namespace "+ns, c.NamespaceService().Delete(ctx, ns))
	}
	return errors.Join(errs...)
}

// removeSnapshots removes every snapshot, children first: it removes what
// it can and goes round again while that makes progress.
func removeSnapshots(ctx context.Context, sn snapshots.Snapshotter) error {
	for {
		var keys []string
		if err := sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
			keys = append(keys, info.Name)
			return nil
		}); err != nil {
			return err
		}
		if len(keys) == 0 {
			return nil
		}
		removed := 0
		var last error
		for _, k := range keys {
			if err := sn.Remove(ctx, k); err != nil {
				last = err
				continue
			}
			removed++
		}
		if removed == 0 {
			return fmt.Errorf("%d snapshots left: %w", len(keys), last)
		}
	}
}

// shim is a containerd-shim process found in /proc.
type shim struct {
	pid               int
	namespace, id, ad string
}

// findShims scans /proc for containerd-shim* processes whose -address is
// address.
func findShims(address string) ([]shim, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var out []shim
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if !strings.HasPrefix(filepath.Base(args[0]), "containerd-shim") {
			continue
		}
		s := shim{pid: pid}
		for i := 1; i+1 < len(args); i++ {
			switch strings.TrimLeft(args[i], "-") {
			case "namespace":
				s.namespace = args[i+1]
			case "id":
				s.id = args[i+1]
			case "address":
				s.ad = args[i+1]
			}
		}
		if s.ad == address && !zombie(pid) {
			out = append(out, s)
		}
	}
	return out, nil
}

// killShims kills, by PID, every shim of the daemon at address that is
// still running and all the shim's descendants (container processes,
// logging binaries), waits for them to be gone, then deletes what runc
// kept of their containers (its state dir and the container's cgroups:
// `runc --root ROOT delete --force ID`, ROOT read from the bundle's
// options.json under state, else runc's default /run/containerd/runc/NS)
// and removes the shims' sockets.
func killShims(address, state string) (killed int, err error) {
	shims, err := findShims(address)
	if err != nil {
		return 0, fmt.Errorf("find shims: %w", err)
	}
	if len(shims) == 0 {
		return 0, nil
	}
	children := childrenMap()
	var pids []int
	for _, s := range shims {
		// The container first, so its shim does not restart anything.
		pids = append(pids, descendants(children, s.pid)...)
		pids = append(pids, s.pid)
	}
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, pid := range pids {
		for alive(pid) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	var errs []error
	for _, pid := range pids {
		if alive(pid) {
			errs = append(errs, fmt.Errorf("process %d still alive after SIGKILL", pid))
		}
	}
	for _, s := range shims {
		if s.namespace == "" || s.id == "" {
			continue
		}
		root := runcRoot(filepath.Join(state, "io.containerd.runtime.v2.task", s.namespace, s.id), s.namespace)
		if out, err := exec.Command("runc", "--root", root, "delete", "--force", s.id).CombinedOutput(); err != nil && !bytes.Contains(out, []byte("does not exist")) {
			errs = append(errs, fmt.Errorf("runc --root %s delete --force %s: %v: %s", root, s.id, err, bytes.TrimSpace(out)))
		}
		// containerd's shim socket: /run/containerd/s/<sha256 of address/ns/id>.
		sum := sha256.Sum256([]byte(filepath.Join(address, s.namespace, s.id)))
		_ = os.Remove(filepath.Join("/run/containerd/s", fmt.Sprintf("%x", sum)))
	}
	if len(errs) > 0 {
		return len(shims), fmt.Errorf("kill leftover shims of %s: %w", address, errors.Join(errs...))
	}
	return len(shims), nil
}

// runcRoot is the runc root a shim used for a container: the "root" of the
// runc options in bundle/options.json, or runc's default for namespace.
func runcRoot(bundle, namespace string) string {
	var opts map[string]any
	if b, err := os.ReadFile(filepath.Join(bundle, "options.json")); err == nil && json.Unmarshal(b, &opts) == nil {
		for _, k := range []string{"root", "Root"} {
			if r, ok := opts[k].(string); ok && r != "" {
				return filepath.Join(r, namespace)
			}
		}
	}
	return filepath.Join("/run/containerd/runc", namespace)
}

// childrenMap maps each PID to its children's PIDs, from /proc/*/stat.
func childrenMap() map[int][]int {
	m := map[int][]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppid, ok := parentOf(pid); ok {
			m[ppid] = append(m[ppid], pid)
		}
	}
	return m
}

func descendants(children map[int][]int, pid int) []int {
	var out []int
	for _, c := range children[pid] {
		out = append(out, c)
		out = append(out, descendants(children, c)...)
	}
	return out
}

// stat returns the fields of /proc/PID/stat after the command name: state,
// ppid, ...
func stat(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}

func parentOf(pid int) (int, bool) {
	f := stat(pid)
	if len(f) < 2 {
		return 0, false
	}
	ppid, err := strconv.Atoi(f[1])
	return ppid, err == nil
}

func zombie(pid int) bool {
	f := stat(pid)
	return len(f) > 0 && (f[0] == "Z" || f[0] == "X")
}

// alive says whether pid exists and is not a zombie.
func alive(pid int) bool {
	f := stat(pid)
	return len(f) > 0 && f[0] != "Z" && f[0] != "X"
}

// mountsUnder lists the mount points under dir, from /proc/self/mountinfo.
func mountsUnder(dir string) ([]string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMountPath(f[4])
		if strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	return out, nil
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unmountUnder lazily unmounts everything mounted under dir, deepest first.
func unmountUnder(dir string) error {
	mps, err := mountsUnder(dir)
	if err != nil {
		return err
	}
	sort.Slice(mps, func(i, j int) bool { return len(mps[i]) > len(mps[j]) })
	var errs []error
	for _, mp := range mps {
		if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", mp, err))
		}
	}
	return errors.Join(errs...)
}
