package containerdtest

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

const testNS = "swarmd"

func TestBusyboxImageIsDeterministicAndCarriesTheConfig(t *testing.T) {
	opts := ImageOptions{
		Entrypoint: []string{"sh", "-c"},
		Cmd:        []string{"echo hi"},
		User:       "app",
		WorkingDir: "/home/app",
		StopSignal: "SIGINT",
		Labels:     map[string]string{"a": "b"},
		Env:        []string{"X=1"},
		Healthcheck: &Healthcheck{
			Test: []string{"CMD-SHELL", "true"}, Interval: 2 * time.Second, Timeout: time.Second, Retries: 3,
		},
		Files: map[string]string{"/srv/www/index.html": "hello\n"},
	}
	t0 := time.Now()
	a := BusyboxImage(t, opts)
	t.Logf("first image built in %v", time.Since(t0))
	t0 = time.Now()
	b := BusyboxImage(t, opts)
	t.Logf("second image built in %v", time.Since(t0))
	ab, _ := os.ReadFile(a)
	bb, _ := os.ReadFile(b)
	t.Logf("archive size %d bytes", len(ab))
	if !bytes.Equal(ab, bb) {
		t.Fatal("two archives built from equal options differ")
	}

	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(ab))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		files[h.Name] = data
	}
	var index ocispec.Index
	if err := json.Unmarshal(files["index.json"], &index); err != nil || len(index.Manifests) != 1 {
		t.Fatalf("index.json: %v %s", err, files["index.json"])
	}
	var manifest ocispec.Manifest
	if err := json.Unmarshal(files[blobPath(index.Manifests[0].Digest)], &manifest); err != nil {
		t.Fatal(err)
	}
	if len(manifest.Layers) != 2 {
		t.Errorf("%d layers, want 2 (busybox, files)", len(manifest.Layers))
	}
	var config struct {
		Config struct {
			User        string
			Env         []string
			StopSignal  string
			Healthcheck map[string]any
		} `json:"config"`
	}
	if err := json.Unmarshal(files[blobPath(manifest.Config.Digest)], &config); err != nil {
		t.Fatal(err)
	}
	c := config.Config
	if c.User != "app" || c.StopSignal != "SIGINT" || len(c.Env) != 2 || c.Env[0] != ImagePath {
		t.Errorf("config = %+v", c)
	}
	// Docker writes durations in nanoseconds.
	if c.Healthcheck["Interval"] != float64(2e9) || c.Healthcheck["Retries"] != float64(3) {
		t.Errorf("Healthcheck = %v", c.Healthcheck)
	}
	t.Logf("busybox layer %d bytes (gzip)", manifest.Layers[0].Size)
}

