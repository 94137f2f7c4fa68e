//go:build linux

package hostnet

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// The node's nftables table (one per bridge, family ip); the package doc
// shows it in nft syntax.
const (
	portsMap = "hostports"
	// The fixed chains; the mesh will add chains of its own.
	chainPrerouting  = "prerouting"
	chainOutput      = "output"
	chainPostrouting = "postrouting"
	chainForward     = "forward"
	chainPrefilter   = "prefilter"
)

// Registers, as nft uses them for a concatenation: the 128-bit register 1
// is made of the 32-bit registers 8 to 11.
const (
	reg1   = 1 // NFT_REG_1
	reg32x = 9 // NFT_REG32_01, the second 32-bit word of register 1
)

// ipsDstNAT is conntrack's IPS_DST_NAT status bit (ct status dnat).
const ipsDstNAT = 1 << 5

// portElement is one element of the hostports map: host port -> task
// address and port, with the task ID as the element's comment.
type portElement struct {
	key    portKey
	addr   netip.Addr
	target uint16
	taskID string
}

func (e portElement) setElement() nftables.SetElement {
	return nftables.SetElement{Key: portMapKey(e.key), Val: portMapVal(e.addr, e.target), Comment: e.taskID}
}

// portMapKey encodes inet_proto . inet_service, each padded to 4 bytes.
func portMapKey(k portKey) []byte {
	return []byte{protoNumber(k.Protocol), 0, 0, 0, byte(k.Port >> 8), byte(k.Port), 0, 0}
}

// portMapVal encodes ipv4_addr . inet_service.
func portMapVal(a netip.Addr, port uint16) []byte {
	b := a.As4()
	return []byte{b[0], b[1], b[2], b[3], byte(port >> 8), byte(port), 0, 0}
}

func decodePortElement(se nftables.SetElement) (portElement, bool) {
	if len(se.Key) != 8 || len(se.Val) != 8 {
		return portElement{}, false
	}
	proto := protoName(se.Key[0])
	if proto == "" {
		return portElement{}, false
	}
	return portElement{
		key:    portKey{proto, uint16(se.Key[4])<<8 | uint16(se.Key[5])},
		addr:   netip.AddrFrom4([4]byte(se.Val[:4])),
		target: uint16(se.Val[4])<<8 | uint16(se.Val[5]),
		taskID: se.Comment,
	}, true
}

func protoNumber(name string) byte {
	switch name {
	case "udp":
		return unix.IPPROTO_UDP
	case "sctp":
		return unix.IPPROTO_SCTP
	}
	return unix.IPPROTO_TCP
}

func protoName(n byte) string {
	switch n {
	case unix.IPPROTO_TCP:
		return "tcp"
	case unix.IPPROTO_UDP:
		return "udp"
	case unix.IPPROTO_SCTP:
		return "sctp"
	}
	return ""
}

// nftTable programs the node's table. Its methods are called under the
// Manager's lock: a Conn collects one batch at a time.
type nftTable struct {
	conn   *nftables.Conn
	table  *nftables.Table
	ports  *nftables.Set
	bridge string
	subnet netip.Prefix
}

func newNFTTable(bridge string, subnet netip.Prefix) (*nftTable, error) {
	conn, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	table := &nftables.Table{Name: bridge, Family: nftables.TableFamilyIPv4}
	return &nftTable{
		conn:  conn,
		table: table,
		ports: &nftables.Set{
			Table:         table,
			ID:            1, // batch-local; set here so that the library's global counter is not touched
			Name:          portsMap,
			IsMap:         true,
			Concatenation: true,
			KeyType:       nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService),
			DataType:      nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService),
		},
		bridge: bridge,
		subnet: subnet,
	}, nil
}

