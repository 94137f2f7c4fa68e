package main

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// --with-registry-auth sends the credentials docker login stored for the
// image's registry, as Docker's X-Registry-Auth, and says clearly when there
// are none.
func TestWithRegistryAuth(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("DOCKER_CONFIG", dir)
	userPass := base64.StdEncoding.EncodeToString([]byte("alice:s3cret"))
	config := `{"auths": {"127.0.0.1:5000": {"auth": "` + userPass + `"}, "https://index.docker.io/v1/": {"auth": "` +
		base64.StdEncoding.EncodeToString([]byte("bob:hub")) + `"}}}`
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	decode := func(auth string) map[string]string {
		t.Helper()
		raw, err := base64.URLEncoding.DecodeString(auth)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]string
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	for image, want := range map[string]map[string]string{
		"127.0.0.1:5000/team/app:1": {"username": "alice", "password": "s3cret", "serveraddress": "127.0.0.1:5000"},
		"library/nginx":             {"username": "bob", "password": "hub", "serveraddress": "docker.io"},
		"nginx":                     {"username": "bob", "password": "hub", "serveraddress": "docker.io"},
	} {
		spec, _, err := parseService(t, nil, "--name", "s", "--image", image, "--with-registry-auth")
		if err != nil {
			t.Fatalf("%s: %v", image, err)
		}
		got := decode(spec.Task.Container.RegistryAuth)
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s: %s = %q, want %q", image, k, got[k], v)
			}
		}
	}
	_, _, err := parseService(t, nil, "--name", "s", "--image", "registry.example:443/app", "--with-registry-auth")
	if err == nil || !strings.Contains(err.Error(), "no credentials for registry.example:443") {
		t.Fatalf("image of a registry without credentials: %v", err)
	}
	spec, _, err := parseService(t, nil, "--name", "s", "--image", "127.0.0.1:5000/app")
	if err != nil || spec.Task.Container.RegistryAuth != "" {
		t.Fatalf("without the flag: auth %q, err %v", spec.Task.Container.RegistryAuth, err)
	}
}
