package main

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/flotilla/flotilla/api"
)

// applyRegistryAuth, for --with-registry-auth, puts the credentials the
// Docker client keeps for the image's registry into the service
// (ContainerSpec.RegistryAuth, in the X-Registry-Auth form Docker sends), so
// that nodes can pull a private image. The managers store it with the spec
// and never print it.
func applyRegistryAuth(fv flagValues, spec *api.ServiceSpec) error {
	if !fv.Bool("with-registry-auth") {
		return nil
	}
	registry := registryOf(spec.Task.Container.Image)
	auth, err := dockerCredentials(registry)
	if err != nil {
		return fmt.Errorf("--with-registry-auth: %w", err)
	}
	spec.Task.Container.RegistryAuth = auth
	return nil
}

// registryOf is the registry host an image reference names, as Docker reads
// it: the first path component if it looks like a host (has a dot or a
// port, or is localhost), else Docker Hub.
func registryOf(image string) string {
	first, _, hasPath := strings.Cut(image, "/")
	if hasPath && (strings.ContainsAny(first, ".:") || first == "localhost") {
		return first
	}
	return "docker.io"
}

// dockerConfigPath is the Docker client's config file: $DOCKER_CONFIG/config.json
// or ~/.docker/config.json.
func dockerConfigPath() (string, error) {
	if dir := os.Getenv("DOCKER_CONFIG"); dir != "" {
		return filepath.Join(dir, "config.json"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(home, ".docker", "config.json"), nil
}

// dockerCredentials reads the credentials `docker login REGISTRY` stored
// for registry and encodes them as X-Registry-Auth (base64url JSON).
func dockerCredentials(registry string) (string, error) {
	path, err := dockerConfigPath()
	if err != nil {
		return "", err
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("no credentials: %s does not exist (log in with `docker login %s`, or write its auths entry)", path, registry)
	}
	if err != nil {
		return "", err
	}
	var cfg struct {
		Auths map[string]struct {
			Auth          string `json:"auth"`
			IdentityToken string `json:"identitytoken"`
		} `json:"auths"`
		CredsStore string `json:"credsStore"`
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	keys := []string{registry, "https://" + registry, "http://" + registry}
	if registry == "docker.io" {
		keys = append(keys, "https://index.docker.io/v1/", "index.docker.io")
	}
	for _, k := range keys {
		entry, ok := cfg.Auths[k]
		if !ok {
			continue
		}
		creds := map[string]string{"serveraddress": registry}
		switch {
		case entry.IdentityToken != "":
			creds["identitytoken"] = entry.IdentityToken
		case entry.Auth != "":
			raw, err := base64.StdEncoding.DecodeString(entry.Auth)
			if err != nil {
				return "", fmt.Errorf("%s: auths[%q].auth is not base64: %w", path, k, err)
			}
			user, pass, ok := strings.Cut(string(raw), ":")
			if !ok {
				return "", fmt.Errorf("%s: auths[%q].auth is not USER:PASSWORD", path, k)
			}
			creds["username"], creds["password"] = user, pass
		default:
			continue
		}
		b, _ := json.Marshal(creds)
		return base64.URLEncoding.EncodeToString(b), nil
	}
	if cfg.CredsStore != "" {
		return "", fmt.Errorf("%s keeps credentials in the %q credential helper, which swarmctl does not read: put an auths entry for %s in the file", path, cfg.CredsStore, registry)
	}
	return "", fmt.Errorf("%s has no credentials for %s (log in with `docker login %s`)", path, registry, registry)
}
