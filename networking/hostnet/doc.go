// Package hostnet gives each task on a node its own network namespace,
// connected to a node-local bridge with outbound NAT, and forwards the node's
// host-mode published ports to tasks (nftables).
//
// # Plumbing
//
// A Manager owns one node's task network. New creates (or adopts, after a
// swarmd restart) a Linux bridge (Config.BridgeName, default "flotilla0")
// that carries the first host address of Config.Subnet (the tasks' default
// gateway), enables IPv4 forwarding, and programs an nftables table of its
// own, named after the bridge (family ip):
//
//	table ip flotilla0 {
//	  map hostports {                   # one element per host-mode published port
//	    type inet_proto . inet_service : ipv4_addr . inet_service
//	    elements = { tcp . 8080 : 10.213.0.2 . 80 comment "<task id>", ... }
//	  }
//	  chain prerouting  { type nat hook prerouting priority dstnat   # from other hosts and netns
//	    fib daddr type local dnat ip to meta l4proto . th dport map @hostports }
//	  chain output      { type nat hook output priority dstnat       # from the node itself
//	    fib daddr type local dnat ip to meta l4proto . th dport map @hostports }
//	  chain postrouting { type nat hook postrouting priority srcnat
//	    ip saddr 10.213.0.0/16 oifname != "flotilla0" masquerade     # outbound NAT
//	    oifname "flotilla0" ip saddr 127.0.0.0/8 masquerade          # 127.0.0.1:P -> task
//	    oifname "flotilla0" ct status dnat ip saddr 10.213.0.0/16 masquerade } # hairpin
//	  chain forward     { type filter hook forward priority filter
//	    oifname "flotilla0" ct state established,related accept
//	    oifname "flotilla0" ct status dnat accept                    # published ports
//	    oifname "flotilla0" iifname "flotilla0" accept
//	    oifname "flotilla0" drop                                     # no other way in
//	    iifname "flotilla0" accept }
//	  chain prefilter   { type filter hook prerouting priority raw
//	    iifname "flotilla0" ip daddr 127.0.0.0/8 drop }              # see route_localnet
//	}
//
// The fixed chains are rewritten in one atomic nftables transaction by New;
// the hostports map is only ever changed element by element (Attach adds a
// task's ports, Detach deletes them), so running tasks keep their ports
// across swarmd restarts. Reaching a task through 127.0.0.1:P needs
// net.ipv4.conf.<bridge>.route_localnet=1 (the kernel otherwise refuses to
// route a loopback source out of the bridge after the output DNAT) and the
// masquerade of 127.0.0.0/8 sources towards the bridge, as kube-proxy does;
// the prefilter chain keeps tasks from using route_localnet to reach the
// node's loopback services.
//
// Attach gives a task a network namespace bind-mounted at
// <StateDir>/netns/<task id> (it outlives swarmd; the container runtime joins
// it by path), a veth pair whose host end (named from a hash of the bridge
// name and task ID, alias = task ID) is a port of the bridge and whose other
// end is eth0 in the namespace, an address of the subnet (its MAC derived
// from it, so a reused address keeps neighbours' ARP caches right), lo up, a
// default route via the bridge, and its host-mode published ports: the map
// elements, plus a socket bound to each published port in the node's
// namespace, so that no host process (nor the kernel's choice of an
// ephemeral port for an outgoing connection) takes the port while the task
// has it. Each attachment is recorded in <StateDir>/tasks/<task id>.json
// (written atomically) before anything is created, so a restarted swarmd
// knows the addresses and ports in use and can clean up after a crash in the
// middle of an Attach.
//
// A bridge the Manager made carries a MAC of its own (derived from the
// gateway address, so the tasks' ARP entries survive ports coming and going)
// and, as its alias, the Manager's StateDir: a second node on the same
// machine given the same bridge name is refused instead of sharing it, and
// a flock on StateDir/lock refuses two Managers on one state directory.
// Bridge ports are in hairpin mode (with br_netfilter loaded, a task reaching
// its own published port through the node's address is bridged back out of
// the port it came from) and the task's eth0 has IPv6 disabled (IPv4 only).
// Attach returns once the kernel has both veth ends up and the bridge port
// forwarding, so a task's first packets are not dropped.
//
// Detach removes the map elements, the task's conntrack entries, the veth,
// the namespace mount and the record. Close releases only the Manager's own
// handles (the port sockets included); Teardown removes everything.
//
// # What comes later
//
// Overlay networks (DESIGN.md §5) slot in beside this: each network gets a
// bridge of its own per node plus a VXLAN device, and a task attached to it
// gets one more veth into the same namespace (eth1, eth2, ...), created the
// same way as eth0 here (see newVeth/configureTaskLink); the namespace path
// in the Attachment does not change. The routing mesh adds its own chains
// (or an IPVS data plane) to the node: its DNAT of ingress ports runs in the
// same nat hooks with maps keyed like hostports and numgen-chosen backends,
// and needs only the bridge's forward and masquerade rules that are already
// here. Host-mode ports never go through the mesh: they are this package's
// alone, and ingress ports (PublishModeIngress) are ignored here.
package hostnet
