package manager

import (
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
)

// Every method served on the remote API has an authorization rule; the
// authorizer would refuse a forgotten one, so this catches it before users do.
func TestRemotePolicyCoversEveryMethod(t *testing.T) {
	s := grpc.NewServer()
	registerRemote(s, &Manager{health: health.NewServer()})
	policy := remotePolicy()
	n := 0
	for service, info := range s.GetServiceInfo() {
		for _, m := range info.Methods {
			n++
			if _, ok := policy["/"+service+"/"+m.Name]; !ok {
				t.Errorf("/%s/%s has no authorization rule", service, m.Name)
			}
		}
	}
	if n < 10 {
		t.Fatalf("only %d methods registered", n)
	}
}
