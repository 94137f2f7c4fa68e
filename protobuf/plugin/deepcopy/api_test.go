package deepcopy_test

import (
	"bytes"
	"compress/gzip"
	"io"
	"math/rand/v2"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/gogo/protobuf/proto"
	descriptor "github.com/gogo/protobuf/protoc-gen-gogo/descriptor"

	_ "github.com/flotilla/flotilla/api" // registers the API messages
)

// apiMessageTypes returns the Go types (pointers) of every message declared
// in api/*.proto, found through gogo's registry.
func apiMessageTypes(t *testing.T) map[string]reflect.Type {
	t.Helper()
	files, err := filepath.Glob("../../../api/*.proto")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Skip("no api/*.proto")
	}
	out := map[string]reflect.Type{}
	for _, f := range files {
		gz := proto.FileDescriptor(filepath.Base(f))
		if gz == nil {
			t.Errorf("%s is not registered with gogo/protobuf: api/*.pb.go not generated?", filepath.Base(f))
			continue
		}
		r, err := gzip.NewReader(bytes.NewReader(gz))
		if err != nil {
			t.Fatal(err)
		}
		raw, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		var fd descriptor.FileDescriptorProto
		if err := proto.Unmarshal(raw, &fd); err != nil {
			t.Fatal(err)
		}
		var walk func(prefix string, msgs []*descriptor.DescriptorProto)
		walk = func(prefix string, msgs []*descriptor.DescriptorProto) {
			for _, m := range msgs {
				if m.GetOptions().GetMapEntry() {
					continue
				}
				name := prefix + "." + m.GetName()
				if typ := proto.MessageType(name); typ != nil {
					out[name] = typ
				} else {
					t.Errorf("message %s is not registered", name)
				}
				walk(name, m.NestedType)
			}
		}
		walk(fd.GetPackage(), fd.MessageType)
	}
	return out
}

type copier interface {
	CopyFrom(interface{})
}

// TestAPICopy checks Copy and CopyFrom of every API message on randomly
// populated values: equal to the original, sharing no memory with it, and
// independent of it under mutation.
func TestAPICopy(t *testing.T) {
	typs := apiMessageTypes(t)
	with := 0
	for _, typ := range typs {
		if _, ok := reflect.Zero(typ).Interface().(copier); ok {
			with++
		}
	}
	if with == 0 {
		t.Skip("the API messages have no CopyFrom yet: api/*.pb.go predates protoc-gen-flotilla (run bash protobuf/generate.sh)")
	}
	for name, typ := range typs {
		t.Run(name, func(t *testing.T) {
			if _, ok := reflect.Zero(typ).Interface().(copier); !ok {
				t.Fatalf("%s has no CopyFrom", typ)
			}
			for seed := uint64(1); seed <= 20; seed++ {
				orig := populate(typ, seed)
				want := populate(typ, seed)
				cp := orig.MethodByName("Copy").Call(nil)[0]
				if !reflect.DeepEqual(cp.Interface(), orig.Interface()) {
					t.Fatalf("seed %d: copy differs from the original", seed)
				}
				checkNoSharing(t, typ.Elem().Name(), orig, cp)
				mutate(cp)
				if !reflect.DeepEqual(orig.Interface(), want.Interface()) {
					t.Fatalf("seed %d: mutating the copy changed the original", seed)
				}

				dst := reflect.New(typ.Elem())
				dst.Interface().(copier).CopyFrom(orig.Interface())
				if !reflect.DeepEqual(dst.Interface(), orig.Interface()) {
					t.Fatalf("seed %d: CopyFrom result differs from the source", seed)
				}
				checkNoSharing(t, typ.Elem().Name(), orig, dst)
			}
		})
	}
}

// populate returns a new *T (typ is *T) filled with pseudo-random values from
// seed: every pointer, slice and map set down to a few levels of nesting, one
// member of each oneof.
func populate(typ reflect.Type, seed uint64) reflect.Value {
	r := rand.New(rand.NewPCG(seed, seed))
	v := reflect.New(typ.Elem())
	fill(r, v.Elem(), 0)
	return v
}

func fill(r *rand.Rand, v reflect.Value, depth int) {
	const maxDepth = 4
	switch v.Kind() {
	case reflect.Ptr:
		if depth > maxDepth || r.IntN(8) == 0 {
			return
		}
		p := reflect.New(v.Type().Elem())
		fill(r, p.Elem(), depth+1)
		v.Set(p)
	case reflect.Slice:
		if depth > maxDepth {
			return
		}
		n := r.IntN(3) + 1
		s := reflect.MakeSlice(v.Type(), n, n)
		for i := 0; i < n; i++ {
			fill(r, s.Index(i), depth+1)
		}
		v.Set(s)
	case reflect.Map:
		if depth > maxDepth {
			return
		}
		m := reflect.MakeMap(v.Type())
		for i := 0; i < 3; i++ {
			k := reflect.New(v.Type().Key()).Elem()
			fill(r, k, depth+1)
			e := reflect.New(v.Type().Elem()).Elem()
			fill(r, e, depth+1)
			m.SetMapIndex(k, e)
		}
		v.Set(m)
	case reflect.Struct:
		if v.Type() == timeType {
			v.Set(reflect.ValueOf(time.Unix(r.Int64N(1<<32), r.Int64N(1e9)).UTC()))
			return
		}
		var wrappers []interface{}
		if w, ok := v.Addr().Interface().(interface{ XXX_OneofWrappers() []interface{} }); ok {
			wrappers = w.XXX_OneofWrappers()
		}
		for i := 0; i < v.NumField(); i++ {
			f := v.Type().Field(i)
			if !f.IsExported() || strings.HasPrefix(f.Name, "XXX_") {
				continue
			}
			if f.Type.Kind() == reflect.Interface {
				fillOneof(r, v.Field(i), wrappers, depth)
				continue
			}
			fill(r, v.Field(i), depth+1)
		}
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(r.Int64N(1000) + 1)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(r.Uint64N(200) + 1)
	case reflect.Float32, reflect.Float64:
		v.SetFloat(r.Float64() + 1)
	case reflect.String:
		v.SetString(string(rune('a'+r.IntN(26))) + "-str")
	}
}

// fillOneof sets the oneof interface field v to one of the wrapper types
// that implement it.
func fillOneof(r *rand.Rand, v reflect.Value, wrappers []interface{}, depth int) {
	var fits []reflect.Type
	for _, w := range wrappers {
		if wt := reflect.TypeOf(w); wt.Implements(v.Type()) {
			fits = append(fits, wt)
		}
	}
	if len(fits) == 0 {
		return
	}
	w := reflect.New(fits[r.IntN(len(fits))].Elem())
	fill(r, w.Elem(), depth+1)
	v.Set(w)
}
