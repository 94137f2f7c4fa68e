package containerd

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"syscall"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	remoteerrors "github.com/containerd/containerd/v2/core/remotes/errors"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// imageRef is an image reference as the service gave it, normalized the way
// Docker does ("busybox" is "docker.io/library/busybox:latest").
type imageRef struct {
	// Name is the full reference: a tag, a digest, or both.
	Name string
	// Digest is the pinned digest, if any: the image run is exactly that.
	Digest string
	// Domain is the registry's host[:port] ("docker.io" for Docker Hub).
	Domain string
}

// parseImageRef normalizes ref; an empty or malformed one is an error that
// rejects the task.
func parseImageRef(ref string) (imageRef, error) {
	if strings.TrimSpace(ref) == "" {
		return imageRef{}, errors.New("the task has no image: give the service one")
	}
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return imageRef{}, fmt.Errorf("image reference %q: %w", ref, err)
	}
	named = reference.TagNameOnly(named)
	r := imageRef{Name: named.String(), Domain: reference.Domain(named)}
	if d, ok := named.(reference.Digested); ok {
		r.Digest = d.Digest().String()
	}
	return r, nil
}

// registryAuth is Docker's X-Registry-Auth: what `--with-registry-auth`
// sends with a service, base64url-encoded JSON.
type registryAuth struct {
	Username      string `json:"username,omitempty"`
	Password      string `json:"password,omitempty"`
	Auth          string `json:"auth,omitempty"` // base64 "user:password", as in ~/.docker/config.json
	ServerAddress string `json:"serveraddress,omitempty"`
	IdentityToken string `json:"identitytoken,omitempty"`
	RegistryToken string `json:"registrytoken,omitempty"`
}

// parseRegistryAuth decodes s (base64url JSON, padded or not; standard
// base64 is accepted too). An empty s is no credential.
func parseRegistryAuth(s string) (*registryAuth, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	var raw []byte
	var err error
	for _, enc := range []*base64.Encoding{base64.URLEncoding, base64.RawURLEncoding, base64.StdEncoding, base64.RawStdEncoding} {
		if raw, err = enc.DecodeString(s); err == nil {
			break
		}
	}
	if err != nil {
		return nil, errors.New("registry credentials are not base64-encoded JSON as `--with-registry-auth` sends them")
	}
	var a registryAuth
	if err := json.Unmarshal(raw, &a); err != nil {
		return nil, errors.New("registry credentials are not base64-encoded JSON as `--with-registry-auth` sends them")
	}
	if a.Username == "" && a.Password == "" && a.Auth != "" {
		if up, err := base64.StdEncoding.DecodeString(a.Auth); err == nil {
			a.Username, a.Password, _ = strings.Cut(string(up), ":")
		}
	}
	return &a, nil
}

// forHost reports whether the credential applies to registry host (as the
// resolver names it: "registry-1.docker.io" for Docker Hub). A credential
// without a server address applies to the image's own registry.
func (a *registryAuth) forHost(host, imageDomain string) bool {
	want := a.ServerAddress
	if want == "" {
		want = imageDomain
	}
	return normalizeRegistryHost(want) == normalizeRegistryHost(host)
}

// normalizeRegistryHost reduces a registry address ("https://index.docker.io/v1/",
// "registry-1.docker.io", "127.0.0.1:5000") to a comparable host[:port].
func normalizeRegistryHost(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.Index(s, "://"); i >= 0 {
		s = s[i+3:]
	}
	s, _, _ = strings.Cut(s, "/")
	s = strings.ToLower(s)
	switch s {
	case "docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com":
		return "docker.io"
	}
	return s
}

// isLoopbackHost reports whether host[:port] names this machine: Docker
// reaches such registries over plain HTTP without being told.
func isLoopbackHost(host string) bool {
	h := host
	if hh, _, err := net.SplitHostPort(host); err == nil {
		h = hh
	}
	h = strings.Trim(h, "[]")
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(h)
	return err == nil && ip.IsLoopback()
}

