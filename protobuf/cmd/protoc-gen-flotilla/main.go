// Command protoc-gen-flotilla is Flotilla's protoc plugin: gogo's
// protoc-gen-gogofaster (generated Marshal, Unmarshal and Size; no
// XXX_unrecognized, XXX_sizecache or unkeyed-literal guard fields; GetX
// getters kept, as gogofaster keeps them) plus Flotilla's own generator
// plugins, which are always enabled:
//
//   - deepcopy: Copy() and CopyFrom() for every message.
//
// gogo's gRPC plugin is available as usual with the parameter plugins=grpc.
// Per-file or per-message gogoproto options that are set explicitly win over
// these defaults: a file turns getters off with
// option (gogoproto.goproto_getters_all) = false.
//
// Use it through protobuf/generate.sh, which builds it from this module so that
// the generator's version is the one pinned in go.mod.
package main

import (
	"strings"

	"github.com/gogo/protobuf/proto"
	descriptor "github.com/gogo/protobuf/protoc-gen-gogo/descriptor"
	"github.com/gogo/protobuf/vanity"
	"github.com/gogo/protobuf/vanity/command"

	"github.com/flotilla/flotilla/protobuf/plugin/deepcopy"
)

// ownPlugins are Flotilla's generator plugins, enabled on every run. Each is
// registered with gogo's generator by its package's init function.
var ownPlugins = []string{deepcopy.Name}

func main() {
	req := command.Read()
	req.Parameter = proto.String(withPlugins(req.GetParameter(), ownPlugins))

	files := vanity.FilterFiles(req.GetProtoFile(), vanity.NotGoogleProtobufDescriptorProto)

	// The protoc-gen-gogofaster settings.
	vanity.ForEachFile(files, vanity.TurnOnMarshalerAll)
	vanity.ForEachFile(files, vanity.TurnOnSizerAll)
	vanity.ForEachFile(files, vanity.TurnOnUnmarshalerAll)
	vanity.ForEachFieldInFilesExcludingExtensions(vanity.OnlyProto2(files), turnOffNullableForNativeTypesWithoutDefaults)
	vanity.ForEachFile(files, vanity.TurnOffGoUnrecognizedAll)
	vanity.ForEachFile(files, vanity.TurnOffGoUnkeyedAll)
	vanity.ForEachFile(files, vanity.TurnOffGoSizecacheAll)

	command.Write(command.Generate(req))
}

// turnOffNullableForNativeTypesWithoutDefaults is gogofaster's proto2 rule
// (scalars without a default are values, not pointers) minus its no-op on
// bytes fields, which only makes gogo print a warning per field.
func turnOffNullableForNativeTypesWithoutDefaults(field *descriptor.FieldDescriptorProto) {
	if field.GetType() == descriptor.FieldDescriptorProto_TYPE_BYTES {
		return
	}
	vanity.TurnOffNullableForNativeTypesWithoutDefaultsOnly(field)
}

// withPlugins adds names to the "plugins" entry of a protoc plugin parameter
// string (comma-separated key=value pairs; plugin names are joined with '+').
// gogo's generator runs only the plugins named there, apart from its own.
func withPlugins(param string, names []string) string {
	var parts []string
	found := false
	for _, kv := range strings.Split(param, ",") {
		if kv == "" {
			continue
		}
		if v, ok := strings.CutPrefix(kv, "plugins="); ok {
			found = true
			have := map[string]bool{}
			list := []string{}
			for _, n := range strings.Split(v, "+") {
				if n != "" && !have[n] {
					have[n] = true
					list = append(list, n)
				}
			}
			for _, n := range names {
				if !have[n] {
					have[n] = true
					list = append(list, n)
				}
			}
			kv = "plugins=" + strings.Join(list, "+")
		}
		parts = append(parts, kv)
	}
	if !found {
		parts = append(parts, "plugins="+strings.Join(names, "+"))
	}
	return strings.Join(parts, ",")
}
