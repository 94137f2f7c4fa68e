package deepcopy_test

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/gogo/protobuf/proto"
	"github.com/gogo/protobuf/types"
	"go.etcd.io/raft/v3/raftpb"

	dct "github.com/flotilla/flotilla/protobuf/internal/testprotos/deepcopytest"
	"github.com/flotilla/flotilla/protobuf/internal/testprotos/otherpkg"
)

func leaf(name string) *dct.Leaf {
	return &dct.Leaf{
		Name:   name,
		Data:   []byte(name + "-data"),
		Labels: map[string]string{"k": name},
		Tags:   []string{name, "tag"},
	}
}

func other(name string) *otherpkg.Other {
	return &otherpkg.Other{
		Name:   name,
		Values: []string{name, "v"},
		Blobs:  map[string][]byte{"b": []byte(name)},
	}
}

func ts(sec int64) *types.Timestamp { return &types.Timestamp{Seconds: sec, Nanos: 7} }

func stdTime(sec int64) *time.Time {
	t := time.Unix(sec, 9).UTC()
	return &t
}

func entry(i uint64) *raftpb.Entry {
	return &raftpb.Entry{Term: 2, Index: i, Type: raftpb.EntryConfChange, Data: []byte{byte(i), 1, 2}}
}

func i32(v int32) *int32 { return &v }

// fixture returns an Everything with every field set to a non-zero value
// (TestFixtureSetsEveryField keeps it that way when fields are added). Each
// call builds a new, independent value.
func fixture() *dct.Everything {
	stdBytes := []byte("std-bytes")
	stdInt := int64(99)
	stdDur := 3 * time.Second
	label, level, ratio := "lbl", dct.Level_HIGH, 0.25
	return &dct.Everything{
		FDouble:   1.5,
		FFloat:    2.5,
		FInt32:    -3,
		FInt64:    -4,
		FUint32:   5,
		FUint64:   6,
		FSint32:   -7,
		FSint64:   -8,
		FFixed32:  9,
		FFixed64:  10,
		FSfixed32: -11,
		FSfixed64: -12,
		FBool:     true,
		FString:   "string",
		FBytes:    []byte("bytes"),
		FEnum:     dct.Color_RED,
		ID:        "id-1",

		Leaf:      leaf("leaf"),
		LeafValue: *leaf("leaf-value"),
		Empty:     &dct.Empty{},
		Child:     &dct.Everything{FString: "child", Leaf: leaf("child-leaf"), RBytes: [][]byte{[]byte("c")}},

		RInt64:     []int64{1, 2, 3},
		RString:    []string{"a", "b"},
		RBytes:     [][]byte{[]byte("x"), []byte("y")},
		REnum:      []dct.Color{dct.Color_RED, dct.Color_GREEN},
		RLeaf:      []*dct.Leaf{leaf("r1"), leaf("r2")},
		RLeafValue: []dct.Leaf{*leaf("rv1"), *leaf("rv2")},
		Children:   []*dct.Everything{{FInt64: 1, RLeaf: []*dct.Leaf{leaf("gc")}}, {FString: "two"}},
		RDouble:    []float64{0.5, 1.5},

		MString:    map[string]string{"a": "b"},
		MBytes:     map[int32][]byte{1: []byte("one"), 2: []byte("two")},
		MEnum:      map[string]dct.Color{"g": dct.Color_GREEN},
		MLeaf:      map[string]*dct.Leaf{"l": leaf("ml")},
		MLeafValue: map[string]dct.Leaf{"lv": *leaf("mlv")},
		MTs:        map[uint64]*types.Timestamp{1: ts(100)},
		MBool:      map[bool]int64{true: 1},
		MConf:      map[string]*raftpb.ConfState{"c": {Voters: []uint64{1, 2}, Learners: []uint64{3}, AutoLeave: true}},
		MOther:     map[string]*otherpkg.Other{"o": other("mo")},
		MTsValue:   map[string]types.Timestamp{"t": *ts(200)},

		Ts:           ts(1),
		Dur:          &types.Duration{Seconds: 2, Nanos: 3},
		TsValue:      *ts(4),
		RTs:          []*types.Timestamp{ts(5), ts(6)},
		RDurValue:    []types.Duration{{Seconds: 7}, {Seconds: 8}},
		Any:          &types.Any{TypeUrl: "type.googleapis.com/x.Y", Value: []byte{1, 2, 3}},
		Wrapped:      &types.StringValue{Value: "wrapped"},
		WrappedBytes: &types.BytesValue{Value: []byte("wrapped-bytes")},

		StdTs:      stdTime(10),
		StdDur:     &stdDur,
		RStdTs:     []*time.Time{stdTime(11), stdTime(12)},
		StdTsValue: *stdTime(13),
		StdBytes:   &stdBytes,
		StdInt64:   &stdInt,

		Outer:       &dct.Outer{Inner: &dct.Outer_Inner{Numbers: []uint32{1, 2}, Raw: []byte("raw")}, Inners: []dct.Outer_Inner{{Numbers: []uint32{3}}}},
		InnerValue:  dct.Outer_Inner{Numbers: []uint32{4, 5}, Raw: []byte("iv")},
		Other:       other("other"),
		OtherValue:  *other("other-value"),
		ROther:      []*otherpkg.Other{other("ro1"), other("ro2")},
		Entry:       entry(1),
		EntryValue:  *entry(2),
		REntry:      []*raftpb.Entry{entry(3), entry(4)},
		REntryValue: []raftpb.Entry{*entry(5), *entry(6)},
		NoCopy:      &dct.NoCopy{Values: []string{"n1", "n2"}},
		Legacy: &dct.Legacy{
			Count:            i32(3),
			Label:            &label,
			Level:            &level,
			Ratio:            &ratio,
			Plain:            5,
			Data:             []byte("legacy"),
			Numbers:          []int32{1, 2},
			XXX_unrecognized: []byte{0x08, 0x01},
		},
		Embedder: &dct.Embedder{Outer: &dct.Outer{Inner: &dct.Outer_Inner{Raw: []byte("emb")}}, Extra: "extra"},

		CastBytes:   dct.MyBytes("cast"),
		CastString:  dct.MyString("cast-string"),
		RCastBytes:  []dct.MyBytes{dct.MyBytes("rc1"), dct.MyBytes("rc2")},
		Custom:      &dct.Blob{Data: []byte("custom")},
		CustomValue: dct.Blob{Data: []byte("custom-value")},
		RCustom:     []dct.Blob{{Data: []byte("rcu1")}, {Data: []byte("rcu2")}},

		Choice: &dct.Everything_CLeaf{CLeaf: leaf("choice")},
		Second: &dct.Everything_SEmpty{SEmpty: &dct.Empty{}},
	}
}

