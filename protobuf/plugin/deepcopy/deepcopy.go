// Package deepcopy is a gogo/protobuf generator plugin that gives every
// generated message two methods:
//
//	func (m *T) Copy() *T               // nil-safe; returns a deep copy
//	func (m *T) CopyFrom(src interface{}) // deep copies src (a *T) into m
//
// A copy shares no mutable memory with its source: slices, byte slices, maps,
// nested messages, oneof wrappers and pointers to values are all duplicated.
// Strings are immutable and shared.
//
// How a field of message type is copied depends on where the type comes from:
//
//   - messages of this plugin's own output (files generated in the same protoc
//     run, or any Go package under the prefix set by the "deepcopy_prefix"
//     parameter, by default github.com/flotilla/flotilla/) have Copy and
//     CopyFrom, and these are called;
//   - google.protobuf.Timestamp, Duration, Empty and the scalar wrappers
//     (gogo's types package) are plain values: they are copied by value;
//   - any other message (another project's gogo types, such as raftpb, or
//     google.protobuf.Any, Struct, ...) is copied with gogo's proto.Clone.
//
// A message opts out with option (flotilla.protobuf.plugin.deepcopy) = false
// from protobuf/plugin/plugin.proto; fields of such a type then fall back to
// proto.Clone.
//
// The plugin is registered with gogo's generator under the name "deepcopy";
// protoc-gen-flotilla always enables it.
package deepcopy

import (
	"fmt"
	"strings"

	"github.com/gogo/protobuf/gogoproto"
	descriptor "github.com/gogo/protobuf/protoc-gen-gogo/descriptor"
	"github.com/gogo/protobuf/protoc-gen-gogo/generator"

	flplugin "github.com/flotilla/flotilla/protobuf/plugin"
)

// Name is the name under which the plugin is registered with gogo's generator.
const Name = "deepcopy"

// DefaultPrefix is the Go import path prefix of packages whose messages are
// assumed to have been generated with this plugin (and so to have Copy).
const DefaultPrefix = "github.com/flotilla/flotilla/"

// PrefixParam is the protoc plugin parameter that overrides DefaultPrefix
// (for example --flotilla_out=deepcopy_prefix=example.com/x/,plugins=grpc:out).
const PrefixParam = "deepcopy_prefix"

// valueWKT are the google.protobuf messages whose gogo Go types hold no
// references (apart from XXX_unrecognized, which gogo leaves nil): a struct
// copy is a deep copy.
var valueWKT = map[string]bool{
	"Timestamp":   true,
	"Duration":    true,
	"Empty":       true,
	"DoubleValue": true,
	"FloatValue":  true,
	"Int64Value":  true,
	"UInt64Value": true,
	"Int32Value":  true,
	"UInt32Value": true,
	"BoolValue":   true,
	"StringValue": true,
}

type kind int

const (
	kValue    kind = iota // plain assignment is a deep copy
	kPtrValue             // pointer to a kValue type
	kBytes                // []byte or a type cast from it
	kPtrBytes             // *[]byte (gogoproto.wktpointer BytesValue)
	kMsg                  // a message with generated Copy/CopyFrom
	kMsgClone             // a message without them: gogo proto.Clone
	kCustom               // a gogoproto.customtype: Marshal/Unmarshal round trip
)

// elem describes one value to copy: a singular field, one element of a
// repeated field, or one value of a map.
type elem struct {
	kind   kind
	goType string // the Go type of the value, e.g. "*Foo", "Foo", "[]byte", "*int32"
	ptr    bool   // goType is a pointer
}

// base is the Go type without a leading '*'.
func (e elem) base() string { return strings.TrimPrefix(e.goType, "*") }

type plugin struct {
	*generator.Generator
	generator.PluginImports
	protoPkg generator.Single
	prefix   string
	genFiles map[string]bool
}

// New returns the deepcopy plugin.
func New() generator.Plugin { return &plugin{} }

func init() { generator.RegisterPlugin(New()) }

