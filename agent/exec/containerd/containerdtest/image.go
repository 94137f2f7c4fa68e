package containerdtest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// BusyboxPath is the static busybox the images are made of (Debian's
// busybox-static).
const BusyboxPath = "/bin/busybox"

// imageTime is every timestamp in a built image, so that equal options give
// equal digests.
var imageTime = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// ImageOptions configures BusyboxImage. The zero value is an image whose
// default process is `sh` with PATH set, running as root in /.
type ImageOptions struct {
	// Entrypoint, Cmd, WorkingDir, User (name or uid[:gid]), StopSignal
	// (e.g. "SIGINT") and Labels go into the image config as Docker
	// writes them.
	Entrypoint []string
	Cmd        []string
	WorkingDir string
	User       string
	StopSignal string
	Labels     map[string]string
	// Env is added after PATH (which is always set).
	Env []string
	// ExposedPorts such as "80/tcp".
	ExposedPorts []string
	// Healthcheck, if set, is written as Docker writes a HEALTHCHECK:
	// config.Healthcheck.
	Healthcheck *Healthcheck
	// Files are extra regular files (path inside the image -> content),
	// mode 0644, owned by root.
	Files map[string]string
}

// Healthcheck is a Docker image HEALTHCHECK as it appears in the image
// config JSON (config.Healthcheck): Test is ["CMD", args...],
// ["CMD-SHELL", command] or ["NONE"]; durations are encoded in
// nanoseconds.
type Healthcheck struct {
	Test          []string      `json:"Test,omitempty"`
	Interval      time.Duration `json:"Interval,omitempty"`
	Timeout       time.Duration `json:"Timeout,omitempty"`
	StartPeriod   time.Duration `json:"StartPeriod,omitempty"`
	StartInterval time.Duration `json:"StartInterval,omitempty"`
	Retries       int           `json:"Retries,omitempty"`
}

// ImagePath is PATH in the images' config.
const ImagePath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Users in the images' /etc/passwd: root (0), app (1000, home /home/app)
// and nobody (65534, group nogroup).
const (
	passwdFile = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
	groupFile  = "root:x:0:\napp:x:1000:\nnogroup:x:65534:\n"
)

// imageConfig is ocispec.ImageConfig plus Docker's Healthcheck.
type imageConfig struct {
	ocispec.ImageConfig
	Healthcheck *Healthcheck `json:"Healthcheck,omitempty"`
}

// image is ocispec.Image with imageConfig.
type image struct {
	Created *time.Time `json:"created,omitempty"`
	ocispec.Platform
	Config  imageConfig       `json:"config,omitempty"`
	RootFS  ocispec.RootFS    `json:"rootfs"`
	History []ocispec.History `json:"history,omitempty"`
}

// layerCache holds the busybox layer, the same for every image of a test
// binary.
var layerCache struct {
	once           sync.Once
	gz             []byte
	diffID, digest digest.Digest
	err            error
}

// BusyboxImage writes an OCI image archive (the oci-archive layout: a tar of
// oci-layout, index.json and blobs/sha256/...) into a temp dir of t and
// returns its path. The image has one gzip layer: /bin/busybox, every
// applet of `busybox --list-full` as a symlink to it (sh, sleep, echo,
// cat, nc, httpd, wget, ...), /etc/passwd and /etc/group (root, app 1000,
// nobody 65534), /tmp (1777), /root, /home/app, empty /proc /sys /dev; and
// a config from opts. Equal options give byte-identical archives (fixed
// timestamps), so digests are stable. The index's one manifest is
// annotated org.opencontainers.image.ref.name=latest.
func BusyboxImage(t testing.TB, opts ImageOptions) string {
	t.Helper()
	Require(t, BusyboxPath)
	p := filepath.Join(t.TempDir(), "busybox.oci.tar")
	if err := WriteBusyboxImage(p, opts); err != nil {
		t.Fatal(err)
	}
	return p
}

