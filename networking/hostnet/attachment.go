package hostnet

import (
	"net/netip"

	"github.com/flotilla/flotilla/api"
)

// Attachment is a task's place on the node-local network: what the executor
// needs to run the task's container in it.
type Attachment struct {
	// NetNSPath is the task's network namespace (a bind mount that outlives
	// swarmd), for the container's OCI spec.
	NetNSPath string
	// Address is the task's address on the bridge, with the bridge's prefix
	// length; Gateway is the bridge's own address, the task's default route.
	Address netip.Prefix
	Gateway netip.Addr
	// Ports are the task's host-mode published ports as programmed, with
	// PublishedPort filled in where the spec left it 0.
	Ports []*api.PortConfig
}
