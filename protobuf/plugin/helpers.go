// Package plugin holds the protobuf options understood by Flotilla's own
// protoc plugins (see plugin.proto) and helpers to read them from descriptors.
package plugin

import (
	"github.com/gogo/protobuf/proto"
	descriptor "github.com/gogo/protobuf/protoc-gen-gogo/descriptor"
)

// DeepcopyEnabled reports whether the deepcopy plugin generates Copy and
// CopyFrom for msg: true unless the message sets
// option (flotilla.protobuf.plugin.deepcopy) = false.
func DeepcopyEnabled(msg *descriptor.DescriptorProto) bool {
	return proto.GetBoolExtension(msg.GetOptions(), E_Deepcopy, true)
}