func (p *plugin) Name() string { return Name }

func (p *plugin) Init(g *generator.Generator) {
	p.Generator = g
	p.prefix = DefaultPrefix
	if v, ok := g.Param[PrefixParam]; ok {
		p.prefix = v
	}
	p.genFiles = make(map[string]bool)
	for _, f := range g.Request.GetFileToGenerate() {
		p.genFiles[f] = true
	}
}

func (p *plugin) Generate(file *generator.FileDescriptor) {
	p.PluginImports = generator.NewPluginImports(p.Generator)
	p.protoPkg = p.NewImport("github.com/gogo/protobuf/proto")
	if !p.genFiles[file.GetName()] {
		// gogo runs the plugins over every file, including dependencies
		// whose output it then throws away.
		return
	}
	for _, msg := range file.Messages() {
		if msg.GetOptions().GetMapEntry() || !flplugin.DeepcopyEnabled(msg.DescriptorProto) {
			continue
		}
		p.generateMessage(file, msg)
	}
}

// hasCopy reports whether the message type named typeName (fully qualified,
// with a leading dot) has generated Copy and CopyFrom methods.
func (p *plugin) hasCopy(typeName string) bool {
	d, ok := p.ObjectNamed(typeName).(*generator.Descriptor)
	if !ok || !flplugin.DeepcopyEnabled(d.DescriptorProto) {
		return false
	}
	if d.File().GetPackage() == "google.protobuf" {
		return false
	}
	if p.genFiles[d.File().GetName()] {
		return true
	}
	return p.prefix != "" && strings.HasPrefix(string(d.GoImportPath()), p.prefix)
}

func isValueWKT(typeName string) bool {
	name := strings.TrimPrefix(typeName, ".google.protobuf.")
	return name != typeName && valueWKT[name]
}

// classify describes a value of field f whose Go type is goType (for repeated
// fields: the element type, for maps: the value type).
func (p *plugin) classify(f *descriptor.FieldDescriptorProto, goType string) elem {
	e := elem{goType: goType, ptr: strings.HasPrefix(goType, "*")}
	switch {
	case gogoproto.IsCustomType(f):
		e.kind = kCustom
	case gogoproto.IsStdBytes(f):
		e.kind = kBytes
		if e.ptr {
			e.kind = kPtrBytes
		}
	case gogoproto.IsStdType(f):
		// time.Time, time.Duration and the Go types of the scalar wrappers.
		e.kind = kValue
	case f.IsMessage() || p.IsGroup(f):
		switch {
		case p.hasCopy(f.GetTypeName()):
			e.kind = kMsg
		case isValueWKT(f.GetTypeName()):
			e.kind = kValue
		default:
			e.kind = kMsgClone
		}
	case f.IsBytes():
		e.kind = kBytes
	default:
		e.kind = kValue
	}
	if e.kind == kValue && e.ptr {
		e.kind = kPtrValue
	}
	return e
}