// TestContainersRunAndCleanupLeavesNothing starts a daemon, imports an
// image, runs a container that exits 0, one that exits 3 and one left
// running, and checks, once the subtest's cleanup has run, that no shim,
// container process, mount or directory of that daemon is left.
func TestContainersRunAndCleanupLeavesNothing(t *testing.T) {
	var d *Daemon
	var runningPID uint32
	t.Run("run", func(t *testing.T) {
		t0 := time.Now()
		d = StartDaemon(t)
		t.Logf("daemon answered after %v", time.Since(t0))
		client := d.Client(t, testNS)
		ctx := namespaces.WithNamespace(context.Background(), testNS)

		t0 = time.Now()
		archive := BusyboxImage(t, ImageOptions{})
		img := Import(t, client, testNS, archive, "docker.io/library/busybox:test")
		t.Logf("image built and imported in %v", time.Since(t0))

		logDir := t.TempDir()
		run := func(name string, args ...string) (uint32, string) {
			t.Helper()
			t0 := time.Now()
			id := uniqueID(name)
			ctr, err := client.NewContainer(ctx, id, d.WithRuncRoot(),
				containerd.WithNewSnapshot(id, img),
				containerd.WithNewSpec(oci.WithImageConfig(img), oci.WithProcessArgs(args...)))
			if err != nil {
				t.Fatal(err)
			}
			logPath := filepath.Join(logDir, id+".log")
			task, err := ctr.NewTask(ctx, cio.LogFile(logPath))
			if err != nil {
				t.Fatal(err)
			}
			exitCh, err := task.Wait(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := task.Start(ctx); err != nil {
				t.Fatal(err)
			}
			st := <-exitCh
			if _, err := task.Delete(ctx); err != nil {
				t.Fatal(err)
			}
			if err := ctr.Delete(ctx, containerd.WithSnapshotCleanup); err != nil {
				t.Fatal(err)
			}
			out, _ := os.ReadFile(logPath)
			t.Logf("container %s ran in %v", name, time.Since(t0))
			return st.ExitCode(), string(out)
		}
		// stdout only: containerd 1.6's file logging (cio.LogFile) copies
		// stderr on its own goroutine and may close the file before it has
		// ("error copying stderr"); stderr through our own logger is
		// tested in the logging package.
		if code, out := run("echo", "sh", "-c", "echo hello from $(id -un); echo second line"); code != 0 || !strings.Contains(out, "hello from root") || !strings.Contains(out, "second line") {
			t.Errorf("echo container: exit %d, log %q", code, out)
		}
		if code, _ := run("exit3", "sh", "-c", "exit 3"); code != 3 {
			t.Errorf("exit3 container: exit %d, want 3", code)
		}

		// Left running on purpose: the cleanup must remove it.
		id := uniqueID("sleeper")
		ctr, err := client.NewContainer(ctx, id, d.WithRuncRoot(),
			containerd.WithNewSnapshot(id, img),
			containerd.WithNewSpec(oci.WithImageConfig(img), oci.WithProcessArgs("sleep", "1000")))
		if err != nil {
			t.Fatal(err)
		}
		task, err := ctr.NewTask(ctx, cio.NullIO)
		if err != nil {
			t.Fatal(err)
		}
		if err := task.Start(ctx); err != nil {
			t.Fatal(err)
		}
		runningPID = task.Pid()
		// The shims of the containers deleted above exit on their own, a
		// little later under load: wait for the sleeper's to be the only one.
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			shims, err := d.Shims()
			if err == nil && len(shims) == 1 {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("Shims = %v, %v; want one", shims, err)
				break
			}
		}
		if mounts, err := d.Mounts(); err != nil || len(mounts) == 0 {
			t.Errorf("Mounts = %v, %v; want the sleeper's rootfs", mounts, err)
		}
	})
	if d == nil {
		return
	}
	assertGone(t, d, runningPID)
}

// TestCleanupAfterDaemonDied kills containerd under a running container: the
// cleanup must still kill the shim and the container and unmount its rootfs.
func TestCleanupAfterDaemonDied(t *testing.T) {
	var d *Daemon
	var runningPID uint32
	var id string
	t.Run("run", func(t *testing.T) {
		d = StartDaemon(t)
		client := d.Client(t, testNS)
		ctx := namespaces.WithNamespace(context.Background(), testNS)
		img := Import(t, client, testNS, BusyboxImage(t, ImageOptions{}), "busybox:test")
		// runc's default root, shared by every containerd: the cleanup
		// must find and delete the container's state there.
		id = uniqueID("sleeper")
		ctr, err := client.NewContainer(ctx, id,
			containerd.WithNewSnapshot(id, img),
			containerd.WithNewSpec(oci.WithImageConfig(img), oci.WithProcessArgs("sleep", "1000")))
		if err != nil {
			t.Fatal(err)
		}
		task, err := ctr.NewTask(ctx, cio.NullIO)
		if err != nil {
			t.Fatal(err)
		}
		if err := task.Start(ctx); err != nil {
			t.Fatal(err)
		}
		runningPID = task.Pid()
		if err := syscall.Kill(d.PID(), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-d.Done()
		if !alive(int(runningPID)) {
			t.Errorf("container process %d died with containerd", runningPID)
		}
	})
	if d == nil {
		return
	}
	assertGone(t, d, runningPID)
	if _, err := os.Stat(filepath.Join("/run/containerd/runc", testNS, id)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("runc state of %s left: %v", id, err)
	}
	for _, sub := range []string{"memory", "pids", "cpu"} {
		if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", sub, testNS, id)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("cgroup %s/%s/%s left: %v", sub, testNS, id, err)
		}
	}
}

// uniqueID makes container IDs that do not collide with other tests'
// (other packages run containers at the same time).
func uniqueID(name string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%x", name, b)
}

