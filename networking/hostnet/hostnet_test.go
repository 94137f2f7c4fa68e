//go:build linux

package hostnet

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/flotilla/flotilla/api"
)

// The tests need root (CI is root). Each has its own index n: bridge
// flth<n>, subnet 10.241.<n>.0/24, nft table ip flth<n>, "outside" link
// flto<n> with 10.242.<n>.0/30, host ports 21000+100n to 21000+100n+99
// (below the kernel's ephemeral range, where outgoing connections could
// hold a port). They do not run in parallel: TestNoThreadLeftInATaskNamespace
// checks every thread.

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, links, nftables); CI runs it as root")
	}
}

type env struct {
	t   *testing.T
	n   int
	cfg Config
}

func newEnv(t *testing.T, n int) *env {
	requireRoot(t)
	e := &env{t: t, n: n, cfg: Config{
		BridgeName: fmt.Sprintf("flth%d", n),
		Subnet:     netip.MustParsePrefix(fmt.Sprintf("10.241.%d.0/24", n)),
		StateDir:   filepath.Join(t.TempDir(), "net"),
		PortRange:  PortRange{uint16(21000 + n*100), uint16(21000 + n*100 + 99)},
	}}
	e.cleanup() // leftovers of a killed run
	t.Cleanup(e.cleanup)
	return e
}

// cleanup removes whatever the test's managers may have left, also when
// the test failed half-way.
func (e *env) cleanup() {
	_ = exec.Command("nft", "delete", "table", "ip", e.cfg.BridgeName).Run()
	for _, l := range []string{e.cfg.BridgeName, fmt.Sprintf("flto%d", e.n)} {
		_ = deleteLink(l)
	}
	if links, err := netlink.LinkList(); err == nil {
		for _, l := range links {
			if l.Attrs().MasterIndex == 0 && l.Type() == "veth" && strings.HasPrefix(l.Attrs().Name, "veth") && l.Attrs().Alias != "" && strings.HasPrefix(l.Attrs().Alias, fmt.Sprintf("t%d-", e.n)) {
				_ = netlink.LinkDel(l)
			}
		}
	}
	for _, dir := range []string{filepath.Join(e.cfg.StateDir, "netns"), filepath.Join(filepath.Dir(e.cfg.StateDir), "outside")} {
		entries, _ := os.ReadDir(dir)
		for _, d := range entries {
			_ = removeNetNS(filepath.Join(dir, d.Name()))
		}
	}
}

// manager starts a Manager on the env's config; Teardown at cleanup.
func (e *env) manager() *Manager {
	e.t.Helper()
	m, err := New(context.Background(), e.cfg)
	if err != nil {
		e.t.Fatalf("New: %v", err)
	}
	e.t.Cleanup(func() {
		if err := m.Teardown(context.Background()); err != nil {
			e.t.Errorf("Teardown: %v", err)
		}
	})
	return m
}

func (e *env) task(name string) string { return fmt.Sprintf("t%d-%s", e.n, name) }

func (e *env) port(i int) uint32 { return uint32(e.cfg.PortRange.Start) + uint32(i) }

func attach(t *testing.T, m *Manager, id string, ports ...*api.PortConfig) *Attachment {
	t.Helper()
	a, err := m.Attach(context.Background(), id, ports)
	if err != nil {
		t.Fatalf("Attach %s: %v", id, err)
	}
	return a
}

func hostPort(proto api.PortConfig_Protocol, published, target uint32) *api.PortConfig {
	return &api.PortConfig{Protocol: proto, PublishedPort: published, TargetPort: target, PublishMode: api.PublishModeHost}
}

// serveTCP listens on addr in the namespace at nsPath ("" = the node's) and
// answers each connection with "<name> <client address>".
func serveTCP(t *testing.T, nsPath, addr, name string) net.Listener {
	t.Helper()
	var l net.Listener
	listen := func() (err error) { l, err = net.Listen("tcp4", addr); return err }
	var err error
	if nsPath == "" {
		err = listen()
	} else {
		err = inNetNS(nsPath, listen)
	}
	if err != nil {
		t.Fatalf("listen on %s in %q: %v", addr, nsPath, err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s %s\n", name, c.RemoteAddr())
			c.Close()
		}
	}()
	return l
}