// registryHosts is how the executor reaches registries: plain HTTP for
// loopback and the configured insecure registries, HTTPS for all others,
// with the task's credentials for the registry they name.
func (e *Executor) registryHosts(auth *registryAuth, imageDomain string) docker.RegistryHosts {
	var opts []docker.AuthorizerOpt
	if auth != nil {
		opts = append(opts, docker.WithAuthCreds(func(host string) (string, string, error) {
			if !auth.forHost(host, imageDomain) {
				return "", "", nil
			}
			if auth.IdentityToken != "" {
				return "", auth.IdentityToken, nil
			}
			return auth.Username, auth.Password, nil
		}))
		if auth.RegistryToken != "" {
			opts = append(opts, docker.WithAuthHeader(http.Header{"Authorization": {"Bearer " + auth.RegistryToken}}))
		}
	}
	return docker.ConfigureDefaultRegistries(
		docker.WithAuthorizer(docker.NewDockerAuthorizer(opts...)),
		docker.WithPlainHTTP(func(host string) (bool, error) {
			if isLoopbackHost(host) {
				return true, nil
			}
			for _, r := range e.cfg.InsecureRegistries {
				if strings.EqualFold(normalizeRegistryHost(r), normalizeRegistryHost(host)) {
					return true, nil
				}
			}
			return false, nil
		}),
	)
}

// ensureImage returns the task's image, unpacked in the executor's
// snapshotter: the one in the namespace if present (pulled earlier, or
// imported on an air-gapped node), else pulled from its registry. progress,
// if not nil, receives pull progress.
func (e *Executor) ensureImage(ctx context.Context, ref imageRef, auth *registryAuth, progress func(string)) (client.Image, error) {
	img, err := e.localImage(ctx, ref)
	if err != nil {
		return nil, err
	}
	if img == nil {
		img, err = e.pull(ctx, ref, auth, progress)
		if err != nil {
			return nil, err
		}
	}
	unpacked, err := img.IsUnpacked(ctx, e.snapshotter)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", ref.Name, err)
	}
	if !unpacked {
		if err := img.Unpack(ctx, e.snapshotter); err != nil {
			return nil, fmt.Errorf("unpack image %s: %w", ref.Name, err)
		}
	}
	return img, nil
}

// localImage finds ref in the namespace: by name, or for a digest-pinned
// reference any image whose manifest is that digest (an imported archive
// names it by tag). nil, nil if absent.
func (e *Executor) localImage(ctx context.Context, ref imageRef) (client.Image, error) {
	img, err := e.client.GetImage(ctx, ref.Name)
	if err == nil {
		return img, nil
	}
	if !errdefs.IsNotFound(err) {
		return nil, fmt.Errorf("look up image %s: %w", ref.Name, err)
	}
	if ref.Digest == "" {
		return nil, nil
	}
	imgs, err := e.client.ListImages(ctx, "target.digest=="+ref.Digest)
	if err != nil {
		return nil, fmt.Errorf("look up image %s: %w", ref.Name, err)
	}
	if len(imgs) == 0 {
		return nil, nil
	}
	return imgs[0], nil
}

// pull fetches and unpacks ref, once for all the tasks that want it at the
// same time.
func (e *Executor) pull(ctx context.Context, ref imageRef, auth *registryAuth, progress func(string)) (client.Image, error) {
	key := ref.Name
	if auth != nil {
		key += "\x00" + auth.Username + "\x00" + auth.Password + "\x00" + auth.IdentityToken + "\x00" + auth.ServerAddress
	}
	e.pullMu.Lock()
	p, ok := e.pulls[key]
	if !ok {
		p = &pullCall{done: make(chan struct{})}
		e.pulls[key] = p
		e.pullCount++
		// The pull outlives the first caller's ctx: others may wait for it.
		go func() {
			pctx, cancel := context.WithTimeout(e.baseCtx, pullTimeout)
			defer cancel()
			p.img, p.err = e.doPull(pctx, ref, auth, p.report)
			e.pullMu.Lock()
			delete(e.pulls, key)
			e.pullMu.Unlock()
			close(p.done)
		}()
	}
	e.pullMu.Unlock()
	if progress != nil {
		p.watch(progress)
	}
	select {
	case <-p.done:
		return p.img, p.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// pullCall is a pull under way, shared by the tasks that wait for it.
type pullCall struct {
	done chan struct{}
	img  client.Image
	err  error

	mu       sync.Mutex
	last     string
	watchers []func(string)
}

func (p *pullCall) watch(fn func(string)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.watchers = append(p.watchers, fn)
	if p.last != "" {
		fn(p.last)
	}
}

func (p *pullCall) report(msg string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.last = msg
	for _, fn := range p.watchers {
		fn(msg)
	}
}

func (e *Executor) doPull(ctx context.Context, ref imageRef, auth *registryAuth, progress func(string)) (client.Image, error) {
	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: e.registryHosts(auth, ref.Domain)})
	pr := &pullProgress{ref: ref.Name, report: progress}
	pr.report(fmt.Sprintf("pulling image %s", ref.Name))
	img, err := e.client.Pull(ctx, ref.Name,
		client.WithResolver(resolver),
		client.WithPullUnpack,
		client.WithPullSnapshotter(e.snapshotter),
		client.WithImageHandler(images.HandlerFunc(pr.handle)),
	)
	if err != nil {
		return nil, pullError(ref, auth != nil && auth.forHost(hostOf(ref), ref.Domain), err)
	}
	pr.report(fmt.Sprintf("pulled image %s", ref.Name))
	return img, nil
}

