package main

import "testing"

func TestWithPlugins(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", "plugins=deepcopy"},
		{"plugins=grpc", "plugins=grpc+deepcopy"},
		{"paths=source_relative,plugins=grpc,Ma.proto=x/a", "paths=source_relative,plugins=grpc+deepcopy,Ma.proto=x/a"},
		{"plugins=deepcopy+grpc", "plugins=deepcopy+grpc"},
		{"plugins=", "plugins=deepcopy"},
		{"Mb.proto=x/b", "Mb.proto=x/b,plugins=deepcopy"},
	} {
		if got := withPlugins(c.in, []string{"deepcopy"}); got != c.want {
			t.Errorf("withPlugins(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}
