//go:build linux

package hostnet

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// taskIfName is the task's end of its veth, inside its namespace.
const taskIfName = "eth0"

// vethName is the host end of a task's veth: "veth" and 11 hex digits of a
// hash of the bridge name and the task ID (15 characters, IFNAMSIZ-1). The
// bridge name is in the hash so that two nodes on one machine never pick the
// same name; the link's alias is the task ID, for operators.
func vethName(bridge, taskID string) string {
	h := sha256.Sum256([]byte(bridge + "/" + taskID))
	return "veth" + hex.EncodeToString(h[:])[:11]
}

// macFor derives a task interface's MAC address from its IPv4 address
// (locally administered, unicast), so that neighbours' ARP entries stay right
// when an address is given to another task.
func macFor(a netip.Addr) net.HardwareAddr {
	b := a.As4()
	return net.HardwareAddr{0x02, 0xf1, b[0], b[1], b[2], b[3]}
}

// newVeth creates the task's veth pair: the host end (name, alias taskID) a
// port of bridge and up, the other end created directly in the namespace at
// nsPath as ifName, with the MAC for addr. Overlay networks will call it once
// per network, with eth1, eth2...
func newVeth(bridge netlink.Link, name, taskID, nsPath, ifName string, addr netip.Addr) error {
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", nsPath, err)
	}
	defer ns.Close()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	attrs.MasterIndex = bridge.Attrs().Index
	attrs.MTU = bridge.Attrs().MTU
	veth := &netlink.Veth{
		LinkAttrs:        attrs,
		PeerName:         ifName,
		PeerNamespace:    netlink.NsFd(int(ns)),
		PeerHardwareAddr: macFor(addr),
		PeerMTU:          uint32(bridge.Attrs().MTU),
	}
	err = netlink.LinkAdd(veth)
	if errors.Is(err, unix.EEXIST) {
		// A veth of a failed earlier attempt (its name is the task's).
		if old, lerr := netlink.LinkByName(name); lerr == nil {
			_ = netlink.LinkDel(old)
		}
		err = netlink.LinkAdd(veth)
	}
	if err != nil {
		return fmt.Errorf("create veth %s: %w", name, err)
	}
	host, err := netlink.LinkByName(name)
	if err == nil {
		err = netlink.LinkSetAlias(host, taskID)
	}
	if err == nil {
		// A task reaching its own published port through the node's
		// address: with br_netfilter loaded, the DNATed frame is bridged
		// back out of the port it came in on.
		err = netlink.LinkSetHairpin(host, true)
	}
	if err == nil {
		err = netlink.LinkSetUp(host)
	}
	if err != nil {
		_ = deleteLink(name)
		return fmt.Errorf("set veth %s up: %w", name, err)
	}
	return nil
}

// configureTaskLink gives the task's interface its address and brings it
// and lo up; with gateway valid, it also adds the default route.
func configureTaskLink(nsPath, ifName string, addr netip.Prefix, gateway netip.Addr) error {
	h, err := handleAt(nsPath)
	if err != nil {
		return err
	}
	defer h.Close()
	// IPv4 only: no IPv6 link-local address either (hairpin mode would
	// also fail its duplicate address detection).
	err = inNetNS(nsPath, func() error {
		p := filepath.Join("/proc/sys/net/ipv6/conf", ifName, "disable_ipv6")
		if _, err := os.Stat(p); err != nil {
			return nil // the kernel has no IPv6
		}
		return os.WriteFile(p, []byte("1"), 0o644)
	})
	if err != nil {
		return fmt.Errorf("disable IPv6 on %s in %s: %w", ifName, nsPath, err)
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo in %s: %w", nsPath, err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up in %s: %w", nsPath, err)
	}
	link, err := h.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", ifName, nsPath, err)
	}
	if err := h.AddrReplace(link, &netlink.Addr{IPNet: ipNet(addr)}); err != nil {
		return fmt.Errorf("give %s address %s: %w", ifName, addr, err)
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", ifName, err)
	}
	if gateway.IsValid() {
		route := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: gateway.AsSlice(), Dst: nil}
		if err := h.RouteReplace(route); err != nil {
			return fmt.Errorf("add default route via %s: %w", gateway, err)
		}
	}
	return nil
}

// handleAt opens a netlink handle whose socket lives in the namespace at
// path (made on a thread in it, see inNetNS).
func handleAt(path string) (*netlink.Handle, error) {
	var h *netlink.Handle
	err := inNetNS(path, func() (err error) {
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netlink socket in %s: %w", path, err)
	}
	return h, nil
}

// waitLinkUp waits until the kernel has finished bringing a new veth up:
// both ends operationally up and the host end a forwarding port of the
// bridge. Until then (a deferred kernel work item, usually well under a
// millisecond, up to a second when links change often) frames through it
// are dropped, and a task's first packets would be lost.
func waitLinkUp(nsPath, ifName, hostName string, timeout time.Duration) error {
	h, err := handleAt(nsPath)
	if err != nil {
		return err
	}
	defer h.Close()
	deadline := time.Now().Add(timeout)
	for {
		host, herr := netlink.LinkByName(hostName)
		task, terr := h.LinkByName(ifName)
		if herr == nil && terr == nil && host.Attrs().OperState == netlink.OperUp && task.Attrs().OperState == netlink.OperUp && bridgePortForwarding(hostName) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("veth %s (%s in %s) is not up after %v: %w", hostName, ifName, nsPath, timeout, errors.Join(herr, terr))
		}
		time.Sleep(time.Millisecond)
	}
}

// bridgePortForwarding reads the bridge port state of a link from sysfs
// (3: forwarding); without sysfs it says yes.
func bridgePortForwarding(name string) bool {
	b, err := os.ReadFile(filepath.Join("/sys/class/net", name, "brport/state"))
	return err != nil || strings.TrimSpace(string(b)) == "3"
}

// hostLinkOK reports whether the host end of a task's veth exists and is a
// port of the bridge.
func hostLinkOK(name string, bridgeIndex int) bool {
	l, err := netlink.LinkByName(name)
	return err == nil && l.Type() == "veth" && l.Attrs().MasterIndex == bridgeIndex
}

// deleteLink deletes a link by name (its veth peer goes with it); a missing
// one is not an error.
func deleteLink(name string) error {
	l, err := netlink.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("find link %s: %w", name, err)
	}
	if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete link %s: %w", name, err)
	}
	return nil
}