// serveUDP answers each datagram with "<name> <client address>".
func serveUDP(t *testing.T, nsPath, addr, name string) {
	t.Helper()
	var pc net.PacketConn
	err := inNetNS(nsPath, func() (err error) { pc, err = net.ListenPacket("udp4", addr); return err })
	if err != nil {
		t.Fatalf("listen on udp %s in %q: %v", addr, nsPath, err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo([]byte(fmt.Sprintf("%s %s", name, from)), from)
		}
	}()
}

// ask connects from the namespace at nsPath ("" = the node's) to addr and
// returns the server's answer: its name and the client address it saw.
func ask(nsPath, network, addr string) (name, client string, err error) {
	var c net.Conn
	dial := func() (err error) { c, err = net.DialTimeout(network, addr, 2*time.Second); return err }
	if nsPath == "" {
		err = dial()
	} else {
		err = inNetNS(nsPath, dial)
	}
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	deadline := time.Now().Add(2 * time.Second)
	_ = c.SetDeadline(deadline)
	var line string
	if network == "udp4" {
		// Resend until answered: a datagram can be lost to neighbour
		// resolution.
		buf := make([]byte, 1500)
		for {
			if _, err = c.Write([]byte("?")); err != nil {
				return "", "", err
			}
			rd := time.Now().Add(200 * time.Millisecond)
			if rd.After(deadline) {
				rd = deadline
			}
			_ = c.SetReadDeadline(rd)
			n, rerr := c.Read(buf)
			if rerr == nil {
				line = string(buf[:n])
				break
			}
			var ne net.Error
			if !errors.As(rerr, &ne) || !ne.Timeout() || time.Now().After(deadline) {
				return "", "", fmt.Errorf("no answer from udp %s: %w", addr, rerr)
			}
		}
	} else {
		line, err = bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return "", "", fmt.Errorf("read from %s: %w", addr, err)
		}
	}
	name, client, _ = strings.Cut(strings.TrimSpace(line), " ")
	return name, client, nil
}

func mustAsk(t *testing.T, nsPath, network, addr, wantName string) string {
	t.Helper()
	name, client, err := ask(nsPath, network, addr)
	if err != nil {
		t.Fatalf("%s %s from %q: %v", network, addr, nsPath, err)
	}
	if name != wantName {
		t.Fatalf("%s %s from %q reached %q, want %q", network, addr, nsPath, name, wantName)
	}
	return client
}

// outside makes a namespace that stands for another host: a veth flto<n>
// from the node (10.242.<n>.1/30) to its eth0 (10.242.<n>.2/30). It returns
// the namespace and the node's address on that link.
func (e *env) outside() (nsPath string, nodeAddr netip.Addr) {
	t := e.t
	t.Helper()
	dir := filepath.Join(filepath.Dir(e.cfg.StateDir), "outside")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	nsPath = filepath.Join(dir, "ns")
	if err := createNetNS(nsPath); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = removeNetNS(nsPath) })
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	name := fmt.Sprintf("flto%d", e.n)
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(ns))}); err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	t.Cleanup(func() { _ = deleteLink(name) })
	nodeAddr = netip.MustParseAddr(fmt.Sprintf("10.242.%d.1", e.n))
	link, err := netlink.LinkByName(name)
	if err == nil {
		err = netlink.AddrAdd(link, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(nodeAddr, 30))})
	}
	if err == nil {
		err = netlink.LinkSetUp(link)
	}
	if err == nil {
		err = configureTaskLink(nsPath, "eth0", netip.MustParsePrefix(fmt.Sprintf("10.242.%d.2/30", e.n)), netip.Addr{})
	}
	if err == nil {
		err = waitLinkUp(nsPath, "eth0", name, 3*time.Second)
	}
	if err != nil {
		t.Fatalf("configure outside link: %v", err)
	}
	return nsPath, nodeAddr
}