// oneofs lists one setter per member of Everything's oneofs.
var oneofs = map[string]func(*dct.Everything){
	"c_string": func(m *dct.Everything) { m.Choice = &dct.Everything_CString{CString: "s"} },
	"c_bytes":  func(m *dct.Everything) { m.Choice = &dct.Everything_CBytes{CBytes: []byte("cb")} },
	"c_int64":  func(m *dct.Everything) { m.Choice = &dct.Everything_CInt64{CInt64: 42} },
	"c_enum":   func(m *dct.Everything) { m.Choice = &dct.Everything_CEnum{CEnum: dct.Color_GREEN} },
	"c_leaf":   func(m *dct.Everything) { m.Choice = &dct.Everything_CLeaf{CLeaf: leaf("cl")} },
	"c_ts":     func(m *dct.Everything) { m.Choice = &dct.Everything_CTs{CTs: ts(77)} },
	"c_entry":  func(m *dct.Everything) { m.Choice = &dct.Everything_CEntry{CEntry: entry(8)} },
	"c_other":  func(m *dct.Everything) { m.Choice = &dct.Everything_COther{COther: other("co")} },
	"c_id":     func(m *dct.Everything) { m.Choice = &dct.Everything_CID{CID: "cid"} },
	"s_empty":  func(m *dct.Everything) { m.Second = &dct.Everything_SEmpty{SEmpty: &dct.Empty{}} },
	"s_double": func(m *dct.Everything) { m.Second = &dct.Everything_SDouble{SDouble: 2.5} },
}

