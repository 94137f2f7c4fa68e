package containerd

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	remoteerrors "github.com/containerd/containerd/v2/core/remotes/errors"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/flotilla/flotilla/agent/exec"
	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/networking/hostnet"
)

func TestImageReferencesNormalizedAsDocker(t *testing.T) {
	for _, tc := range []struct {
		in, name, digest, domain string
	}{
		{"busybox", "docker.io/library/busybox:latest", "", "docker.io"},
		{"busybox:1.36", "docker.io/library/busybox:1.36", "", "docker.io"},
		{"me/app", "docker.io/me/app:latest", "", "docker.io"},
		{"127.0.0.1:5000/app:v1", "127.0.0.1:5000/app:v1", "", "127.0.0.1:5000"},
		{"localhost:5000/a/b", "localhost:5000/a/b:latest", "", "localhost:5000"},
		{
			"reg.example.com/app@sha256:" + strings.Repeat("a", 64),
			"reg.example.com/app@sha256:" + strings.Repeat("a", 64),
			"sha256:" + strings.Repeat("a", 64), "reg.example.com",
		},
		{
			"app:v1@sha256:" + strings.Repeat("b", 64),
			"docker.io/library/app:v1@sha256:" + strings.Repeat("b", 64),
			"sha256:" + strings.Repeat("b", 64), "docker.io",
		},
	} {
		r, err := parseImageRef(tc.in)
		if err != nil {
			t.Errorf("%s: %v", tc.in, err)
			continue
		}
		if r.Name != tc.name || r.Digest != tc.digest || r.Domain != tc.domain {
			t.Errorf("%s: got %+v, want name %s digest %q domain %s", tc.in, r, tc.name, tc.digest, tc.domain)
		}
	}
	for _, bad := range []string{"", "  ", "Busybox", "a@sha256:short"} {
		if _, err := parseImageRef(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestRegistryAuthDecodedAndScopedToItsServer(t *testing.T) {
	enc := func(s string) string { return base64.URLEncoding.EncodeToString([]byte(s)) }
	a, err := parseRegistryAuth(enc(`{"username":"u","password":"p+/?","serveraddress":"https://127.0.0.1:5000/v2/"}`))
	if err != nil {
		t.Fatal(err)
	}
	if a.Username != "u" || a.Password != "p+/?" {
		t.Errorf("decoded %+v", a)
	}
	if !a.forHost("127.0.0.1:5000", "127.0.0.1:5000") || a.forHost("evil.example.com", "127.0.0.1:5000") {
		t.Error("credential not scoped to its server address")
	}
	// Standard base64, no server address: the image's registry; auth field.
	b, err := parseRegistryAuth(base64.StdEncoding.EncodeToString([]byte(`{"auth":"` + base64.StdEncoding.EncodeToString([]byte("x:y")) + `"}`)))
	if err != nil {
		t.Fatal(err)
	}
	if b.Username != "x" || b.Password != "y" || !b.forHost("reg:1", "reg:1") || b.forHost("other:1", "reg:1") {
		t.Errorf("decoded %+v", b)
	}
	hub, _ := parseRegistryAuth(enc(`{"identitytoken":"tok","serveraddress":"https://index.docker.io/v1/"}`))
	if hub.IdentityToken != "tok" || !hub.forHost("registry-1.docker.io", "docker.io") {
		t.Errorf("Docker Hub credential %+v not used for registry-1.docker.io", hub)
	}
	if a, err := parseRegistryAuth(""); a != nil || err != nil {
		t.Errorf("empty: %v, %v", a, err)
	}
	if _, err := parseRegistryAuth("not base64 json!"); err == nil || strings.Contains(err.Error(), "not base64 json") {
		t.Errorf("bad credential: %v (must not echo the credential)", err)
	}
}

func TestLoopbackRegistriesArePlainHTTP(t *testing.T) {
	e := &Executor{cfg: Config{InsecureRegistries: []string{"reg.lan:5000"}}}
	hosts := e.registryHosts(nil, "")
	for host, scheme := range map[string]string{
		"127.0.0.1:5000": "http", "localhost:5000": "http", "[::1]:5000": "http", "127.1.2.3": "http",
		"reg.lan:5000": "http", "reg.lan:5001": "https", "docker.io": "https", "10.0.0.1:5000": "https",
	} {
		h, err := hosts(host)
		if err != nil || len(h) != 1 {
			t.Fatalf("%s: %v %v", host, h, err)
		}
		if h[0].Scheme != scheme {
			t.Errorf("%s: scheme %s, want %s", host, h[0].Scheme, scheme)
		}
	}
}

func TestPullErrorsKeepTheRegistrysWords(t *testing.T) {
	ref, _ := parseImageRef("127.0.0.1:5000/app:v1")
	for _, tc := range []struct {
		err       error
		want      string
		temporary bool
	}{
		{fmt.Errorf("resolve: %w", remoteerrors.ErrUnexpectedStatus{StatusCode: 401, Status: "401 Unauthorized"}), "pull access denied", false},
		{fmt.Errorf("pull access denied: %w", docker.ErrInvalidAuthorization), "unauthorized", false},
		{fmt.Errorf("127.0.0.1:5000/app:v1: %w", errdefs.ErrNotFound), "manifest unknown", false},
		{fmt.Errorf("failed to do request: %w", &url.Error{Op: "Head", URL: "http://x", Err: syscall.ECONNREFUSED}), "connection refused", false},
		{fmt.Errorf("containerd: %w", errdefs.ErrUnavailable), "containerd", true},
	} {
		err := pullError(ref, false, tc.err)
		if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), ref.Name) {
			t.Errorf("%v: got %q, want it to say %q and name the image", tc.err, err, tc.want)
		}
		if exec.IsTemporary(err) != tc.temporary {
			t.Errorf("%v: temporary %v, want %v", tc.err, exec.IsTemporary(err), tc.temporary)
		}
	}
}

func TestProcessArgsFromImageAndSpec(t *testing.T) {
	img := ocispec.ImageConfig{Entrypoint: []string{"/ep"}, Cmd: []string{"cmd", "arg"}}
	for _, tc := range []struct {
		command, args, want []string
	}{
		{nil, nil, []string{"/ep", "cmd", "arg"}},
		{nil, []string{"x"}, []string{"/ep", "x"}},
		{[]string{"/bin/sh"}, nil, []string{"/bin/sh"}}, // the image's cmd goes with its entrypoint
		{[]string{"/bin/sh", "-c"}, []string{"echo"}, []string{"/bin/sh", "-c", "echo"}},
	} {
		got, err := processArgs(&api.ContainerSpec{Command: tc.command, Args: tc.args}, img)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("command %q args %q: %q, %v; want %q", tc.command, tc.args, got, err, tc.want)
		}
	}
	if _, err := processArgs(&api.ContainerSpec{}, ocispec.ImageConfig{}); err == nil {
		t.Error("no command anywhere: no error")
	}
}