func TestTasksGetANamespaceOnTheBridge(t *testing.T) {
	e := newEnv(t, 1)
	m := e.manager()
	a := attach(t, m, e.task("a"))
	b := attach(t, m, e.task("b"))

	if a.Address == b.Address || !e.cfg.Subnet.Contains(a.Address.Addr()) || !e.cfg.Subnet.Contains(b.Address.Addr()) {
		t.Fatalf("addresses %s and %s: want two different ones of %s", a.Address, b.Address, e.cfg.Subnet)
	}
	if want := netip.MustParseAddr("10.241.1.1"); a.Gateway != want {
		t.Fatalf("gateway %s, want %s", a.Gateway, want)
	}
	for _, at := range []*Attachment{a, b} {
		if !isNetNS(at.NetNSPath) {
			t.Fatalf("%s is not a network namespace", at.NetNSPath)
		}
		h, err := handleAt(at.NetNSPath)
		if err != nil {
			t.Fatal(err)
		}
		link, err := h.LinkByName("eth0")
		if err != nil {
			t.Fatalf("eth0 in %s: %v", at.NetNSPath, err)
		}
		addrs, _ := h.AddrList(link, netlink.FAMILY_V4)
		if len(addrs) != 1 || addrs[0].IPNet.String() != at.Address.String() {
			t.Errorf("eth0 in %s has %v, want %s", at.NetNSPath, addrs, at.Address)
		}
		routes, _ := h.RouteList(nil, netlink.FAMILY_V4)
		var gw net.IP
		for _, r := range routes {
			if r.Dst == nil || r.Dst.String() == "0.0.0.0/0" {
				gw = r.Gw
			}
		}
		if !gw.Equal(at.Gateway.AsSlice()) {
			t.Errorf("default route in %s via %v, want %s (routes %v)", at.NetNSPath, gw, at.Gateway, routes)
		}
		h.Close()
	}

	serveTCP(t, b.NetNSPath, b.Address.Addr().String()+":7000", "b")
	if client := mustAsk(t, a.NetNSPath, "tcp4", b.Address.Addr().String()+":7000", "b"); !strings.HasPrefix(client, a.Address.Addr().String()+":") {
		t.Errorf("b saw the connection from %s, want %s", client, a.Address.Addr())
	}
	gw := serveTCP(t, "", a.Gateway.String()+":0", "node")
	mustAsk(t, a.NetNSPath, "tcp4", gw.Addr().String(), "node")

	// Attach is idempotent.
	again := attach(t, m, e.task("a"))
	if again.Address != a.Address || again.NetNSPath != a.NetNSPath {
		t.Fatalf("second Attach gave %+v, want %+v", again, a)
	}
	ids, err := m.Attachments()
	if err != nil || len(ids) != 2 || ids[0] != e.task("a") || ids[1] != e.task("b") {
		t.Fatalf("Attachments = %v, %v", ids, err)
	}
}

func TestOutboundTrafficIsMasqueraded(t *testing.T) {
	e := newEnv(t, 2)
	m := e.manager()
	out, nodeAddr := e.outside()
	a := attach(t, m, e.task("a"))
	serveTCP(t, out, fmt.Sprintf("10.242.%d.2:7000", e.n), "outside")
	client := mustAsk(t, a.NetNSPath, "tcp4", fmt.Sprintf("10.242.%d.2:7000", e.n), "outside")
	if !strings.HasPrefix(client, nodeAddr.String()+":") {
		t.Fatalf("outside saw the task's connection from %s, want the node's %s (masquerade)", client, nodeAddr)
	}
}