// program creates the table, the map and the fixed chains if missing and
// rewrites the fixed chains' rules, all in one transaction: packets see the
// old rules or the new ones, and the map's elements (the tasks' ports) are
// not touched.
func (n *nftTable) program() error {
	c := n.conn
	c.AddTable(n.table)
	if err := c.AddSet(n.ports, nil); err != nil {
		return fmt.Errorf("nftables map %s: %w", portsMap, err)
	}
	accept := nftables.ChainPolicyAccept
	chain := func(name string, typ nftables.ChainType, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
		ch := c.AddChain(&nftables.Chain{Name: name, Table: n.table, Type: typ, Hooknum: hook, Priority: prio, Policy: &accept})
		c.FlushChain(ch)
		return ch
	}
	rule := func(ch *nftables.Chain, comment string, exprs ...[]expr.Any) {
		var all []expr.Any
		for _, e := range exprs {
			all = append(all, e...)
		}
		c.AddRule(&nftables.Rule{Table: n.table, Chain: ch, Exprs: all,
			UserData: userdata.AppendString(nil, userdata.TypeComment, comment)})
	}
	br := n.bridge
	dnat := []expr.Any{
		&expr.Fib{Register: reg1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Payload{DestRegister: reg32x, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: reg1, DestRegister: reg1, IsDestRegSet: true, SetName: portsMap, SetID: n.ports.ID},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: reg1, RegProtoMin: reg32x},
	}
	pre := chain(chainPrerouting, nftables.ChainTypeNAT, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest)
	rule(pre, "host-mode published ports, from other hosts and namespaces", dnat)
	out := chain(chainOutput, nftables.ChainTypeNAT, nftables.ChainHookOutput, nftables.ChainPriorityNATDest)
	rule(out, "host-mode published ports, from the node itself", dnat)

	post := chain(chainPostrouting, nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource)
	rule(post, "outbound NAT of the tasks", saddrIn(n.subnet), ifname(expr.MetaKeyOIFNAME, expr.CmpOpNeq, br), masq())
	rule(post, "127.0.0.1:P -> task: the task answers the bridge", ifname(expr.MetaKeyOIFNAME, expr.CmpOpEq, br), saddrIn(netip.MustParsePrefix("127.0.0.0/8")), masq())
	rule(post, "hairpin: a task reaching a published port of the node", ifname(expr.MetaKeyOIFNAME, expr.CmpOpEq, br), ctBits(expr.CtKeySTATUS, ipsDstNAT), saddrIn(n.subnet), masq())

	fwd := chain(chainForward, nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityFilter)
	rule(fwd, "replies to the tasks' connections", ifname(expr.MetaKeyOIFNAME, expr.CmpOpEq, br), ctBits(expr.CtKeySTATE, expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), verdict(expr.VerdictAccept))
	rule(fwd, "published ports", ifname(expr.MetaKeyOIFNAME, expr.CmpOpEq, br), ctBits(expr.CtKeySTATUS, ipsDstNAT), verdict(expr.VerdictAccept))
	rule(fwd, "task to task", ifname(expr.MetaKeyOIFNAME, expr.CmpOpEq, br), ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, br), verdict(expr.VerdictAccept))
	rule(fwd, "tasks are reached through published ports only", ifname(expr.MetaKeyOIFNAME, expr.CmpOpEq, br), verdict(expr.VerdictDrop))
	rule(fwd, "traffic of the tasks", ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, br), verdict(expr.VerdictAccept))

	raw := chain(chainPrefilter, nftables.ChainTypeFilter, nftables.ChainHookPrerouting, nftables.ChainPriorityRaw)
	rule(raw, "route_localnet is on for the bridge: tasks must not reach the node's loopback", ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, br), daddrIn(netip.MustParsePrefix("127.0.0.0/8")), verdict(expr.VerdictDrop))

	if err := c.Flush(); err != nil {
		return fmt.Errorf("program nftables table ip %s: %w (if an older swarmd made it, remove it: nft delete table ip %s)", n.table.Name, err, n.table.Name)
	}
	return nil
}

// elements lists the map.
func (n *nftTable) elements() ([]portElement, error) {
	ses, err := n.conn.GetSetElements(n.ports)
	if err != nil && !n.exists() {
		return nil, nil // no table (Teardown ran): nothing in it
	}
	if err != nil {
		return nil, fmt.Errorf("list nftables map %s of table ip %s: %w", portsMap, n.table.Name, err)
	}
	out := make([]portElement, 0, len(ses))
	for _, se := range ses {
		if e, ok := decodePortElement(se); ok {
			out = append(out, e)
		}
	}
	return out, nil
}

// sync makes the map's elements for which owned returns true exactly want,
// in one transaction: missing ones added, wrong and stale ones deleted.
func (n *nftTable) sync(want []portElement, owned func(portElement) bool) error {
	have, err := n.elements()
	if err != nil {
		return err
	}
	wanted := make(map[portKey]portElement, len(want))
	for _, e := range want {
		wanted[e.key] = e
	}
	var del, add []nftables.SetElement
	present := make(map[portKey]bool, len(have))
	for _, e := range have {
		w, ok := wanted[e.key]
		switch {
		case ok && w.addr == e.addr && w.target == e.target && w.taskID == e.taskID:
			present[e.key] = true
		case ok || owned(e):
			del = append(del, nftables.SetElement{Key: portMapKey(e.key)})
		}
	}
	for _, e := range want {
		if !present[e.key] {
			add = append(add, e.setElement())
		}
	}
	if len(del) == 0 && len(add) == 0 {
		return nil
	}
	if len(del) > 0 {
		if err := n.conn.SetDeleteElements(n.ports, del); err != nil {
			return err
		}
	}
	if len(add) > 0 {
		if err := n.conn.SetAddElements(n.ports, add); err != nil {
			return err
		}
	}
	if err := n.conn.Flush(); err != nil {
		return fmt.Errorf("update nftables map %s of table ip %s: %w", portsMap, n.table.Name, err)
	}
	return nil
}

// exists reports whether the table is there (false only when the kernel
// says it is not).
func (n *nftTable) exists() bool {
	_, err := n.conn.ListTableOfFamily(n.table.Name, n.table.Family)
	return !errors.Is(err, unix.ENOENT)
}

// delete removes the table; a missing one is not an error.
func (n *nftTable) delete() error {
	if !n.exists() {
		return nil
	}
	n.conn.DelTable(n.table)
	if err := n.conn.Flush(); err != nil {
		return fmt.Errorf("delete nftables table ip %s: %w", n.table.Name, err)
	}
	return nil
}

func ifname(key expr.MetaKey, op expr.CmpOp, name string) []expr.Any {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return []expr.Any{
		&expr.Meta{Key: key, Register: reg1},
		&expr.Cmp{Op: op, Register: reg1, Data: b},
	}
}

func saddrIn(p netip.Prefix) []expr.Any { return addrIn(12, p) }
func daddrIn(p netip.Prefix) []expr.Any { return addrIn(16, p) }

// addrIn matches the IPv4 address at offset of the network header in p.
func addrIn(offset uint32, p netip.Prefix) []expr.Any {
	mask := ipNet(p).Mask
	return []expr.Any{
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: []byte(mask), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: p.Masked().Addr().AsSlice()},
	}
}

// ctBits matches a conntrack state or status having any of bits.
func ctBits(key expr.CtKey, bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: reg1, Key: key},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: make([]byte, 4)},
	}
}

func masq() []expr.Any { return []expr.Any{&expr.Masq{}} }

func verdict(k expr.VerdictKind) []expr.Any { return []expr.Any{&expr.Verdict{Kind: k}} }