func TestStopSignalFromSpecThenImage(t *testing.T) {
	for _, tc := range []struct {
		spec, image string
		want        syscall.Signal
	}{
		{"", "", syscall.SIGTERM},
		{"", "SIGINT", syscall.SIGINT},
		{"SIGUSR1", "SIGINT", syscall.SIGUSR1},
		{"QUIT", "", syscall.SIGQUIT},
		{"9", "", syscall.SIGKILL},
	} {
		got, err := stopSignal(&api.ContainerSpec{StopSignal: tc.spec}, ocispec.ImageConfig{StopSignal: tc.image})
		if err != nil || got != tc.want {
			t.Errorf("spec %q image %q: %v, %v; want %v", tc.spec, tc.image, got, err, tc.want)
		}
	}
	if _, err := stopSignal(&api.ContainerSpec{StopSignal: "SIGNOPE"}, ocispec.ImageConfig{}); err == nil {
		t.Error("unknown signal: no error")
	}
}

func TestResourceAndCapabilityConversion(t *testing.T) {
	if q := cpuQuota(5e8); q != 50000 {
		t.Errorf("0.5 CPU: quota %d, want 50000", q)
	}
	if q := cpuQuota(1); q != 1000 {
		t.Errorf("tiny CPU: quota %d, want the kernel minimum 1000", q)
	}
	got, err := capabilityList([]string{"net_admin", "CAP_SYS_TIME", "all"})
	if err != nil || !slices.Equal(got, []string{"CAP_NET_ADMIN", "CAP_SYS_TIME", "ALL"}) {
		t.Errorf("capabilities: %q, %v", got, err)
	}
	if _, err := capabilityList([]string{"CAP_MAKE_COFFEE"}); err == nil {
		t.Error("unknown capability: no error")
	}
	if got := humanBytes(16 << 20); got != "16 MiB" {
		t.Errorf("humanBytes(16 MiB) = %q", got)
	}
	if got := humanBytes(1536); got != "1.5 KiB" {
		t.Errorf("humanBytes(1536) = %q", got)
	}
}