func TestHostModePortsReachTheTask(t *testing.T) {
	e := newEnv(t, 3)
	m := e.manager()
	out, nodeAddr := e.outside()
	pTCP, pUDP := e.port(1), e.port(2)
	a := attach(t, m, e.task("a"),
		hostPort(api.ProtocolTCP, pTCP, 8080),
		hostPort(api.ProtocolUDP, pUDP, 9090),
		hostPort(api.ProtocolTCP, 0, 8081),
		&api.PortConfig{Protocol: api.ProtocolTCP, TargetPort: 80, PublishMode: api.PublishModeIngress}, // not ours
	)
	if len(a.Ports) != 3 {
		t.Fatalf("attachment ports %v: want the 3 host-mode ones", a.Ports)
	}
	auto := a.Ports[2].PublishedPort
	if auto < uint32(e.cfg.PortRange.Start) || auto > uint32(e.cfg.PortRange.End) || auto == pTCP {
		t.Fatalf("published=0 got port %d, want a free one of %s", auto, e.cfg.PortRange)
	}
	task := a.Address.Addr().String()
	serveTCP(t, a.NetNSPath, task+":8080", "tcp8080")
	serveTCP(t, a.NetNSPath, task+":8081", "tcp8081")
	serveUDP(t, a.NetNSPath, task+":9090", "udp9090")

	for _, c := range []struct{ ns, host, what string }{
		{"", "127.0.0.1", "node, loopback"},
		{"", nodeAddr.String(), "node, its address"},
		{"", a.Gateway.String(), "node, bridge address"},
		{out, nodeAddr.String(), "another host"},
	} {
		t.Run(c.what, func(t *testing.T) {
			mustAsk(t, c.ns, "tcp4", fmt.Sprintf("%s:%d", c.host, pTCP), "tcp8080")
			mustAsk(t, c.ns, "udp4", fmt.Sprintf("%s:%d", c.host, pUDP), "udp9090")
			mustAsk(t, c.ns, "tcp4", fmt.Sprintf("%s:%d", c.host, auto), "tcp8081")
		})
	}
	// The client's address is kept for other hosts.
	if client := mustAsk(t, out, "tcp4", fmt.Sprintf("%s:%d", nodeAddr, pTCP), "tcp8080"); !strings.HasPrefix(client, fmt.Sprintf("10.242.%d.2:", e.n)) {
		t.Errorf("task saw another host's connection from %s, want 10.242.%d.2", client, e.n)
	}
	// Hairpin: another task, and the task itself, through the node's port.
	b := attach(t, m, e.task("b"))
	mustAsk(t, b.NetNSPath, "tcp4", fmt.Sprintf("%s:%d", a.Gateway, pTCP), "tcp8080")
	mustAsk(t, a.NetNSPath, "tcp4", fmt.Sprintf("%s:%d", nodeAddr, pTCP), "tcp8080")
	// A host process cannot take a published port.
	if l, err := net.Listen("tcp4", fmt.Sprintf(":%d", pTCP)); err == nil {
		l.Close()
		t.Errorf("a host process could listen on published port %d", pTCP)
	}

	// Conflicts: with a task, and with a host process. Neither leaves anything.
	before, _ := m.nft.elements()
	_, err := m.Attach(context.Background(), e.task("c"), []*api.PortConfig{hostPort(api.ProtocolTCP, pTCP, 80)})
	var pce *PortConflictError
	if !errors.As(err, &pce) || pce.TaskID != e.task("a") || !strings.Contains(err.Error(), fmt.Sprint(pTCP)) || !strings.Contains(err.Error(), e.task("a")) {
		t.Fatalf("Attach with a taken port: %v, want a conflict naming port %d and task %s", err, pTCP, e.task("a"))
	}
	busy := serveTCP(t, "", fmt.Sprintf("0.0.0.0:%d", e.port(50)), "host")
	_ = busy
	_, err = m.Attach(context.Background(), e.task("c"), []*api.PortConfig{hostPort(api.ProtocolUDP, e.port(60), 80), hostPort(api.ProtocolTCP, e.port(50), 80)})
	if !errors.Is(err, ErrPortInUse) || !strings.Contains(err.Error(), fmt.Sprint(e.port(50))) {
		t.Fatalf("Attach with a port a host process has: %v, want ErrPortInUse naming %d", err, e.port(50))
	}
	e.assertGone(m, e.task("c"))
	if after, _ := m.nft.elements(); len(after) != len(before) {
		t.Fatalf("failed Attach changed the map: %v -> %v", before, after)
	}
	if _, taken := m.ports.owner[portKey{"udp", uint16(e.port(60))}]; taken {
		t.Fatalf("failed Attach kept udp port %d", e.port(60))
	}
	c := attach(t, m, e.task("c"), hostPort(api.ProtocolUDP, e.port(60), 80))
	if want := netip.MustParseAddr("10.241.3.4"); c.Address.Addr() != want {
		t.Errorf("task c got %s after the failed attempts, want %s (nothing kept by them)", c.Address, want)
	}
}