// WriteBusyboxImage writes the archive BusyboxImage makes to path.
func WriteBusyboxImage(path string, opts ImageOptions) error {
	layerCache.once.Do(func() {
		layerCache.gz, layerCache.diffID, layerCache.digest, layerCache.err = busyboxLayer()
	})
	if layerCache.err != nil {
		return layerCache.err
	}
	layers := []layer{{gz: layerCache.gz, diffID: layerCache.diffID, digest: layerCache.digest}}
	if len(opts.Files) > 0 {
		l, err := filesLayer(opts.Files)
		if err != nil {
			return err
		}
		layers = append(layers, l)
	}

	created := imageTime
	img := image{
		Created:  &created,
		Platform: ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH},
		Config: imageConfig{
			ImageConfig: ocispec.ImageConfig{
				User:       opts.User,
				Env:        append([]string{ImagePath}, opts.Env...),
				Entrypoint: opts.Entrypoint,
				Cmd:        opts.Cmd,
				WorkingDir: opts.WorkingDir,
				Labels:     opts.Labels,
				StopSignal: opts.StopSignal,
			},
			Healthcheck: opts.Healthcheck,
		},
		RootFS: ocispec.RootFS{Type: "layers"},
	}
	if len(opts.ExposedPorts) > 0 {
		img.Config.ExposedPorts = map[string]struct{}{}
		for _, p := range opts.ExposedPorts {
			img.Config.ExposedPorts[p] = struct{}{}
		}
	}
	if len(opts.Entrypoint) == 0 && len(opts.Cmd) == 0 {
		img.Config.Cmd = []string{"sh"}
	}
	var layerDescs []ocispec.Descriptor
	for _, l := range layers {
		img.RootFS.DiffIDs = append(img.RootFS.DiffIDs, l.diffID)
		img.History = append(img.History, ocispec.History{Created: &created, CreatedBy: "containerdtest"})
		layerDescs = append(layerDescs, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: l.digest, Size: int64(len(l.gz))})
	}
	configJSON, err := json.Marshal(img)
	if err != nil {
		return err
	}
	manifest := ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(configJSON), Size: int64(len(configJSON))},
		Layers:    layerDescs,
	}
	manifestJSON, err := json.Marshal(manifest)
	if err != nil {
		return err
	}
	index := ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{{
			MediaType:   ocispec.MediaTypeImageManifest,
			Digest:      digest.FromBytes(manifestJSON),
			Size:        int64(len(manifestJSON)),
			Platform:    &ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH},
			Annotations: map[string]string{ocispec.AnnotationRefName: "latest"},
		}},
	}
	indexJSON, err := json.Marshal(index)
	if err != nil {
		return err
	}

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: imageTime, Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	for _, dir := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: imageTime, Format: tar.FormatPAX}); err != nil {
			return err
		}
	}
	files := []struct {
		name string
		data []byte
	}{
		{ocispec.ImageLayoutFile, []byte(`{"imageLayoutVersion":"` + ocispec.ImageLayoutVersion + `"}`)},
		{"index.json", indexJSON},
		{blobPath(manifest.Config.Digest), configJSON},
		{blobPath(index.Manifests[0].Digest), manifestJSON},
	}
	for _, l := range layers {
		files = append(files, struct {
			name string
			data []byte
		}{blobPath(l.digest), l.gz})
	}
	for _, f := range files {
		if err := add(f.name, f.data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

func blobPath(d digest.Digest) string {
	return "blobs/" + d.Algorithm().String() + "/" + d.Encoded()
}

type layer struct {
	gz             []byte
	diffID, digest digest.Digest
}

// tarEntry is one file of a layer.
type tarEntry struct {
	hdr  tar.Header
	data []byte
}

// busyboxLayer builds the busybox layer.
func busyboxLayer() (gz []byte, diffID, dgst digest.Digest, err error) {
	bb, err := os.ReadFile(BusyboxPath)
	if err != nil {
		return nil, "", "", fmt.Errorf("read %s: %w; install busybox-static (make deps)", BusyboxPath, err)
	}
	out, err := exec.Command(BusyboxPath, "--list-full").Output()
	if err != nil {
		return nil, "", "", fmt.Errorf("%s --list-full: %w", BusyboxPath, err)
	}
	dirs := map[string]int64{"bin": 0o755, "sbin": 0o755, "usr": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755,
		"etc": 0o755, "tmp": 0o1777, "root": 0o700, "home": 0o755, "var": 0o755, "proc": 0o555, "sys": 0o555, "dev": 0o755}
	var entries []tarEntry
	dir := func(name string, mode int64, uid int) {
		entries = append(entries, tarEntry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, Uid: uid, Gid: uid}})
	}
	for name, mode := range dirs {
		dir(name, mode, 0)
	}
	dir("home/app", 0o755, 1000)
	entries = append(entries,
		tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755}, data: bb},
		tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "etc/passwd", Mode: 0o644}, data: []byte(passwdFile)},
		tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "etc/group", Mode: 0o644}, data: []byte(groupFile)},
	)
	seen := map[string]bool{"bin/busybox": true}
	for _, name := range strings.Fields(string(out)) {
		name = strings.TrimPrefix(path.Clean("/"+name), "/")
		if seen[name] || !strings.Contains(name, "/") {
			continue
		}
		seen[name] = true
		if _, ok := dirs[path.Dir(name)]; !ok {
			continue
		}
		entries = append(entries, tarEntry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: "/bin/busybox", Mode: 0o777}})
	}
	return gzipLayer(entries)
}

