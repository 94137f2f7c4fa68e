//go:build linux

package hostnet

import (
	"errors"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/flotilla/flotilla/api"
)

func TestAddressPoolGivesTheLowestFreeAddress(t *testing.T) {
	p := newAddrPool(netip.MustParsePrefix("10.0.0.0/29"))
	if p.gateway != netip.MustParseAddr("10.0.0.1") {
		t.Fatalf("gateway %s", p.gateway)
	}
	var got []string
	for _, id := range []string{"a", "b", "c", "d", "e"} {
		a, err := p.allocate(id)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, a.String())
	}
	want := []string{"10.0.0.2/29", "10.0.0.3/29", "10.0.0.4/29", "10.0.0.5/29", "10.0.0.6/29"}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("allocated %v, want %v (no gateway, no broadcast)", got, want)
		}
	}
	if _, err := p.allocate("f"); !errors.Is(err, ErrSubnetFull) {
		t.Fatalf("full pool: %v", err)
	}
	p.release(netip.MustParsePrefix("10.0.0.4/29"))
	if a, _ := p.allocate("f"); a.String() != "10.0.0.4/29" {
		t.Fatalf("after release got %s", a)
	}
	for _, c := range []struct {
		addr string
		ok   bool
	}{
		{"10.0.0.3/29", false}, // b's
		{"10.0.0.1/29", false}, // gateway
		{"10.0.0.7/29", false}, // broadcast
		{"10.0.1.2/29", false}, // other subnet
		{"10.0.0.2/24", false}, // other prefix length
	} {
		if err := p.claim(netip.MustParsePrefix(c.addr), "x"); (err == nil) != c.ok {
			t.Errorf("claim %s: %v", c.addr, err)
		}
	}
}

func TestHostPortsKeepsHostModeAndValidates(t *testing.T) {
	got, err := hostPorts([]*api.PortConfig{
		{Protocol: api.ProtocolTCP, TargetPort: 80, PublishedPort: 8080, PublishMode: api.PublishModeHost, Name: "web"},
		{Protocol: api.ProtocolTCP, TargetPort: 81, PublishedPort: 30001, PublishMode: api.PublishModeIngress},
		{Protocol: api.ProtocolUDP, TargetPort: 53, PublishMode: api.PublishModeHost},
		{Protocol: api.ProtocolUDP, TargetPort: 54, PublishedPort: 8080, PublishMode: api.PublishModeHost}, // same number, other protocol
		nil,
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []portRecord{{"web", "tcp", 80, 8080}, {"", "udp", 53, 0}, {"", "udp", 54, 8080}}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
	for name, bad := range map[string][]*api.PortConfig{
		"twice":     {{TargetPort: 80, PublishedPort: 8080, PublishMode: api.PublishModeHost}, {TargetPort: 81, PublishedPort: 8080, PublishMode: api.PublishModeHost}},
		"no target": {{PublishedPort: 8080, PublishMode: api.PublishModeHost}},
		"too big":   {{TargetPort: 80, PublishedPort: 70000, PublishMode: api.PublishModeHost}},
		"protocol":  {{Protocol: 7, TargetPort: 80, PublishMode: api.PublishModeHost}},
	} {
		if _, err := hostPorts(bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestPortMapElementsRoundTrip(t *testing.T) {
	e := portElement{key: portKey{"udp", 40123}, addr: netip.MustParseAddr("10.213.1.2"), target: 53, taskID: "t"}
	se := e.setElement()
	// As nft encodes them: each field padded to 4 bytes, big-endian ports.
	if got, want := se.Key, []byte{17, 0, 0, 0, 0x9c, 0xbb, 0, 0}; string(got) != string(want) {
		t.Fatalf("key % x, want % x", got, want)
	}
	back, ok := decodePortElement(se)
	if !ok || back != e {
		t.Fatalf("decoded %+v, want %+v", back, e)
	}
}

func TestConfigDefaultsAndValidation(t *testing.T) {
	c, err := Config{StateDir: "rel"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if c.BridgeName != DefaultBridgeName || c.Subnet != DefaultSubnet || !filepath.IsAbs(c.StateDir) || c.PortRange.validate() != nil {
		t.Fatalf("defaults: %+v", c)
	}
	for name, bad := range map[string]Config{
		"no state dir": {},
		"long bridge":  {StateDir: "x", BridgeName: "abcdefghijklmnop"},
		"not network":  {StateDir: "x", Subnet: netip.MustParsePrefix("10.0.0.1/16")},
		"too small":    {StateDir: "x", Subnet: netip.MustParsePrefix("10.0.0.0/31")},
		"ipv6":         {StateDir: "x", Subnet: netip.MustParsePrefix("fd00::/64")},
		"port range":   {StateDir: "x", PortRange: PortRange{200, 100}},
	} {
		if _, err := bad.withDefaults(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if r, err := ParsePortRange("30000-32767"); err != nil || r != (PortRange{30000, 32767}) {
		t.Errorf("ParsePortRange: %v %v", r, err)
	}
	for _, s := range []string{"", "1", "0-10", "10-5", "1-70000"} {
		if _, err := ParsePortRange(s); err == nil {
			t.Errorf("ParsePortRange(%q) accepted", s)
		}
	}
}

func TestVethNamesFitAndDiffer(t *testing.T) {
	a, b := vethName("flotilla0", "task"), vethName("flotilla1", "task")
	if len(a) > 15 || a == b || a != vethName("flotilla0", "task") {
		t.Fatalf("veth names %q %q", a, b)
	}
	for _, id := range []string{"", ".hidden", "a/b", "a b"} {
		if validTaskID(id) == nil {
			t.Errorf("task ID %q accepted", id)
		}
	}
}