// assertGone checks that nothing of a task's network is left.
func (e *env) assertGone(m *Manager, id string) {
	t := e.t
	t.Helper()
	if _, err := netlink.LinkByName(vethName(e.cfg.BridgeName, id)); err == nil {
		t.Errorf("veth of %s is still there", id)
	}
	if _, err := os.Stat(filepath.Join(e.cfg.StateDir, "netns", id)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("namespace of %s is still there (%v)", id, err)
	}
	if _, err := os.Stat(filepath.Join(e.cfg.StateDir, "tasks", id+".json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("record of %s is still there (%v)", id, err)
	}
	elems, err := m.nft.elements()
	if err != nil {
		t.Fatal(err)
	}
	for _, el := range elems {
		if el.taskID == id {
			t.Errorf("map element %v of %s is still there", el, id)
		}
	}
	ids, _ := m.Attachments()
	for _, x := range ids {
		if x == id {
			t.Errorf("Attachments still lists %s", id)
		}
	}
}

func TestDetachRemovesEverythingAndFreesTheAddress(t *testing.T) {
	e := newEnv(t, 4)
	e.cfg.Subnet = netip.MustParsePrefix("10.241.4.0/29") // gateway .1, tasks .2 to .6
	m := e.manager()
	var atts []*Attachment
	for i := range 5 {
		atts = append(atts, attach(t, m, e.task(fmt.Sprint(i)), hostPort(api.ProtocolTCP, e.port(i), 80)))
	}
	if _, err := m.Attach(context.Background(), e.task("full"), nil); !errors.Is(err, ErrSubnetFull) {
		t.Fatalf("Attach in a full subnet: %v, want ErrSubnetFull", err)
	}
	e.assertGone(m, e.task("full"))

	victim := atts[2]
	if err := m.Detach(context.Background(), e.task("2")); err != nil {
		t.Fatal(err)
	}
	e.assertGone(m, e.task("2"))
	if err := m.Detach(context.Background(), e.task("2")); err != nil {
		t.Fatalf("second Detach: %v", err)
	}
	if err := m.Detach(context.Background(), e.task("never")); err != nil {
		t.Fatalf("Detach of a task never attached: %v", err)
	}
	// Its address and port go to the next task.
	n := attach(t, m, e.task("next"), hostPort(api.ProtocolTCP, e.port(2), 80))
	if n.Address != victim.Address {
		t.Fatalf("next task got %s, want the freed %s", n.Address, victim.Address)
	}
	serveTCP(t, n.NetNSPath, n.Address.Addr().String()+":80", "next")
	mustAsk(t, "", "tcp4", fmt.Sprintf("127.0.0.1:%d", e.port(2)), "next")
}

func TestRestartedManagerAdoptsAttachments(t *testing.T) {
	e := newEnv(t, 5)
	m1, err := New(context.Background(), e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	p := e.port(7)
	a := attach(t, m1, e.task("a"), hostPort(api.ProtocolTCP, p, 80), hostPort(api.ProtocolUDP, 0, 53))
	serveTCP(t, a.NetNSPath, a.Address.Addr().String()+":80", "a")
	if err := m1.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := m1.Attach(context.Background(), e.task("b"), nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Attach after Close: %v, want ErrClosed", err)
	}
	// Running tasks keep their network while swarmd is down.
	mustAsk(t, "", "tcp4", fmt.Sprintf("127.0.0.1:%d", p), "a")
	// Someone deletes the port's element meanwhile: the next Manager puts it back.
	if out, err := exec.Command("nft", "delete", "element", "ip", e.cfg.BridgeName, portsMap, fmt.Sprintf("{ tcp . %d }", p)).CombinedOutput(); err != nil {
		t.Fatalf("nft delete element: %v: %s", err, out)
	}

	m2 := e.manager()
	again := attach(t, m2, e.task("a"), hostPort(api.ProtocolTCP, p, 80), hostPort(api.ProtocolUDP, 0, 53))
	if again.Address != a.Address || again.NetNSPath != a.NetNSPath || len(again.Ports) != 2 ||
		again.Ports[0].PublishedPort != p || again.Ports[1].PublishedPort != a.Ports[1].PublishedPort {
		t.Fatalf("adopted attachment %+v, want %+v", again, a)
	}
	mustAsk(t, "", "tcp4", fmt.Sprintf("127.0.0.1:%d", p), "a")
	if _, err := m2.Attach(context.Background(), e.task("b"), []*api.PortConfig{hostPort(api.ProtocolTCP, p, 80)}); !errors.Is(err, ErrPortInUse) {
		t.Fatalf("the adopted port is free again: %v", err)
	}
	b := attach(t, m2, e.task("b"))
	if b.Address == a.Address {
		t.Fatalf("new task got the adopted task's address %s", a.Address)
	}

	if err := m2.Teardown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName(e.cfg.BridgeName); err == nil {
		t.Error("bridge still there after Teardown")
	}
	if out, err := exec.Command("nft", "list", "table", "ip", e.cfg.BridgeName).CombinedOutput(); err == nil {
		t.Errorf("nft table still there after Teardown:\n%s", out)
	}
	if _, err := os.Stat(e.cfg.StateDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state dir still there after Teardown: %v", err)
	}
	if _, err := netlink.LinkByName(vethName(e.cfg.BridgeName, e.task("a"))); err == nil {
		t.Error("task veth still there after Teardown")
	}
}

func TestNewRefusesAnOverlappingSubnet(t *testing.T) {
	e := newEnv(t, 6)
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "flto6"
	if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
		t.Fatal(err)
	}
	link, _ := netlink.LinkByName("flto6")
	if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix("10.241.6.129/25"))}); err != nil {
		t.Fatal(err)
	}
	_, err := New(context.Background(), e.cfg)
	var sce *SubnetConflictError
	if !errors.As(err, &sce) || !strings.Contains(err.Error(), "flto6") || !strings.Contains(err.Error(), "--bridge-subnet") {
		t.Fatalf("New over a used subnet: %v, want a conflict naming flto6 and the flag", err)
	}
	if _, err := netlink.LinkByName(e.cfg.BridgeName); err == nil {
		t.Error("failed New left the bridge")
	}
	if err := exec.Command("nft", "list", "table", "ip", e.cfg.BridgeName).Run(); err == nil {
		t.Error("failed New left the nft table")
	}
	if _, err := os.Stat(e.cfg.StateDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("failed New left its state directory (%v)", err)
	}
}

