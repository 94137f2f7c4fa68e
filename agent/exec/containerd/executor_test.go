package containerd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"

	"github.com/flotilla/flotilla/agent/exec"
	"github.com/flotilla/flotilla/agent/exec/containerd/containerdtest"
	"github.com/flotilla/flotilla/api"
)

// TestContainers runs tasks as containers on one containerd; each subtest
// has a namespace (and executor state dir) of its own.
func TestContainers(t *testing.T) {
	d := containerdtest.StartDaemon(t)
	archive := containerdtest.BusyboxImage(t, containerdtest.ImageOptions{
		Cmd:        []string{"sh", "-c", "echo image-cmd"},
		Env:        []string{"IMGVAR=from-image", "OVERRIDE=image"},
		WorkingDir: "/home/app",
	})

	t.Run("ExitCodes", func(t *testing.T) {
		t.Parallel()
		en := newEnv(t, d, archive)
		ok, _ := en.run(t, &api.ContainerSpec{Command: sh("exit 0")})
		if ok.Status.State != api.TaskStateCompleted || exitCode(ok) != 0 {
			t.Errorf("exit 0: state %v, exit %d, err %q; want COMPLETE, 0", ok.Status.State, exitCode(ok), ok.Status.Err)
		}
		bad, _ := en.run(t, &api.ContainerSpec{Command: sh("exit 3")})
		if bad.Status.State != api.TaskStateFailed || exitCode(bad) != 3 {
			t.Errorf("exit 3: state %v, exit %d, err %q; want FAILED, 3", bad.Status.State, exitCode(bad), bad.Status.Err)
		}
		if cs := bad.Status.ContainerStatus; cs == nil || cs.ContainerID != bad.ID || cs.PID == 0 {
			t.Errorf("container status %+v: want the task ID as container ID and a PID", cs)
		}
	})

	t.Run("Describe", func(t *testing.T) {
		t.Parallel()
		en := newEnv(t, d, archive)
		desc, err := en.e.Describe(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if desc.Hostname != "node-1" || desc.Engine.Executor != Name || !strings.HasPrefix(desc.Engine.Version, "1.") ||
			desc.Resources.NanoCPUs == 0 || desc.Resources.MemoryBytes == 0 {
			t.Errorf("description %+v (engine %+v)", desc, desc.Engine)
		}
	})

	t.Run("OutputInTheTaskLog", func(t *testing.T) {
		t.Parallel()
		en := newEnv(t, d, archive)
		task, _ := en.run(t, &api.ContainerSpec{Command: sh("echo to-stdout; echo to-stderr >&2")})
		if task.Status.State != api.TaskStateCompleted {
			t.Fatalf("task: %v %q", task.Status.State, task.Status.Err)
		}
		waitFor(t, 10*time.Second, "the output in the log", func() bool {
			got := en.logText(t, task.ID)
			return strings.Contains(got, "stdout: to-stdout\n") && strings.Contains(got, "stderr: to-stderr\n")
		})
	})

	t.Run("TTYOutputInTheTaskLog", func(t *testing.T) {
		t.Parallel()
		en := newEnv(t, d, archive)
		task, _ := en.run(t, &api.ContainerSpec{Command: sh("tty; echo on-tty"), TTY: true})
		if task.Status.State != api.TaskStateCompleted {
			t.Fatalf("task: %v %q", task.Status.State, task.Status.Err)
		}
		waitFor(t, 10*time.Second, "the terminal's output in the log", func() bool {
			got := en.logText(t, task.ID)
			return strings.Contains(got, "stdout: /dev/pts/") && strings.Contains(got, "stdout: on-tty")
		})
	})

	t.Run("ImageConfigOverriddenBySpec", func(t *testing.T) {
		t.Parallel()
		en := newEnv(t, d, archive)
		dir, out := outDir(t)
		// Image defaults: cmd, env, workdir, user root.
		task, _ := en.run(t, &api.ContainerSpec{
			Args:   sh("echo $IMGVAR $OVERRIDE; pwd; id -u; hostname; cat /etc/hostname > /out/hostname-file"),
			Mounts: []api.Mount{out},
		})
		if task.Status.State != api.TaskStateCompleted {
			t.Fatalf("task: %v %q\n%s", task.Status.State, task.Status.Err, en.logText(t, task.ID))
		}
		// The spec's: command, env, user by name, workdir, hostname, groups.
		task2, _ := en.run(t, &api.ContainerSpec{
			Command:  []string{"sh", "-c"},
			Args:     []string{"{ echo $IMGVAR $OVERRIDE $NEW; pwd; id -u; id -g; id -G; hostname; } > /out/result"},
			Env:      []string{"OVERRIDE=spec", "NEW=new"},
			User:     "app",
			Groups:   []string{"nogroup"},
			Dir:      "/tmp",
			Hostname: "custom-host",
			Mounts:   []api.Mount{out},
		})
		if task2.Status.State != api.TaskStateCompleted {
			t.Fatalf("task: %v %q", task2.Status.State, task2.Status.Err)
		}
		got := lines(readFile(t, filepath.Join(dir, "result")))
		want := []string{"from-image spec new", "/tmp", "1000", "1000", "1000 65534", "custom-host"}
		if !slices.Equal(got, want) {
			t.Errorf("container saw %q, want %q", got, want)
		}
		if h := strings.TrimSpace(readFile(t, filepath.Join(dir, "hostname-file"))); h != task.ID[:hostnameLen] {
			t.Errorf("default /etc/hostname %q, want the task ID prefix %q", h, task.ID[:hostnameLen])
		}
		// uid:gid, numeric.
		task3, _ := en.run(t, &api.ContainerSpec{
			Command: sh("{ id -u; id -g; } > /out/ids"),
			User:    "4242:4343",
			Mounts:  []api.Mount{out},
		})
		if task3.Status.State != api.TaskStateCompleted {
			t.Fatalf("task: %v %q", task3.Status.State, task3.Status.Err)
		}
		if got := lines(readFile(t, filepath.Join(dir, "ids"))); !slices.Equal(got, []string{"4242", "4343"}) {
			t.Errorf("uid, gid %q; want 4242, 4343", got)
		}
	})

	t.Run("UnknownUserRejected", func(t *testing.T) {
		t.Parallel()
		en := newEnv(t, d, archive)
		task, _ := en.run(t, &api.ContainerSpec{Command: sh("true"), User: "nosuchuser"})
		if task.Status.State != api.TaskStateRejected || !strings.Contains(task.Status.Err, `user "nosuchuser"`) {
			t.Errorf("state %v err %q: want REJECTED naming the user", task.Status.State, task.Status.Err)
		}
		if en.taskDirExists(task.ID) {
			t.Error("a rejected task left its state dir")
		}
		assertNoContainers(t, en)
	})

	t.Run("BadCommandFails", func(t *testing.T) {
		t.Parallel()
		en := newEnv(t, d, archive)
		task, _ := en.run(t, &api.ContainerSpec{Command: []string{"/no/such/binary"}})
		if task.Status.State != api.TaskStateFailed || !strings.Contains(task.Status.Err, "/no/such/binary") {
			t.Errorf("state %v err %q: want FAILED naming the binary", task.Status.State, task.Status.Err)
		}
	})

	t.Run("BindMountMissingSourceRejected", func(t *testing.T) {
		t.Parallel()
		en := newEnv(t, d, archive)
		task, _ := en.run(t, &api.ContainerSpec{
			Command: sh("true"),
			Mounts:  []api.Mount{{Type: api.MountTypeBind, Source: "/no/such/dir", Target: "/data"}},
		})
		if task.Status.State != api.TaskStateRejected || !strings.Contains(task.Status.Err, "source /no/such/dir does not exist") {
			t.Errorf("state %v err %q: want REJECTED saying the source does not exist", task.Status.State, task.Status.Err)
		}
		assertNoContainers(t, en)
	})

	t.Run("BindReadOnlyAndTmpfs", func(t *testing.T) {
		t.Parallel()
		en := newEnv(t, d, archive)
		dir, out := outDir(t)
		ro := t.TempDir()
		os.WriteFile(filepath.Join(ro, "in"), []byte("hello\n"), 0o644)
		task, _ := en.run(t, &api.ContainerSpec{
			Command: sh(`cat /ro/in > /out/in
				if touch /ro/x 2>/dev/null; then echo writable; else echo read-only; fi >> /out/in
				grep " /scratch " /proc/mounts >> /out/in
				stat -c %a /scratch >> /out/in
				echo data > /scratch/f && cat /scratch/f >> /out/in`),
			Mounts: []api.Mount{
				out,
				{Type: api.MountTypeBind, Source: ro, Target: "/ro", ReadOnly: true},
				{Type: api.MountTypeTmpfs, Target: "/scratch", TmpfsSizeBytes: 4 << 20, TmpfsMode: 0o1770},
			},
		})
		if task.Status.State != api.TaskStateCompleted {
			t.Fatalf("task: %v %q", task.Status.State, task.Status.Err)
		}
		got := lines(readFile(t, filepath.Join(dir, "in")))
		if len(got) != 5 || got[0] != "hello" || got[1] != "read-only" ||
			!strings.HasPrefix(got[2], "tmpfs /scratch tmpfs") || !strings.Contains(got[2], "size=4096k") ||
			got[3] != "1770" || got[4] != "data" {
			t.Errorf("container saw %q", got)
		}
	})

	t.Run("NamedVolumePersistsAnonymousRemoved", func(t *testing.T) {
		t.Parallel()
		en := newEnv(t, d, archive)
		vols := []api.Mount{
			{Type: api.MountTypeVolume, Source: "appdata", Target: "/data"},
			{Type: api.MountTypeVolume, Target: "/scratch"},
		}
		first, c1 := en.run(t, &api.ContainerSpec{Command: sh("echo kept > /data/f; echo gone > /scratch/f"), Mounts: vols})
		if first.Status.State != api.TaskStateCompleted {
			t.Fatalf("first task: %v %q", first.Status.State, first.Status.Err)
		}
		anon := filepath.Join(en.stateDir, "tasks", first.ID, "volumes", "1", "f")
		if _, err := os.Stat(anon); err != nil {
			t.Fatalf("anonymous volume: %v", err)
		}
		removeTask(t, c1)
		if _, err := os.Stat(anon); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("anonymous volume after Remove: %v, want it gone", err)
		}
		dir, out := outDir(t)
		second, _ := en.run(t, &api.ContainerSpec{
			Command: sh("cat /data/f > /out/f; ls /scratch | wc -l >> /out/f"),
			Mounts:  append(vols, out),
		})
		if second.Status.State != api.TaskStateCompleted {
			t.Fatalf("second task: %v %q", second.Status.State, second.Status.Err)
		}
		if got := lines(readFile(t, filepath.Join(dir, "f"))); !slices.Equal(got, []string{"kept", "0"}) {
			t.Errorf("second task saw %q, want the named volume's file and an empty anonymous volume", got)
		}
	})

	t.Run("ReadOnlyRootFS", func(t *testing.T) {
		t.Parallel()
		en := newEnv(t, d, archive)
		task, _ := en.run(t, &api.ContainerSpec{Command: sh("touch /newfile"), ReadOnly: true})
		if task.Status.State != api.TaskStateFailed || exitCode(task) == 0 {
			t.Errorf("write to a read-only rootfs: state %v exit %d, want FAILED with a non-zero code", task.Status.State, exitCode(task))
		}
	})

	t.Run("MemoryLimitOOMKillReported", func(t *testing.T) {
		t.Parallel()
		en := newEnv(t, d, archive)
		cs := &api.ContainerSpec{Command: sh(`x=$(yes | head -c 200000000); echo survived`)}
		task := newTask(cs)
		task.Spec.Resources = &api.ResourceRequirements{Limits: &api.Resources{MemoryBytes: 16 << 20}}
		ctlr := en.controller(t, task)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		task = drive(ctx, t, task, ctlr, api.TaskStateCompleted)
		if task.Status.State != api.TaskStateFailed || exitCode(task) != 137 ||
			!strings.Contains(task.Status.Err, "OOM killed (memory limit 16 MiB)") {
			t.Errorf("state %v exit %d err %q: want FAILED, 137, OOM killed (memory limit 16 MiB)", task.Status.State, exitCode(task), task.Status.Err)
		}
	})

	t.Run("ShutdownKillsAfterGrace", func(t *testing.T) {
		t.Parallel()
		en := newEnv(t, d, archive)
		// busybox sh as PID 1 with TERM ignored: only SIGKILL stops it.
		task := newTask(&api.ContainerSpec{
			Command:         sh(`trap "" TERM; while true; do sleep 1; done`),
			StopGracePeriod: duration(time.Second),
		})
		ctlr := en.controller(t, task)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		task = drive(ctx, t, task, ctlr, api.TaskStateRunning)
		start := time.Now()
		task.DesiredState = api.TaskStateShutdown
		task = drive(ctx, t, task, ctlr, api.TaskStateShutdown)
		took := time.Since(start)
		if task.Status.State != api.TaskStateShutdown {
			t.Fatalf("state %v err %q, want SHUTDOWN", task.Status.State, task.Status.Err)
		}
		if took < time.Second || took > 4*time.Second {
			t.Errorf("shutdown took %v: want the 1s grace period, then SIGKILL", took)
		}
	})

	t.Run("ShutdownStopSignalHonoured", func(t *testing.T) {
		t.Parallel()
		en := newEnv(t, d, archive)
		dir, out := outDir(t)
		for _, tc := range []struct{ signal, trap string }{{"", "TERM"}, {"SIGUSR1", "USR1"}} {
			task := newTask(&api.ContainerSpec{
				Command:         sh(`trap "echo got-` + tc.trap + ` > /out/` + tc.trap + `; exit 0" ` + tc.trap + `; touch /out/ready-` + tc.trap + `; while true; do sleep 0.1; done`),
				StopSignal:      tc.signal,
				StopGracePeriod: duration(20 * time.Second),
				Mounts:          []api.Mount{out},
			})
			ctlr := en.controller(t, task)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			drive(ctx, t, task, ctlr, api.TaskStateRunning)
			waitFor(t, 10*time.Second, "the trap to be set", func() bool {
				_, err := os.Stat(filepath.Join(dir, "ready-"+tc.trap))
				return err == nil
			})
			start := time.Now()
			if err := ctlr.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
			cancel()
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("stop signal %q: shutdown took %v, want well within the 20s grace", tc.signal, took)
			}
			if got := strings.TrimSpace(readFile(t, filepath.Join(dir, tc.trap))); got != "got-"+tc.trap {
				t.Errorf("stop signal %q: container wrote %q", tc.signal, got)
			}
		}
	})

	t.Run("CPULimitAndCapabilities", func(t *testing.T) {
		t.Parallel()
		en := newEnv(t, d, archive)
		dir, out := outDir(t)
		task := newTask(&api.ContainerSpec{
			Command:        sh(`cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/memory/memory.limit_in_bytes > /out/cg 2>&1; grep CapBnd /proc/self/status >> /out/cg; sysctl -n net.ipv4.ip_unprivileged_port_start >> /out/cg`),
			CapabilityAdd:  []string{"net_admin"},
			CapabilityDrop: []string{"CAP_CHOWN"},
			Sysctls:        map[string]string{"net.ipv4.ip_unprivileged_port_start": "80"},
			Mounts:         []api.Mount{out},
		})
		task.Spec.Resources = &api.ResourceRequirements{Limits: &api.Resources{NanoCPUs: 5e8, MemoryBytes: 64 << 20}}
		ctlr := en.controller(t, task)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		task = drive(ctx, t, task, ctlr, api.TaskStateCompleted)
		if task.Status.State != api.TaskStateCompleted {
			t.Fatalf("task: %v %q", task.Status.State, task.Status.Err)
		}
		got := lines(readFile(t, filepath.Join(dir, "cg")))
		if len(got) != 4 || got[0] != "50000" || got[1] != "67108864" || got[3] != "80" {
			t.Fatalf("container saw %q: want quota 50000, limit 64 MiB, sysctl 80", got)
		}
		// CAP_CHOWN is bit 0, CAP_NET_ADMIN bit 12.
		var bnd uint64
		if _, err := fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(got[2], "CapBnd:")), "%x", &bnd); err != nil {
			t.Fatalf("CapBnd %q: %v", got[2], err)
		}
		if bnd&1 != 0 || bnd&(1<<12) == 0 {
			t.Errorf("bounding set %x: want CAP_CHOWN dropped, CAP_NET_ADMIN added", bnd)
		}
	})

	t.Run("PrepareIdempotentAndRemoveLeavesNothing", func(t *testing.T) {
		t.Parallel()
		en := newEnv(t, d, archive)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		task := newTask(&api.ContainerSpec{Command: sh("sleep 1000")})
		ctlr := en.controller(t, task)
		task = drive(ctx, t, task, ctlr, api.TaskStateRunning)
		if err := ctlr.Prepare(ctx); !errors.Is(err, exec.ErrTaskPrepared) {
			t.Errorf("Prepare again: %v, want ErrTaskPrepared", err)
		}
		if err := ctlr.Start(ctx); !errors.Is(err, exec.ErrTaskStarted) {
			t.Errorf("Start again: %v, want ErrTaskStarted", err)
		}
		// Remove of a running task kills it first.
		if err := ctlr.Remove(ctx); err != nil {
			t.Fatal(err)
		}
		if err := ctlr.Remove(ctx); err != nil {
			t.Errorf("Remove again: %v", err)
		}
		assertNoContainers(t, en)
		if en.taskDirExists(task.ID) {
			t.Error("task state dir left after Remove")
		}
	})
}

// removeTask removes a task's container now.
func removeTask(t *testing.T, c *Controller) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Remove(ctx); err != nil {
		t.Fatal(err)
	}
}

// assertNoContainers checks en's namespace holds no container, task or
// container snapshot.
func assertNoContainers(t *testing.T, en *env) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cs, err := en.e.client.Containers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 0 {
		t.Errorf("%d containers left", len(cs))
	}
	n := 0
	err = en.e.client.SnapshotService(en.e.snapshotter).Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		if info.Kind == snapshots.KindActive {
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("%d active snapshots left", n)
	}
}

func TestNewSaysWhenContainerdDoesNotAnswer(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, what := range []string{"no socket", "stale socket"} {
		if what == "stale socket" {
			l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			l.SetUnlinkOnClose(false)
			l.Close()
		}
		start := time.Now()
		_, err := New(ctx, Config{Address: sock, StateDir: t.TempDir(), LogBinary: "/bin/true"})
		if err == nil || !strings.Contains(err.Error(), "containerd at "+sock) || !strings.Contains(err.Error(), "without --containerd-addr") {
			t.Errorf("%s: New: %v, want it to name the address and say what to do", what, err)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("%s: New took %v to fail", what, took)
		}
	}
}
