//go:build linux

package hostnet

import (
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// flowFilter matches conntrack flows with a function.
type flowFilter func(*netlink.ConntrackFlow) bool

func (f flowFilter) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool { return f(flow) }

// forgetTaskFlows deletes the conntrack entries of a task's address (flows
// to it through a published port, and its own outbound ones), so that a
// client that keeps sending (UDP) is not sent to a task that is gone, or to
// the next task given the address. Best effort: the entries would time out.
func forgetTaskFlows(addr netip.Addr) error {
	ip := net.IP(addr.AsSlice())
	_, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, flowFilter(func(f *netlink.ConntrackFlow) bool {
		return f.Forward.SrcIP.Equal(ip) || f.Reverse.SrcIP.Equal(ip)
	}))
	return err
}

// forgetPortFlows deletes the entries of UDP flows to a local address on
// port that were not DNATed (sent before the port was published): without
// this, a client that keeps sending keeps its entry alive and never reaches
// the task. TCP needs nothing: a new connection makes a new entry.
func forgetPortFlows(k portKey) error {
	if k.Protocol != "udp" {
		return nil
	}
	_, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, flowFilter(func(f *netlink.ConntrackFlow) bool {
		return f.Forward.Protocol == unix.IPPROTO_UDP && f.Forward.DstPort == k.Port && f.Reverse.SrcIP.Equal(f.Forward.DstIP) && isLocal(f.Forward.DstIP)
	}))
	return err
}

// isLocal reports whether the node has ip (route type local).
func isLocal(ip net.IP) bool {
	routes, err := netlink.RouteGet(ip)
	return err == nil && len(routes) > 0 && routes[0].Type == unix.RTN_LOCAL
}