func TestTwoNodesCannotShareABridgeOrAStateDir(t *testing.T) {
	e := newEnv(t, 8)
	m := e.manager()
	attach(t, m, e.task("a"))

	if _, err := New(context.Background(), e.cfg); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second Manager on the same state dir: %v, want an error", err)
	}
	other := e.cfg
	other.StateDir = filepath.Join(t.TempDir(), "other")
	_, err := New(context.Background(), other)
	if err == nil || !strings.Contains(err.Error(), e.cfg.StateDir) || !strings.Contains(err.Error(), "--bridge-name") {
		t.Fatalf("second node on the same bridge: %v, want an error naming the first node's state dir", err)
	}
	// Neither attempt disturbed the first node.
	if _, err := m.Attach(context.Background(), e.task("b"), nil); err != nil {
		t.Fatal(err)
	}
	if ids, _ := m.Attachments(); len(ids) != 2 {
		t.Fatalf("Attachments = %v", ids)
	}
}

func TestFailedAttachLeavesNothingBehind(t *testing.T) {
	e := newEnv(t, 10)
	m := e.manager()
	// Something in the way of the namespace mount, found after the address,
	// the ports and the record were taken.
	blocker := filepath.Join(e.cfg.StateDir, "netns", e.task("a"), "x")
	if err := os.MkdirAll(blocker, 0o700); err != nil {
		t.Fatal(err)
	}
	p := e.port(3)
	if _, err := m.Attach(context.Background(), e.task("a"), []*api.PortConfig{hostPort(api.ProtocolTCP, p, 80)}); err == nil {
		t.Fatal("Attach succeeded with a directory at its namespace path")
	}
	if err := os.RemoveAll(filepath.Dir(blocker)); err != nil {
		t.Fatal(err)
	}
	e.assertGone(m, e.task("a"))
	if len(m.addrs.used) != 0 || len(m.ports.owner) != 0 || len(m.ports.socks) != 0 {
		t.Fatalf("failed Attach kept addresses %v or ports %v", m.addrs.used, m.ports.owner)
	}
	// All of it can be had again.
	b := attach(t, m, e.task("b"), hostPort(api.ProtocolTCP, p, 80))
	if want := netip.MustParseAddr("10.241.10.2"); b.Address.Addr() != want {
		t.Fatalf("next task got %s, want %s", b.Address, want)
	}
}