// TestRunningContainerSurvivesADaemonRestart stops containerd under a
// running container and starts it again: the task is still running, with
// the same PID, and the new daemon manages it.
func TestRunningContainerSurvivesADaemonRestart(t *testing.T) {
	d := StartDaemon(t)
	client := d.Client(t, testNS)
	ctx := namespaces.WithNamespace(context.Background(), testNS)
	img := Import(t, client, testNS, BusyboxImage(t, ImageOptions{}), "busybox:test")
	id := uniqueID("survivor")
	ctr, err := client.NewContainer(ctx, id, d.WithRuncRoot(),
		containerd.WithNewSnapshot(id, img),
		containerd.WithNewSpec(oci.WithImageConfig(img), oci.WithProcessArgs("sleep", "1000")))
	if err != nil {
		t.Fatal(err)
	}
	task, err := ctr.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	pid := task.Pid()
	oldPID := d.PID()

	t0 := time.Now()
	d.Restart(t)
	t.Logf("daemon restarted in %v", time.Since(t0))
	if d.PID() == oldPID || alive(oldPID) {
		t.Fatalf("daemon not restarted: pid %d -> %d", oldPID, d.PID())
	}
	ctr, err = client.LoadContainer(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	task, err = ctr.Task(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err := task.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Status != containerd.Running || task.Pid() != pid {
		t.Fatalf("after restart: status %s pid %d, want running pid %d", st.Status, task.Pid(), pid)
	}
	exitCh, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if st := <-exitCh; st.ExitCode() != 137 {
		t.Errorf("exit code %d after SIGKILL, want 137", st.ExitCode())
	}
}

func assertGone(t *testing.T, d *Daemon, containerPID uint32) {
	t.Helper()
	if shims, err := d.Shims(); err != nil || len(shims) != 0 {
		t.Errorf("shims left: %v %v", shims, err)
	}
	if containerPID != 0 && alive(int(containerPID)) {
		t.Errorf("container process %d left running", containerPID)
	}
	if mounts, err := mountsUnder(d.Dir); err != nil || len(mounts) != 0 {
		t.Errorf("mounts left: %v %v", mounts, err)
	}
	if _, err := os.Stat(d.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s left: %v", d.Dir, err)
	}
	if alive(d.PID()) {
		t.Errorf("containerd %d left running", d.PID())
	}
}

// TestPushAndPullThroughRegistry pushes an image to registries with and
// without auth and pulls it back with the containerd client.
func TestPushAndPullThroughRegistry(t *testing.T) {
	Require(t, "skopeo", RegistryBinary)
	d := StartDaemon(t)
	client := d.Client(t, testNS)
	ctx := namespaces.WithNamespace(context.Background(), testNS)
	archive := BusyboxImage(t, ImageOptions{Cmd: []string{"echo", "pulled"}})

	for _, tc := range []struct {
		name       string
		user, pass string
	}{
		{"anonymous", "", ""},
		{"basic-auth", "flotilla", "s3cret"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t0 := time.Now()
			addr := StartRegistry(t, RegistryOptions{Username: tc.user, Password: tc.pass})
			t.Logf("registry answered after %v", time.Since(t0))
			creds := ""
			if tc.user != "" {
				creds = tc.user + ":" + tc.pass
			}
			t0 = time.Now()
			Push(t, archive, addr, "app/busybox:1", creds)
			t.Logf("pushed in %v", time.Since(t0))
			ref := addr + "/app/busybox:1"

			if tc.user != "" {
				_, err := client.Pull(ctx, ref, containerd.WithResolver(Resolver("", "")), containerd.WithPullUnpack, containerd.WithPullSnapshotter(Snapshotter))
				if err == nil {
					t.Fatal("pull without credentials from a registry with auth succeeded")
				}
			}
			t0 = time.Now()
			img, err := client.Pull(ctx, ref, containerd.WithResolver(Resolver(tc.user, tc.pass)), containerd.WithPullUnpack, containerd.WithPullSnapshotter(Snapshotter))
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("pulled in %v", time.Since(t0))
			unpacked, err := img.IsUnpacked(ctx, Snapshotter)
			if err != nil || !unpacked {
				t.Errorf("IsUnpacked = %v, %v", unpacked, err)
			}
			spec, err := img.Spec(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(spec.Config.Cmd, " "); got != "echo pulled" {
				t.Errorf("pulled image Cmd = %q", got)
			}
		})
	}
}
