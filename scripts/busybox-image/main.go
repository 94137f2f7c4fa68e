// Command busybox-image writes a small OCI image archive built from the
// host's busybox-static (/bin/busybox): every busybox applet, /etc/passwd,
// and a web root /www with an index.html, for the README's demo and for
// trying Flotilla without a registry. Import it into the node's containerd
// namespace:
//
//	go run ./scripts/busybox-image -o /tmp/busybox.tar
//	ctr -a STATE_DIR/containerd/containerd.sock -n swarmd images import \
//	    --base-name docker.io/library/busybox /tmp/busybox.tar
//
// The image is then busybox:latest to swarmctl service create.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/flotilla/flotilla/agent/exec/containerd/containerdtest"
)

func main() {
	out := flag.String("o", "busybox.tar", "where to write the OCI image archive")
	index := flag.String("index-html", "<h1>Hello from Flotilla</h1>\n", "content of /www/index.html")
	flag.Parse()
	if _, err := os.Stat(containerdtest.BusyboxPath); err != nil {
		fmt.Fprintf(os.Stderr, "busybox-image: %v: install busybox-static (make deps)\n", err)
		os.Exit(1)
	}
	opts := containerdtest.ImageOptions{
		Cmd:          []string{"sh"},
		ExposedPorts: []string{"80/tcp"},
		Files:        map[string]string{"/www/index.html": *index},
	}
	if err := containerdtest.WriteBusyboxImage(*out, opts); err != nil {
		fmt.Fprintf(os.Stderr, "busybox-image: %v\n", err)
		os.Exit(1)
	}
	fmt.Println(*out)
}