// TestUDPClientSendingBeforePublishReachesTheTask: a client that sent to
// the port before it was published keeps its conntrack entry alive (not
// DNATed) for as long as it keeps sending; Attach clears it.
func TestUDPClientSendingBeforePublishReachesTheTask(t *testing.T) {
	e := newEnv(t, 11)
	m := e.manager()
	out, nodeAddr := e.outside()
	p := e.port(5)
	target := &net.UDPAddr{IP: nodeAddr.AsSlice(), Port: int(p)}
	var c *net.UDPConn
	if err := inNetNS(out, func() (err error) { c, err = net.DialUDP("udp4", nil, target); return err }); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("early")); err != nil {
		t.Fatal(err)
	}
	// The precondition: the node tracks the early flow, not NATed.
	for deadline := time.Now().Add(2 * time.Second); ; {
		flows, err := netlink.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
		if err != nil {
			t.Fatalf("conntrack: %v", err)
		}
		if slices.ContainsFunc(flows, func(f *netlink.ConntrackFlow) bool {
			return f.Forward.Protocol == unix.IPPROTO_UDP && uint32(f.Forward.DstPort) == p && f.Reverse.SrcIP.Equal(nodeAddr.AsSlice())
		}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the node has no conntrack entry of the early UDP flow")
		}
		time.Sleep(10 * time.Millisecond) // polling the conntrack table
	}
	a := attach(t, m, e.task("a"), hostPort(api.ProtocolUDP, p, 9000))
	serveUDP(t, a.NetNSPath, a.Address.Addr().String()+":9000", "a")
	buf := make([]byte, 100)
	deadline := time.Now().Add(2 * time.Second)
	for {
		_, _ = c.Write([]byte("?")) // the same client port
		_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		n, err := c.Read(buf)
		if err == nil && strings.HasPrefix(string(buf[:n]), "a ") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the early UDP client never reached the task (last: %q, %v)", buf[:n], err)
		}
	}
}

// startNS is the namespace of the main thread at start.
var startNS, _ = os.Readlink("/proc/thread-self/ns/net")

// TestNoThreadLeftInATaskNamespace: every thread of the process is in the
// node's namespace after namespaces were made and configured.
func TestNoThreadLeftInATaskNamespace(t *testing.T) {
	e := newEnv(t, 7)
	m := e.manager()
	for i := range 5 {
		attach(t, m, e.task(fmt.Sprint(i)))
	}
	self := startNS
	deadline := time.Now().Add(5 * time.Second)
	for {
		var wrong []string
		tasks, _ := os.ReadDir("/proc/self/task")
		for _, d := range tasks {
			ns, err := os.Readlink(filepath.Join("/proc/self/task", d.Name(), "ns/net"))
			if err == nil && ns != self {
				wrong = append(wrong, d.Name()+":"+ns)
			}
		}
		if len(wrong) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("threads in another network namespace than %s: %v", self, wrong)
		}
		time.Sleep(20 * time.Millisecond) // polling: a locked thread ends shortly after its goroutine
	}
}