func (p *plugin) generateMessage(file *generator.FileDescriptor, msg *generator.Descriptor) {
	if len(msg.GetExtensionRange()) > 0 {
		p.Fail(fmt.Sprintf("deepcopy: message %s has extension ranges, which are not supported; "+
			"set option (flotilla.protobuf.plugin.deepcopy) = false on it", msg.GetName()))
	}
	ccTypeName := generator.CamelCaseSlice(msg.TypeName())

	p.P()
	p.P(`// Copy returns a deep copy of m, or nil if m is nil.`)
	p.P(`func (m *`, ccTypeName, `) Copy() *`, ccTypeName, ` {`)
	p.In()
	p.P(`if m == nil {`)
	p.In()
	p.P(`return nil`)
	p.Out()
	p.P(`}`)
	p.P(`o := &`, ccTypeName, `{}`)
	p.P(`o.CopyFrom(m)`)
	p.P(`return o`)
	p.Out()
	p.P(`}`)
	p.P()

	p.P(`// CopyFrom makes m a deep copy of src, which must be a *`, ccTypeName, `.`)
	p.P(`// A nil src makes m the zero value.`)
	p.P(`func (m *`, ccTypeName, `) CopyFrom(src interface{}) {`)
	p.In()
	p.P(`o := src.(*`, ccTypeName, `)`)
	p.P(`if o == nil {`)
	p.In()
	p.P(`*m = `, ccTypeName, `{}`)
	p.P(`return`)
	p.Out()
	p.P(`}`)
	p.P(`if m == o {`)
	p.In()
	p.P(`return`)
	p.Out()
	p.P(`}`)
	p.P(`*m = *o`)

	oneofs := make(map[int32]bool)
	for _, field := range msg.Field {
		if field.OneofIndex != nil {
			if !oneofs[field.GetOneofIndex()] {
				oneofs[field.GetOneofIndex()] = true
				p.generateOneof(msg, field.GetOneofIndex())
			}
			continue
		}
		p.generateField(msg, field)
	}
	if gogoproto.HasUnrecognized(file.FileDescriptorProto, msg.DescriptorProto) {
		p.copyElem("m.XXX_unrecognized", "o.XXX_unrecognized", elem{kind: kBytes, goType: "[]byte"}, false)
	}
	p.Out()
	p.P(`}`)
	p.P()
}

func (p *plugin) generateField(msg *generator.Descriptor, field *descriptor.FieldDescriptorProto) {
	name := p.GetFieldName(msg, field)
	dst, src := "m."+name, "o."+name
	goType, _ := p.GoType(msg, field)

	switch {
	case p.IsMap(field):
		p.generateMap(msg, field, dst, src)
	case field.IsRepeated():
		e := p.classify(field, strings.TrimPrefix(goType, "[]"))
		p.P(`if `, src, ` != nil {`)
		p.In()
		p.P(dst, ` = make(`, goType, `, len(`, src, `))`)
		if e.kind == kValue {
			p.P(`copy(`, dst, `, `, src, `)`)
		} else {
			p.P(`for i := range `, src, ` {`)
			p.In()
			p.copyElem(dst+"[i]", src+"[i]", e, true)
			p.Out()
			p.P(`}`)
		}
		p.Out()
		p.P(`}`)
	default:
		p.copyElem(dst, src, p.classify(field, goType), false)
	}
}

func (p *plugin) generateMap(msg *generator.Descriptor, field *descriptor.FieldDescriptorProto, dst, src string) {
	m := p.GoMapType(nil, field)
	if !strings.HasPrefix(m.GoType, "map[") {
		p.Fail(fmt.Sprintf("deepcopy: field %s.%s: casttype on a map is not supported; "+
			"set option (flotilla.protobuf.plugin.deepcopy) = false on the message", msg.GetName(), field.GetName()))
	}
	// Keys are scalars, strings or enums (possibly cast): no brackets in them.
	valType := m.GoType[strings.Index(m.GoType, "]")+1:]
	e := p.classify(m.ValueAliasField, valType)

	p.P(`if `, src, ` != nil {`)
	p.In()
	p.P(dst, ` = make(`, m.GoType, `, len(`, src, `))`)
	p.P(`for k, v := range `, src, ` {`)
	p.In()
	switch {
	case e.kind == kValue:
		p.P(dst, `[k] = v`)
	case e.kind == kMsg && e.ptr:
		p.P(dst, `[k] = v.Copy()`)
	case e.kind == kMsgClone && e.ptr:
		p.P(dst, `[k] = `, p.protoPkg.Use(), `.Clone(v).(`, e.goType, `)`)
	default:
		p.P(`var nv `, e.goType)
		p.copyElem("nv", "v", e, true)
		p.P(dst, `[k] = nv`)
	}
	p.Out()
	p.P(`}`)
	p.Out()
	p.P(`}`)
}

