package containerd

import (
	"context"
	"encoding/base64"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla/flotilla/agent/exec/containerd/containerdtest"
	"github.com/flotilla/flotilla/api"
)

// auth encodes a credential as `--with-registry-auth` sends it.
func auth(user, password, server string) string {
	return base64.URLEncoding.EncodeToString([]byte(`{"username":"` + user + `","password":"` + password + `","serveraddress":"` + server + `"}`))
}

// TestPullFromRegistry pulls images from registries on loopback (plain
// HTTP): public, with credentials, digest-pinned; and reports what the
// registry said when it fails.
func TestPullFromRegistry(t *testing.T) {
	d := containerdtest.StartDaemon(t)
	archiveA := containerdtest.BusyboxImage(t, containerdtest.ImageOptions{Cmd: []string{"sh", "-c", "echo A > /out/which"}})
	archiveB := containerdtest.BusyboxImage(t, containerdtest.ImageOptions{Cmd: []string{"sh", "-c", "echo B > /out/which"}})
	public := containerdtest.StartRegistry(t, containerdtest.RegistryOptions{})
	private := containerdtest.StartRegistry(t, containerdtest.RegistryOptions{Username: "alice", Password: "s3cret"})
	containerdtest.Push(t, archiveA, public, "app/busybox:v1", "")
	containerdtest.Push(t, archiveA, private, "team/busybox:v1", "alice:s3cret")

	// The digest of A as the registry has it, then the tag moves to B.
	digestA := resolveDigest(t, public+"/app/busybox:v1")
	containerdtest.Push(t, archiveB, public, "app/busybox:v1", "")

	closed := closedPort(t)

	t.Run("Public", func(t *testing.T) {
		t.Parallel()
		en := newEnv(t, d, archiveA)
		dir, out := outDir(t)
		task := newTask(&api.ContainerSpec{Image: public + "/app/busybox:v1", Mounts: []api.Mount{out}})
		ctlr := en.controller(t, task)
		var mu sync.Mutex
		var progress []string
		ctlr.Progress(func(m string) { mu.Lock(); progress = append(progress, m); mu.Unlock() })
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		task = drive(ctx, t, task, ctlr, api.TaskStateCompleted)
		if task.Status.State != api.TaskStateCompleted {
			t.Fatalf("task: %v %q", task.Status.State, task.Status.Err)
		}
		if got := strings.TrimSpace(readFile(t, filepath.Join(dir, "which"))); got != "B" {
			t.Errorf("ran image %s, want B (the tag's current image)", got)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(progress) == 0 || !strings.Contains(progress[0], "pulling image "+public+"/app/busybox:v1") {
			t.Errorf("progress %q: want pull progress", progress)
		}
	})

	t.Run("DigestPinned", func(t *testing.T) {
		t.Parallel()
		en := newEnv(t, d, archiveA)
		dir, out := outDir(t)
		for _, ref := range []string{public + "/app/busybox@" + digestA, public + "/app/busybox:v1@" + digestA} {
			task, _ := en.run(t, &api.ContainerSpec{Image: ref, Mounts: []api.Mount{out}})
			if task.Status.State != api.TaskStateCompleted {
				t.Fatalf("%s: %v %q", ref, task.Status.State, task.Status.Err)
			}
			if got := strings.TrimSpace(readFile(t, filepath.Join(dir, "which"))); got != "A" {
				t.Errorf("%s ran image %s, want A (the pinned digest, not the tag's current image)", ref, got)
			}
		}
	})

	t.Run("DigestPinnedPresentLocally", func(t *testing.T) {
		t.Parallel()
		en := newEnv(t, d, archiveA) // imported as testImage: A, under another name
		dir, out := outDir(t)
		task, _ := en.run(t, &api.ContainerSpec{Image: "registry.invalid/nowhere@" + digestA, Mounts: []api.Mount{out}})
		if task.Status.State != api.TaskStateCompleted {
			t.Fatalf("%v %q: want the imported image with that digest to run without a registry", task.Status.State, task.Status.Err)
		}
		if got := strings.TrimSpace(readFile(t, filepath.Join(dir, "which"))); got != "A" {
			t.Errorf("ran image %s, want A", got)
		}
	})

	t.Run("WithCredentials", func(t *testing.T) {
		t.Parallel()
		en := newEnv(t, d, archiveA)
		_, out := outDir(t)
		task, _ := en.run(t, &api.ContainerSpec{Image: private + "/team/busybox:v1", RegistryAuth: auth("alice", "s3cret", private), Mounts: []api.Mount{out}})
		if task.Status.State != api.TaskStateCompleted {
			t.Errorf("right credentials: %v %q", task.Status.State, task.Status.Err)
		}
	})

	t.Run("ConcurrentTasksPullOnce", func(t *testing.T) {
		t.Parallel()
		en := newEnv(t, d, archiveA)
		_, out := outDir(t)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		var wg sync.WaitGroup
		for range 8 {
			task := newTask(&api.ContainerSpec{Image: public + "/app/busybox:v1", Mounts: []api.Mount{out}})
			ctlr := en.controller(t, task)
			wg.Go(func() {
				if got := drive(ctx, t, task, ctlr, api.TaskStateCompleted); got.Status.State != api.TaskStateCompleted {
					t.Errorf("task: %v %q", got.Status.State, got.Status.Err)
				}
			})
		}
		wg.Wait()
		en.e.pullMu.Lock()
		defer en.e.pullMu.Unlock()
		if en.e.pullCount != 1 {
			t.Errorf("%d pulls for 8 tasks of one image, want 1", en.e.pullCount)
		}
	})

	t.Run("Failures", func(t *testing.T) {
		t.Parallel()
		en := newEnv(t, d, archiveA)
		for _, tc := range []struct {
			name, image, auth string
			want              []string
		}{
			{"no credentials", private + "/team/busybox:v1", "", []string{"pull access denied", "unauthorized"}},
			{"wrong credentials", private + "/team/busybox:v1", auth("alice", "wrong", private), []string{"pull access denied", "unauthorized", "refused the credentials"}},
			{"credentials for another registry", private + "/team/busybox:v1", auth("alice", "s3cret", "other.example.com"), []string{"unauthorized"}},
			{"missing tag", public + "/app/busybox:nope", "", []string{"manifest unknown", public + "/app/busybox:nope"}},
			{"missing repository", public + "/nothing/here:v1", "", []string{"manifest unknown"}},
			{"closed port", closed + "/app/busybox:v1", "", []string{"connection refused"}},
		} {
			task, _ := en.run(t, &api.ContainerSpec{Image: tc.image, RegistryAuth: tc.auth})
			t.Logf("%s: %s", tc.name, task.Status.Err)
			if task.Status.State != api.TaskStateRejected {
				t.Errorf("%s: %v %q, want REJECTED", tc.name, task.Status.State, task.Status.Err)
				continue
			}
			for _, w := range tc.want {
				if !strings.Contains(task.Status.Err, w) {
					t.Errorf("%s: error %q does not say %q", tc.name, task.Status.Err, w)
				}
			}
			if strings.Contains(task.Status.Err, "s3cret") {
				t.Errorf("%s: error %q shows the password", tc.name, task.Status.Err)
			}
			if en.taskDirExists(task.ID) {
				t.Errorf("%s: rejected task left its state dir", tc.name)
			}
		}
		assertNoContainers(t, en)
	})
}

// resolveDigest asks the registry for ref's manifest digest.
func resolveDigest(t *testing.T, ref string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, desc, err := containerdtest.Resolver("", "").Resolve(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	return desc.Digest.String()
}

// closedPort is a loopback host:port nothing listens on.
func closedPort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}
