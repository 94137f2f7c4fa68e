//go:build linux

package hostnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// checkSubnet fails if a route or an address of the host, other than the
// bridge's own (adopted) ones, overlaps subnet. Default routes do not count.
func checkSubnet(subnet netip.Prefix, bridgeIndex int) error {
	links, err := retryDump(func() ([]netlink.Link, error) { return netlink.LinkList() })
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	names := make(map[int]string, len(links))
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return netlink.AddrList(nil, netlink.FAMILY_V4) })
	if err != nil {
		return fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if a.LinkIndex == bridgeIndex && bridgeIndex != 0 {
			continue
		}
		if p, ok := prefixOf(a.IPNet); ok && p.Overlaps(subnet) {
			return &SubnetConflictError{Subnet: subnet, Conflict: p, Device: names[a.LinkIndex], What: "address"}
		}
	}
	routes, err := retryDump(func() ([]netlink.Route, error) {
		return netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		if (r.LinkIndex == bridgeIndex && bridgeIndex != 0) || r.Dst == nil {
			continue
		}
		p, ok := prefixOf(r.Dst)
		if !ok || p.Bits() == 0 || !p.Overlaps(subnet) {
			continue
		}
		return &SubnetConflictError{Subnet: subnet, Conflict: p, Device: names[r.LinkIndex], What: "route"}
	}
	return nil
}

// bridgeOwnerPrefix starts the alias of a bridge a Manager made: the rest is
// the Manager's StateDir. Two nodes on one machine given the same bridge
// name and subnet would otherwise share the bridge and hand out the same
// addresses.
const bridgeOwnerPrefix = "flotilla state "

// ensureBridge adopts the bridge named name or creates it, and makes sure it
// has the gateway address and is up. A bridge that exists keeps its ports:
// running tasks are not disturbed. A bridge whose alias names another
// node's state directory that still exists is refused.
func ensureBridge(name string, gateway netip.Prefix, stateDir string) (netlink.Link, bool, error) {
	created := false
	link, err := netlink.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		attrs := netlink.NewLinkAttrs()
		attrs.Name = name
		// A MAC of its own: a bridge without one takes its ports' lowest,
		// which changes as tasks come and go, and the tasks' ARP entries
		// for the gateway go stale.
		attrs.HardwareAddr = macFor(gateway.Addr())
		br := &netlink.Bridge{LinkAttrs: attrs}
		if err := netlink.LinkAdd(br); err != nil {
			return nil, false, fmt.Errorf("create bridge %s: %w", name, err)
		}
		created = true
		if link, err = netlink.LinkByName(name); err != nil {
			return nil, false, fmt.Errorf("find bridge %s after creating it: %w", name, err)
		}
	case err != nil:
		return nil, false, fmt.Errorf("find bridge %s: %w", name, err)
	case link.Type() != "bridge":
		return nil, false, fmt.Errorf("link %s exists and is a %s, not a bridge: choose another bridge name (swarmd --bridge-name) or remove it (ip link del %s)", name, link.Type(), name)
	}
	fail := func(err error) (netlink.Link, bool, error) {
		if created {
			_ = netlink.LinkDel(link)
		}
		return nil, false, err
	}
	owner := bridgeOwnerPrefix + stateDir
	if len(owner) > 255 { // IFALIASZ-1
		owner = owner[:255]
	}
	if alias := link.Attrs().Alias; alias != owner {
		if other, ok := strings.CutPrefix(alias, bridgeOwnerPrefix); ok {
			if _, err := os.Stat(filepath.Join(other, "tasks")); err == nil {
				return fail(fmt.Errorf("bridge %s belongs to the node whose network state is in %s: give each node on this machine its own bridge and subnet (swarmd --bridge-name, --bridge-subnet)", name, other))
			}
		}
		// Ours, made by hand, or its node's state is gone: take it.
		if err := netlink.LinkSetAlias(link, owner); err != nil {
			return fail(fmt.Errorf("set alias of bridge %s: %w", name, err))
		}
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return netlink.AddrList(link, netlink.FAMILY_V4) })
	if err != nil {
		return fail(fmt.Errorf("list addresses of bridge %s: %w", name, err))
	}
	have := false
	for _, a := range addrs {
		p, _ := prefixOf(a.IPNet)
		if p == gateway {
			have = true
			continue
		}
		return fail(fmt.Errorf("bridge %s has address %s, but its gateway address for this subnet is %s: remove the bridge (ip link del %s) if no task uses it, or configure the subnet it was made for", name, p, gateway, name))
	}
	if !have {
		if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: ipNet(gateway)}); err != nil {
			return fail(fmt.Errorf("give bridge %s its address %s: %w", name, gateway, err))
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fail(fmt.Errorf("set bridge %s up: %w", name, err))
	}
	return link, created, nil
}

// setSysctl writes value to /proc/sys/<path> unless it already has it.
// Interface names go into path as they are (no sysctl(8) dot escaping).
func setSysctl(path, value string) error {
	p := filepath.Join("/proc/sys", path)
	if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) == value {
		return nil
	}
	if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
		return fmt.Errorf("set %s=%s: %w", p, value, err)
	}
	return nil
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// retryDump retries a netlink dump that the kernel interrupted (the table
// changed during the dump).
func retryDump[T any](f func() ([]T, error)) ([]T, error) {
	var (
		v   []T
		err error
	)
	for range 5 {
		v, err = f()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, err
}