// generateOneof copies the oneof with index idx: the wrapper struct is
// duplicated and its single field deep copied.
func (p *plugin) generateOneof(msg *generator.Descriptor, idx int32) {
	var fields []*descriptor.FieldDescriptorProto
	for _, f := range msg.Field {
		if f.OneofIndex != nil && f.GetOneofIndex() == idx {
			fields = append(fields, f)
		}
	}
	name := p.GetFieldName(msg, fields[0])
	p.P(`if o.`, name, ` != nil {`)
	p.In()
	p.P(`switch ov := o.`, name, `.(type) {`)
	for _, f := range fields {
		wrapper := p.OneOfTypeName(msg, f)
		fname := p.GetOneOfFieldName(msg, f)
		goType, _ := p.GoType(msg, f)
		e := p.classify(f, goType)
		p.P(`case *`, wrapper, `:`)
		p.In()
		p.P(`if ov != nil {`)
		p.In()
		p.P(`v := *ov`)
		p.copyElem("v."+fname, "ov."+fname, e, false)
		p.P(`m.`, name, ` = &v`)
		p.Out()
		p.P(`}`)
		p.Out()
	}
	p.P(`}`)
	p.Out()
	p.P(`}`)
}

// copyElem emits statements that make dst a deep copy of src. dst and src are
// addressable expressions. If fresh, dst holds the zero value; otherwise it
// holds a shallow copy of src (so plain values need no statement at all).
func (p *plugin) copyElem(dst, src string, e elem, fresh bool) {
	switch e.kind {
	case kValue:
		if fresh {
			p.P(dst, ` = `, src)
		}
	case kPtrValue:
		p.P(`if `, src, ` != nil {`)
		p.In()
		p.P(`c := *`, src)
		p.P(dst, ` = &c`)
		p.Out()
		p.P(`}`)
	case kBytes:
		p.P(`if `, src, ` != nil {`)
		p.In()
		p.P(dst, ` = make(`, e.goType, `, len(`, src, `))`)
		p.P(`copy(`, dst, `, `, src, `)`)
		p.Out()
		p.P(`}`)
	case kPtrBytes:
		p.P(`if `, src, ` != nil {`)
		p.In()
		p.P(`c := make(`, e.base(), `, len(*`, src, `))`)
		p.P(`copy(c, *`, src, `)`)
		p.P(dst, ` = &c`)
		p.Out()
		p.P(`}`)
	case kMsg:
		if e.ptr {
			p.P(dst, ` = `, src, `.Copy()`)
		} else {
			p.P(dst, `.CopyFrom(&`, src, `)`)
		}
	case kMsgClone:
		if e.ptr {
			p.P(dst, ` = `, p.protoPkg.Use(), `.Clone(`, src, `).(`, e.goType, `)`)
		} else {
			p.P(dst, ` = *`, p.protoPkg.Use(), `.Clone(&`, src, `).(*`, e.goType, `)`)
		}
	case kCustom:
		// A gogoproto.customtype has Marshal and Unmarshal methods; a round
		// trip through them is the one deep copy that works for any of them.
		// Its variables need a scope of their own unless the caller's
		// (a loop body) is already one.
		block := e.ptr || !fresh
		if e.ptr {
			p.P(`if `, src, ` != nil {`)
			p.In()
		} else if block {
			p.P(`{`)
			p.In()
		}
		p.P(`data, err := `, src, `.Marshal()`)
		p.P(`if err != nil {`)
		p.In()
		p.P(`panic(err)`)
		p.Out()
		p.P(`}`)
		p.P(`var c `, e.base())
		p.P(`if err := c.Unmarshal(data); err != nil {`)
		p.In()
		p.P(`panic(err)`)
		p.Out()
		p.P(`}`)
		if e.ptr {
			p.P(dst, ` = &c`)
		} else {
			p.P(dst, ` = c`)
		}
		if block {
			p.Out()
			p.P(`}`)
		}
	default:
		panic(fmt.Sprintf("deepcopy: unknown kind %d", e.kind))
	}
}
