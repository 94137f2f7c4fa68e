//go:build linux

package hostnet

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Defaults of Config.
const (
	DefaultBridgeName = "flotilla0"
	// DefaultPortRangeStart and DefaultPortRangeEnd bound the host ports
	// given to PublishedPort 0 when the kernel's ephemeral range cannot be
	// read (Docker's fallback too).
	DefaultPortRangeStart = 49153
	DefaultPortRangeEnd   = 65535
)

// DefaultSubnet is the tasks' subnet when Config.Subnet is not set: a
// private /16 that home and cloud networks rarely use.
var DefaultSubnet = netip.MustParsePrefix("10.213.0.0/16")

// Config is a node's task network. Several nodes on one machine (tests) each
// need their own BridgeName, Subnet, StateDir and PortRange: the nftables
// table is named after the bridge, and nothing else is shared.
type Config struct {
	// BridgeName is the node-local bridge; also the name of the nftables
	// table. Default DefaultBridgeName.
	BridgeName string
	// Subnet holds the tasks' addresses; its first host address is the
	// bridge's (the tasks' gateway). IPv4, a network address, /30 or
	// larger. Default DefaultSubnet. New fails if a route or an address of
	// the host overlaps it.
	Subnet netip.Prefix
	// StateDir keeps the namespaces (StateDir/netns) and the attachment
	// records (StateDir/tasks). Required.
	StateDir string
	// PortRange is where PublishedPort 0 finds a host port. Default: the
	// kernel's ephemeral range (net.ipv4.ip_local_port_range), as Docker
	// does; ports held by tasks are kept from the kernel by a bound socket.
	PortRange PortRange
	// Logger; default slog.Default(). The Manager adds module=hostnet.
	Logger *slog.Logger
}

// PortRange is an inclusive range of host ports.
type PortRange struct {
	Start, End uint16
}

func (r PortRange) String() string { return fmt.Sprintf("%d-%d", r.Start, r.End) }

// ParsePortRange parses "START-END" (inclusive, 1-65535).
func ParsePortRange(s string) (PortRange, error) {
	lo, hi, ok := strings.Cut(strings.TrimSpace(s), "-")
	if !ok {
		return PortRange{}, fmt.Errorf("port range %q: want START-END, e.g. 30000-32767", s)
	}
	a, err1 := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
	b, err2 := strconv.ParseUint(strings.TrimSpace(hi), 10, 16)
	r := PortRange{uint16(a), uint16(b)}
	if err := errors.Join(err1, err2); err != nil || r.validate() != nil {
		return PortRange{}, fmt.Errorf("port range %q: want START-END with 1 <= START <= END <= 65535", s)
	}
	return r, nil
}

func (r PortRange) validate() error {
	if r.Start == 0 || r.End < r.Start {
		return fmt.Errorf("port range %s: want 1 <= start <= end <= 65535", r)
	}
	return nil
}

// maxBridgeName is IFNAMSIZ-1.
const maxBridgeName = 15

// withDefaults validates c and fills in the defaults.
func (c Config) withDefaults() (Config, error) {
	if c.BridgeName == "" {
		c.BridgeName = DefaultBridgeName
	}
	if len(c.BridgeName) > maxBridgeName || strings.ContainsAny(c.BridgeName, "/ \t\n:") || c.BridgeName == "." || c.BridgeName == ".." {
		return c, fmt.Errorf("bridge name %q: want at most %d characters, no '/', ':' or spaces", c.BridgeName, maxBridgeName)
	}
	if !c.Subnet.IsValid() {
		c.Subnet = DefaultSubnet
	}
	if !c.Subnet.Addr().Is4() {
		return c, fmt.Errorf("task subnet %s: only IPv4 is supported", c.Subnet)
	}
	if c.Subnet.Masked() != c.Subnet {
		return c, fmt.Errorf("task subnet %s is not a network address: did you mean %s?", c.Subnet, c.Subnet.Masked())
	}
	if c.Subnet.Bits() > 30 {
		return c, fmt.Errorf("task subnet %s is too small: want /30 or larger (a gateway and at least one task)", c.Subnet)
	}
	if c.StateDir == "" {
		return c, errors.New("hostnet: no state directory given")
	}
	abs, err := filepath.Abs(c.StateDir)
	if err != nil {
		return c, fmt.Errorf("state directory %s: %w", c.StateDir, err)
	}
	c.StateDir = abs
	if c.PortRange == (PortRange{}) {
		c.PortRange = kernelEphemeralRange()
	}
	if err := c.PortRange.validate(); err != nil {
		return c, err
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.Logger = c.Logger.With("module", "hostnet")
	return c, nil
}

// kernelEphemeralRange reads net.ipv4.ip_local_port_range.
func kernelEphemeralRange() PortRange {
	fallback := PortRange{DefaultPortRangeStart, DefaultPortRangeEnd}
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return fallback
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return fallback
	}
	r, err := ParsePortRange(f[0] + "-" + f[1])
	if err != nil {
		return fallback
	}
	return r
}