// pullProgress counts the blobs a pull fetches.
type pullProgress struct {
	ref    string
	report func(string)

	mu          sync.Mutex
	blobs, size int64
}

func (p *pullProgress) handle(_ context.Context, desc ocispec.Descriptor) ([]ocispec.Descriptor, error) {
	if images.IsLayerType(desc.MediaType) {
		p.mu.Lock()
		p.blobs++
		p.size += desc.Size
		msg := fmt.Sprintf("pulling image %s: %d layers (%s)", p.ref, p.blobs, humanBytes(p.size))
		p.mu.Unlock()
		p.report(msg)
	}
	return nil, nil
}

// pullError turns what the registry said into a message an operator can act
// on, keeping the registry's own words (`pull access denied`, `manifest
// unknown`, `connection refused`). A containerd that is unreachable is a
// temporary error; anything the registry said rejects the task.
//
// withCreds says credentials for the image's registry came with the task.
func pullError(ref imageRef, withCreds bool, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("pull image %s: %w", ref.Name, err)
	}
	if errdefs.IsUnavailable(err) {
		return temporary(fmt.Errorf("pull image %s: containerd: %w", ref.Name, err))
	}
	var status remoteerrors.ErrUnexpectedStatus
	switch {
	case errors.As(err, &status) && (status.StatusCode == http.StatusUnauthorized || status.StatusCode == http.StatusForbidden),
		errors.Is(err, docker.ErrInvalidAuthorization):
		if withCreds {
			return fmt.Errorf("pull access denied for %s: unauthorized: the registry refused the credentials the service has, or the repository does not exist (update the service with --with-registry-auth and valid credentials): %w", ref.Name, err)
		}
		return fmt.Errorf("pull access denied for %s: unauthorized: the repository does not exist or needs credentials (update the service with --with-registry-auth): %w", ref.Name, err)
	case errors.As(err, &status) && status.StatusCode == http.StatusNotFound,
		errdefs.IsNotFound(err):
		return fmt.Errorf("manifest for %s not found: manifest unknown: check the image name and tag: %w", ref.Name, err)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("pull image %s: registry %s: connection refused: is the registry running and reachable from this node? %w", ref.Name, ref.Domain, err)
	}
	var uerr *url.Error
	if errors.As(err, &uerr) {
		return fmt.Errorf("pull image %s: registry %s unreachable: %w", ref.Name, ref.Domain, err)
	}
	return fmt.Errorf("pull image %s: %w", ref.Name, err)
}

// humanBytes is n in B, KiB, MiB or GiB.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 2; m /= unit {
		div *= unit
		exp++
	}
	if n%div == 0 {
		return fmt.Sprintf("%d %ciB", n/div, "KMG"[exp])
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMG"[exp])
}

// hostOf is the registry host the resolver contacts for ref (Docker Hub's
// API host for docker.io).
func hostOf(ref imageRef) string {
	if ref.Domain == "docker.io" {
		return "registry-1.docker.io"
	}
	return ref.Domain
}
