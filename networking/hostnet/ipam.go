//go:build linux

package hostnet

import (
	"fmt"
	"net/netip"
)

// addrPool hands out the task addresses of a subnet: the first host address
// is the gateway (the bridge), the last (broadcast) is never used, tasks get
// the lowest free one. It is rebuilt from the records at start.
type addrPool struct {
	subnet  netip.Prefix
	gateway netip.Addr
	last    netip.Addr // the highest task address
	used    map[netip.Addr]string
}

func newAddrPool(subnet netip.Prefix) *addrPool {
	return &addrPool{
		subnet:  subnet,
		gateway: gatewayOf(subnet),
		last:    lastAddr(subnet).Prev(), // not the broadcast address
		used:    make(map[netip.Addr]string),
	}
}

// gatewayOf is the first host address of subnet.
func gatewayOf(subnet netip.Prefix) netip.Addr { return subnet.Masked().Addr().Next() }

// lastAddr is the highest address of subnet (IPv4 only).
func lastAddr(subnet netip.Prefix) netip.Addr {
	a := subnet.Masked().Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= 1<<(32-subnet.Bits()) - 1
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// allocate gives taskID the lowest free address.
func (p *addrPool) allocate(taskID string) (netip.Prefix, error) {
	for a := p.gateway.Next(); a.IsValid() && a.Compare(p.last) <= 0; a = a.Next() {
		if _, taken := p.used[a]; !taken {
			p.used[a] = taskID
			return netip.PrefixFrom(a, p.subnet.Bits()), nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("%w %s (%d tasks attached): choose a larger subnet for the node bridge (swarmd --bridge-subnet)", ErrSubnetFull, p.subnet, len(p.used))
}

// claim marks a recorded address as taskID's.
func (p *addrPool) claim(addr netip.Prefix, taskID string) error {
	a := addr.Addr()
	if addr.Bits() != p.subnet.Bits() || !p.subnet.Contains(a) || a.Compare(p.gateway) <= 0 || a.Compare(p.last) > 0 {
		return fmt.Errorf("task %s has address %s, which is not a task address of %s: the subnet changed; detach the task's old attachment first", taskID, addr, p.subnet)
	}
	if other, taken := p.used[a]; taken && other != taskID {
		return fmt.Errorf("tasks %s and %s both have address %s", other, taskID, a)
	}
	p.used[a] = taskID
	return nil
}

func (p *addrPool) release(addr netip.Prefix) { delete(p.used, addr.Addr()) }