func TestMountsPlanned(t *testing.T) {
	src := t.TempDir()
	vols, taskDir := "/state/volumes", "/state/tasks/t1"
	p, err := planMounts([]api.Mount{
		{Type: api.MountTypeBind, Source: src, Target: "/data/", ReadOnly: true},
		{Type: api.MountTypeVolume, Source: "db", Target: "/db"},
		{Type: api.MountTypeVolume, Target: "/anon"},
		{Type: api.MountTypeTmpfs, Target: "/tmp", TmpfsSizeBytes: 1 << 20, TmpfsMode: 0o1777},
	}, vols, taskDir)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct{ dst, typ, src, opts string }{
		{"/data", "bind", src, "rbind,rprivate,ro"},
		{"/db", "bind", "/state/volumes/db", "rbind,rprivate"},
		{"/anon", "bind", "/state/tasks/t1/volumes/2", "rbind,rprivate"},
		{"/tmp", "tmpfs", "tmpfs", "nosuid,nodev,noexec,size=1048576,mode=1777"},
	}
	if len(p.mounts) != len(want) {
		t.Fatalf("mounts %+v", p.mounts)
	}
	for i, w := range want {
		m := p.mounts[i]
		if m.Destination != w.dst || m.Type != w.typ || m.Source != w.src || strings.Join(m.Options, ",") != w.opts {
			t.Errorf("mount %d: %+v, want %+v", i, m, w)
		}
	}
	if !slices.Equal(p.mkdirs, []string{"/state/volumes/db", "/state/tasks/t1/volumes/2"}) {
		t.Errorf("mkdirs %q", p.mkdirs)
	}

	for _, tc := range []struct {
		m    api.Mount
		want string
	}{
		{api.Mount{Type: api.MountTypeBind, Source: filepath.Join(src, "missing"), Target: "/x"}, "does not exist on this node"},
		{api.Mount{Type: api.MountTypeBind, Source: "relative", Target: "/x"}, "absolute path on the node"},
		{api.Mount{Type: api.MountTypeBind, Source: src, Target: "x"}, "absolute path in the container"},
		{api.Mount{Type: api.MountTypeVolume, Source: "../escape", Target: "/x"}, "volume name"},
		{api.Mount{Type: api.MountTypeTmpfs, Target: "/x", TmpfsMode: 0o77777}, "mode"},
	} {
		if _, err := planMounts([]api.Mount{tc.m}, vols, taskDir); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want an error saying %q", tc.m, err, tc.want)
		}
	}
	if _, err := planMounts([]api.Mount{
		{Type: api.MountTypeTmpfs, Target: "/x"}, {Type: api.MountTypeTmpfs, Target: "/x/"},
	}, vols, taskDir); err == nil {
		t.Error("one target mounted twice: no error")
	}
}

func TestNetworkFiles(t *testing.T) {
	got := string(resolvConf([]byte("# by hand\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch lan\noptions ndots:2\nnameserver ::1\n")))
	want := "# by hand\nnameserver 10.0.0.2\nsearch lan\noptions ndots:2\n"
	if got != want {
		t.Errorf("resolv.conf:\n%s\nwant:\n%s", got, want)
	}
	if got := string(resolvConf([]byte("nameserver 127.0.0.1\n"))); got != "nameserver 8.8.8.8\nnameserver 8.8.4.4\n" {
		t.Errorf("only loopback nameservers: %q", got)
	}

	dir := t.TempDir()
	att := &hostnet.Attachment{NetNSPath: "/run/netns/x", Address: netip.MustParsePrefix("10.99.0.5/24")}
	mounts, err := writeNetworkFiles(dir, "web-1", att)
	if err != nil {
		t.Fatal(err)
	}
	if len(mounts) != 3 {
		t.Fatalf("mounts %+v: want hostname, hosts, resolv.conf", mounts)
	}
	for _, m := range mounts {
		if !slices.Contains(m.Options, "ro") || !strings.HasPrefix(m.Destination, "/etc/") {
			t.Errorf("mount %+v: want a read-only bind into /etc", m)
		}
	}
	hosts, _ := os.ReadFile(filepath.Join(dir, "hosts"))
	if !strings.Contains(string(hosts), "10.99.0.5\tweb-1\n") || !strings.Contains(string(hosts), "127.0.0.1\tlocalhost\n") {
		t.Errorf("hosts:\n%s", hosts)
	}
	// Without a network: no resolv.conf, the hostname on loopback.
	mounts, err = writeNetworkFiles(t.TempDir(), "web-1", nil)
	if err != nil || len(mounts) != 2 {
		t.Errorf("no network: %+v, %v", mounts, err)
	}
}

func TestUnavailableContainerdIsTemporary(t *testing.T) {
	if !exec.IsTemporary(classify(fmt.Errorf("x: %w", errdefs.ErrUnavailable))) {
		t.Error("unavailable: not temporary")
	}
	if exec.IsTemporary(classify(errors.New("invalid"))) {
		t.Error("other error: temporary")
	}
}