// filesLayer is a layer of extra files.
func filesLayer(files map[string]string) (layer, error) {
	var entries []tarEntry
	seenDir := map[string]bool{}
	for name, content := range files {
		name = strings.TrimPrefix(path.Clean("/"+name), "/")
		for d := path.Dir(name); d != "." && !seenDir[d]; d = path.Dir(d) {
			seenDir[d] = true
			entries = append(entries, tarEntry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755}})
		}
		entries = append(entries, tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644}, data: []byte(content)})
	}
	gz, diffID, dgst, err := gzipLayer(entries)
	return layer{gz: gz, diffID: diffID, digest: dgst}, err
}

// gzipLayer writes entries (sorted by name, parents first) as a gzipped tar
// with fixed timestamps and returns it with its diff ID (digest of the
// tar) and digest (of the gzip).
func gzipLayer(entries []tarEntry) ([]byte, digest.Digest, digest.Digest, error) {
	sort.Slice(entries, func(i, j int) bool { return entries[i].hdr.Name < entries[j].hdr.Name })
	var gzBuf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gzBuf, gzip.BestSpeed)
	h := sha256.New()
	tw := tar.NewWriter(io.MultiWriter(zw, h))
	for _, e := range entries {
		hdr := e.hdr
		hdr.ModTime = imageTime
		hdr.Format = tar.FormatPAX
		hdr.Size = int64(len(e.data))
		if err := tw.WriteHeader(&hdr); err != nil {
			return nil, "", "", err
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, "", "", err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, "", "", err
	}
	if err := zw.Close(); err != nil {
		return nil, "", "", err
	}
	diffID := digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(h.Sum(nil)))
	return gzBuf.Bytes(), diffID, digest.FromBytes(gzBuf.Bytes()), nil
}

// Import imports the image archive at archivePath into namespace as ref
// (e.g. "docker.io/library/busybox:test") and unpacks it for the overlayfs
// snapshotter, as `ctr -n NS images import` does. It returns the image.
func Import(t testing.TB, client *containerd.Client, namespace, archivePath, ref string) containerd.Image {
	t.Helper()
	img, err := ImportArchive(context.Background(), client, namespace, archivePath, ref)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// ImportArchive is Import without a testing.TB.
func ImportArchive(ctx context.Context, client *containerd.Client, namespace, archivePath, ref string) (containerd.Image, error) {
	ctx = namespaces.WithNamespace(ctx, namespace)
	f, err := os.Open(archivePath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	imgs, err := client.Import(ctx, f, containerd.WithImageRefTranslator(func(string) string { return ref }))
	if err != nil {
		return nil, fmt.Errorf("import %s as %s: %w", archivePath, ref, err)
	}
	if len(imgs) != 1 {
		return nil, fmt.Errorf("import %s: %d images, want 1", archivePath, len(imgs))
	}
	img := containerd.NewImage(client, imgs[0])
	if err := img.Unpack(ctx, Snapshotter); err != nil {
		return nil, fmt.Errorf("unpack %s: %w", ref, err)
	}
	return img, nil
}
