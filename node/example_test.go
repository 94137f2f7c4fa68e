package node_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/node"
)

// Example embeds a one-manager cluster in a program and creates a service
// through the Control API.
func Example() {
	dir, _ := os.MkdirTemp("", "flotilla-example-")
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	n, err := node.New(node.Config{
		StateDir:        dir,
		Hostname:        "example",
		ListenRemoteAPI: "127.0.0.1:0",
		Executor:        "sim",
		Logger:          slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := n.Start(ctx); err != nil {
		fmt.Println(err)
		return
	}
	defer n.Stop(context.Background())
	select {
	case <-n.Ready():
	case <-n.Done():
		fmt.Println("node failed:", n.Err())
		return
	}

	conn, err := grpc.NewClient("unix://"+n.ControlSocket(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer conn.Close()
	ctl := api.NewControlClient(conn)
	_, err = ctl.CreateService(ctx, &api.CreateServiceRequest{Spec: &api.ServiceSpec{
		Annotations: api.Annotations{Name: "web"},
		Task:        api.TaskSpec{Container: &api.ContainerSpec{Image: "busybox:latest"}},
		Mode:        api.ServiceMode{Mode: &api.ServiceMode_Replicated{Replicated: &api.ReplicatedService{Replicas: 3}}},
	}})
	if err != nil {
		fmt.Println(err)
		return
	}
	nodes, _ := ctl.ListNodes(ctx, &api.ListNodesRequest{})
	svc, _ := ctl.GetService(ctx, &api.GetServiceRequest{ServiceID: "web"})
	fmt.Println(nodes.Nodes[0].Description.Hostname, nodes.Nodes[0].Role, nodes.Nodes[0].Status.State)
	fmt.Println(svc.Service.Spec.Annotations.Name, svc.Service.Spec.Mode.GetReplicated().Replicas)
	// Output:
	// example MANAGER READY
	// web 3
}
