//go:build linux

package hostnet

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// portTable knows which task publishes which host port, and holds a socket
// bound to each, so that no host process can bind the port (and the kernel
// does not pick it for an outgoing connection) while a task publishes it.
// The sockets never listen: the DNAT in the nat hooks sends the traffic to
// the task before it could reach them.
type portTable struct {
	rng   PortRange
	owner map[portKey]string
	socks map[portKey]int
	next  map[string]uint16 // per protocol: where the search for a free port starts
}

func newPortTable(rng PortRange) *portTable {
	return &portTable{rng: rng, owner: make(map[portKey]string), socks: make(map[portKey]int), next: make(map[string]uint16)}
}

// take gives taskID the port k (k.Port != 0), or says who has it.
func (t *portTable) take(k portKey, taskID string) error {
	if other, ok := t.owner[k]; ok {
		if other == taskID {
			return nil
		}
		return &PortConflictError{Port: k.Port, Protocol: k.Protocol, TaskID: other}
	}
	fd, err := bindPort(k)
	if err != nil {
		return err
	}
	t.owner[k] = taskID
	if fd >= 0 {
		t.socks[k] = fd
	}
	return nil
}

// takeAny gives taskID a free port of the range for protocol, going round
// the range so that a port just given back is not the next one handed out.
func (t *portTable) takeAny(protocol, taskID string) (uint16, error) {
	size := int(t.rng.End) - int(t.rng.Start) + 1
	p := t.next[protocol]
	if p < t.rng.Start || p > t.rng.End {
		p = t.rng.Start
	}
	for range size {
		k := portKey{protocol, p}
		if p == t.rng.End {
			p = t.rng.Start
		} else {
			p++
		}
		if _, ok := t.owner[k]; ok {
			continue
		}
		err := t.take(k, taskID)
		if err == nil {
			t.next[protocol] = p
			return k.Port, nil
		}
		if !errors.Is(err, ErrPortInUse) {
			return 0, err
		}
	}
	return 0, fmt.Errorf("no free %s port in the range %s for published=0: publish a fixed port or widen the range", protocol, t.rng)
}

// adopt records an attached task's port at start. The socket is bound if it
// can be; if a host process took the port while swarmd was down, the task
// keeps it anyway (its DNAT is still there) and the error says so.
func (t *portTable) adopt(k portKey, taskID string) error {
	if other, ok := t.owner[k]; ok && other != taskID {
		return &PortConflictError{Port: k.Port, Protocol: k.Protocol, TaskID: other}
	}
	t.owner[k] = taskID
	if _, ok := t.socks[k]; ok {
		return nil
	}
	fd, err := bindPort(k)
	if err != nil {
		return err
	}
	if fd >= 0 {
		t.socks[k] = fd
	}
	return nil
}

// release gives the port back.
func (t *portTable) release(k portKey) {
	delete(t.owner, k)
	if fd, ok := t.socks[k]; ok {
		_ = unix.Close(fd)
		delete(t.socks, k)
	}
}

// closeSockets closes every socket but keeps the owners (Close: tasks keep
// their ports, a new Manager binds them again).
func (t *portTable) closeSockets() {
	for k, fd := range t.socks {
		_ = unix.Close(fd)
		delete(t.socks, k)
	}
}

// bindPort binds a socket of k's protocol to 0.0.0.0:port, without
// SO_REUSEADDR, and returns it; -1 when the kernel has no such protocol
// (SCTP without its module): the port is then only recorded.
func bindPort(k portKey) (int, error) {
	typ, proto := unix.SOCK_STREAM, unix.IPPROTO_TCP
	switch k.Protocol {
	case "udp":
		typ, proto = unix.SOCK_DGRAM, unix.IPPROTO_UDP
	case "sctp":
		typ, proto = unix.SOCK_STREAM, unix.IPPROTO_SCTP
	}
	fd, err := unix.Socket(unix.AF_INET, typ|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		if k.Protocol == "sctp" && (errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.ESOCKTNOSUPPORT)) {
			return -1, nil
		}
		return -1, fmt.Errorf("reserve host port %s: socket: %w", k, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: int(k.Port)}); err != nil {
		_ = unix.Close(fd)
		if errors.Is(err, unix.EADDRINUSE) {
			return -1, &PortConflictError{Port: k.Port, Protocol: k.Protocol, Err: err}
		}
		return -1, fmt.Errorf("reserve host port %s: bind: %w", k, err)
	}
	return fd, nil
}
