package containerd

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/flotilla/flotilla/networking/hostnet"
)

// hostResolvConf is the node's resolver configuration, the base of each
// task's.
var hostResolvConf = "/etc/resolv.conf"

// fallbackNameservers are used when the node has only loopback nameservers,
// which a task in its own network namespace cannot reach (Docker's choice).
var fallbackNameservers = []string{"8.8.8.8", "8.8.4.4"}

// writeNetworkFiles writes the task's /etc/hostname, /etc/hosts and (with a
// network attachment) /etc/resolv.conf into dir and returns their read-only
// bind mounts.
func writeNetworkFiles(dir, host string, att *hostnet.Attachment) ([]specs.Mount, error) {
	files := map[string][]byte{
		"hostname": []byte(host + "\n"),
		"hosts":    hostsFile(host, att),
	}
	if att != nil {
		host, err := os.ReadFile(hostResolvConf)
		if err != nil && !os.IsNotExist(err) {
			return nil, fmt.Errorf("read the node's %s: %w", hostResolvConf, err)
		}
		files["resolv.conf"] = resolvConf(host)
	}
	var mounts []specs.Mount
	for _, name := range []string{"hostname", "hosts", "resolv.conf"} {
		data, ok := files[name]
		if !ok {
			continue
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			return nil, fmt.Errorf("write the task's /etc/%s: %w", name, err)
		}
		mounts = append(mounts, bindMount(p, "/etc/"+name, true))
	}
	return mounts, nil
}

// hostsFile maps localhost, and the task's hostname to its address (to
// 127.0.0.1 without a network).
func hostsFile(host string, att *hostnet.Attachment) []byte {
	var b bytes.Buffer
	b.WriteString("127.0.0.1\tlocalhost\n")
	b.WriteString("::1\tlocalhost ip6-localhost ip6-loopback\n")
	if att != nil && att.Address.IsValid() {
		fmt.Fprintf(&b, "%s\t%s\n", att.Address.Addr(), host)
	} else {
		fmt.Fprintf(&b, "127.0.0.1\t%s\n", host)
	}
	return b.Bytes()
}

// resolvConf is the node's resolv.conf without its loopback nameservers
// (unreachable from the task's namespace); if none is left, the fallback
// ones.
func resolvConf(host []byte) []byte {
	var b bytes.Buffer
	servers := 0
	sc := bufio.NewScanner(bytes.NewReader(host))
	for sc.Scan() {
		line := sc.Text()
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "nameserver" {
			addr, err := netip.ParseAddr(strings.SplitN(f[1], "%", 2)[0])
			if err == nil && addr.IsLoopback() {
				continue
			}
			servers++
		}
		b.WriteString(line)
		b.WriteByte('\n')
	}
	if servers == 0 {
		for _, ns := range fallbackNameservers {
			fmt.Fprintf(&b, "nameserver %s\n", ns)
		}
	}
	return b.Bytes()
}