func TestFixtureSetsEveryField(t *testing.T) {
	for _, m := range []interface{}{fixture(), fixture().Legacy} {
		v := reflect.ValueOf(m).Elem()
		for i := 0; i < v.NumField(); i++ {
			f := v.Type().Field(i)
			if !f.IsExported() || strings.HasPrefix(f.Name, "XXX_NoUnkeyed") || f.Name == "XXX_sizecache" {
				continue
			}
			if v.Field(i).IsZero() {
				t.Errorf("fixture leaves %s.%s zero: set it so the copy test covers it", v.Type().Name(), f.Name)
			}
		}
	}
	// Every oneof member has a setter.
	for _, w := range (&dct.Everything{}).XXX_OneofWrappers() {
		name := reflect.TypeOf(w).Elem().Field(0).Tag.Get("protobuf")
		parts := strings.Split(name, ",")
		found := false
		for _, p := range parts {
			if n, ok := strings.CutPrefix(p, "name="); ok {
				_, found = oneofs[n]
				name = n
			}
		}
		if !found {
			t.Errorf("no setter in oneofs for oneof member %s", name)
		}
	}
}

func TestCopy(t *testing.T) {
	for name, set := range oneofs {
		t.Run(name, func(t *testing.T) {
			orig, want := fixture(), fixture()
			set(orig)
			set(want)

			cp := orig.Copy()
			if cp == orig {
				t.Fatal("Copy returned its receiver")
			}
			if !reflect.DeepEqual(cp, orig) {
				t.Fatal("copy differs from the original")
			}
			if cp.Size() != orig.Size() {
				t.Fatalf("copy's Size %d, original's %d", cp.Size(), orig.Size())
			}
			checkNoSharing(t, "Everything", reflect.ValueOf(orig), reflect.ValueOf(cp))

			n := mutate(reflect.ValueOf(cp))
			if n < 100 {
				t.Fatalf("mutated only %d values: the walker missed fields", n)
			}
			if reflect.DeepEqual(cp, want) {
				t.Fatal("mutating the copy changed nothing")
			}
			if !reflect.DeepEqual(orig, want) {
				t.Fatal("mutating the copy changed the original")
			}
		})
	}
}

func TestCopyNil(t *testing.T) {
	if got := (*dct.Everything)(nil).Copy(); got != nil {
		t.Errorf("nil Everything: Copy = %v, want nil", got)
	}
	if got := (*dct.Leaf)(nil).Copy(); got != nil {
		t.Errorf("nil Leaf: Copy = %v, want nil", got)
	}
	if got := (*dct.Legacy)(nil).Copy(); got != nil {
		t.Errorf("nil Legacy: Copy = %v, want nil", got)
	}
	if got := (*otherpkg.Other)(nil).Copy(); got != nil {
		t.Errorf("nil Other: Copy = %v, want nil", got)
	}
	// Nil and empty collections keep their nil-ness.
	e := &dct.Everything{RString: []string{}, MString: map[string]string{}}
	cp := e.Copy()
	if cp.RString == nil || cp.MString == nil || cp.RInt64 != nil || cp.MLeaf != nil || cp.Leaf != nil || cp.Choice != nil {
		t.Errorf("copy of %#v is %#v", e, cp)
	}
	if !reflect.DeepEqual(e, cp) {
		t.Errorf("copy of %v is %v", e, cp)
	}
	// A zero message copies to a zero message.
	if cp := (&dct.Everything{}).Copy(); !reflect.DeepEqual(cp, &dct.Everything{}) {
		t.Errorf("copy of a zero Everything is %v", cp)
	}
	// Nil elements and map values stay nil.
	e = &dct.Everything{RLeaf: []*dct.Leaf{nil}, MLeaf: map[string]*dct.Leaf{"x": nil}, MTs: map[uint64]*types.Timestamp{1: nil}}
	if cp := e.Copy(); !reflect.DeepEqual(cp, e) {
		t.Errorf("copy of %v is %v", e, cp)
	}
}

func TestCopyFrom(t *testing.T) {
	orig, want := fixture(), fixture()

	var m dct.Everything
	m.CopyFrom(orig)
	if !reflect.DeepEqual(&m, orig) {
		t.Fatal("CopyFrom into a zero message: not equal to the source")
	}
	checkNoSharing(t, "Everything", reflect.ValueOf(orig), reflect.ValueOf(&m))
	mutate(reflect.ValueOf(&m))
	if !reflect.DeepEqual(orig, want) {
		t.Fatal("mutating the CopyFrom destination changed the source")
	}

	// CopyFrom replaces everything: fields unset in src end up zero.
	dst := fixture()
	src := &dct.Everything{FString: "only"}
	dst.CopyFrom(src)
	if !reflect.DeepEqual(dst, src) {
		t.Fatalf("CopyFrom over a full message: got %v, want %v", dst, src)
	}

	// Copying from itself changes nothing.
	self := fixture()
	self.CopyFrom(self)
	if !reflect.DeepEqual(self, fixture()) {
		t.Fatal("CopyFrom(self) changed the message")
	}

	// A nil source resets.
	dst = fixture()
	dst.CopyFrom((*dct.Everything)(nil))
	if !reflect.DeepEqual(dst, &dct.Everything{}) {
		t.Fatalf("CopyFrom(nil): got %v, want the zero value", dst)
	}

	// A source of another type panics.
	func() {
		defer func() {
			if recover() == nil {
				t.Error("CopyFrom(*Leaf) into an Everything did not panic")
			}
		}()
		dst.CopyFrom(leaf("wrong"))
	}()
}

// checkNoSharing fails the test where a and b (of the same type) reach the
// same memory through a pointer, slice or map.
func checkNoSharing(t *testing.T, path string, a, b reflect.Value) {
	t.Helper()
	switch a.Kind() {
	case reflect.Ptr:
		if a.IsNil() || b.IsNil() {
			if a.IsNil() != b.IsNil() {
				t.Errorf("%s: nil in one value only", path)
			}
			return
		}
		// Zero-size values may all live at the same address.
		if a.Pointer() == b.Pointer() && a.Type().Elem().Size() != 0 {
			t.Errorf("%s: pointer shared", path)
		}
		checkNoSharing(t, path, a.Elem(), b.Elem())
	case reflect.Interface:
		if a.IsNil() || b.IsNil() {
			return
		}
		checkNoSharing(t, path, a.Elem(), b.Elem())
	case reflect.Slice:
		if a.Len() > 0 && b.Len() > 0 && a.Pointer() == b.Pointer() {
			t.Errorf("%s: slice backing array shared", path)
		}
		for i := 0; i < a.Len() && i < b.Len(); i++ {
			checkNoSharing(t, fmt.Sprintf("%s[%d]", path, i), a.Index(i), b.Index(i))
		}
	case reflect.Map:
		if !a.IsNil() && !b.IsNil() && a.Pointer() == b.Pointer() {
			t.Errorf("%s: map shared", path)
		}
		for _, k := range a.MapKeys() {
			if bv := b.MapIndex(k); bv.IsValid() {
				checkNoSharing(t, fmt.Sprintf("%s[%v]", path, k), a.MapIndex(k), bv)
			}
		}
	case reflect.Struct:
		for i := 0; i < a.NumField(); i++ {
			if a.Type().Field(i).IsExported() {
				checkNoSharing(t, path+"."+a.Type().Field(i).Name, a.Field(i), b.Field(i))
			}
		}
	}
}

var timeType = reflect.TypeOf(time.Time{})

// mutate changes every value reachable from v in place and returns how many
// it changed. Map values are replaced by mutated copies.
func mutate(v reflect.Value) int {
	switch v.Kind() {
	case reflect.Ptr, reflect.Interface:
		if v.IsNil() {
			return 0
		}
		return mutate(v.Elem())
	case reflect.Slice:
		n := 0
		for i := 0; i < v.Len(); i++ {
			n += mutate(v.Index(i))
		}
		return n
	case reflect.Map:
		n := 0
		for _, k := range v.MapKeys() {
			c := reflect.New(v.Type().Elem()).Elem()
			c.Set(v.MapIndex(k))
			n += mutate(c)
			v.SetMapIndex(k, c)
		}
		return n
	case reflect.Struct:
		if v.Type() == timeType {
			v.Set(reflect.ValueOf(v.Interface().(time.Time).Add(time.Hour)))
			return 1
		}
		n := 0
		for i := 0; i < v.NumField(); i++ {
			if v.Type().Field(i).IsExported() {
				n += mutate(v.Field(i))
			}
		}
		return n
	case reflect.Bool:
		v.SetBool(!v.Bool())
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(v.Int() + 1)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(v.Uint() + 1)
	case reflect.Float32, reflect.Float64:
		v.SetFloat(v.Float() + 1)
	case reflect.String:
		v.SetString(v.String() + "!")
	default:
		return 0
	}
	return 1
}

func BenchmarkCopy(b *testing.B) {
	m := fixture()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		_ = m.Copy()
	}
}

func BenchmarkProtoClone(b *testing.B) {
	m := fixture()
	m.Custom, m.CustomValue, m.RCustom = nil, dct.Blob{}, nil // proto.Clone cannot copy customtypes
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		_ = proto.Clone(m)
	}
}
