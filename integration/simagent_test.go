package integration

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/agent"
	"github.com/flotilla/flotilla/agent/exec/sim"
	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/ca"
)

// simAgent is a worker node simulated in the test process: its own key and
// certificate, obtained by the real join flow, and a real agent holding a
// session with the manager over mTLS gRPC. Only the executor is simulated.
type simAgent struct {
	hostname string
	nodeID   string
	agent    *agent.Agent
	done     chan struct{} // closed when Run has returned
	err      error         // Run's result, read after done
}

// joinSimAgent joins the cluster at addr with token as node hostname, the way
// node.(*Node).join does, then starts an agent that runs until runCtx ends.
// It returns once the agent holds its first session (Ready), or an error; ctx
// bounds the join and the wait for Ready, not the agent's life. An agent
// returned with an error was started and must be stopped like the others.
func joinSimAgent(ctx, runCtx context.Context, addr, token, hostname string, log *slog.Logger) (*simAgent, error) {
	tok, err := ca.ParseJoinToken(token)
	if err != nil {
		return nil, err
	}
	// 1. The root CA over a connection that verifies nothing; the token's
	// digest pins it.
	rootPEM, err := simFetchRootCA(ctx, addr)
	if err != nil {
		return nil, err
	}
	if err := tok.VerifyRootCA(rootPEM); err != nil {
		return nil, err
	}
	rca, err := ca.ParseRootCA(rootPEM, nil)
	if err != nil {
		return nil, err
	}
	// 2. A key and CSR made here, and the certificate over a connection
	// verified against that root, the only one the token travels on.
	keyPEM, csrPEM, err := ca.GenerateKeyAndCSR()
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(ca.BootstrapClientTLSConfig(&rca))))
	if err != nil {
		return nil, err
	}
	resp, err := api.NewNodeCAClient(conn).IssueNodeCertificate(ctx, &api.IssueNodeCertificateRequest{CSR: csrPEM, Token: token})
	conn.Close()
	if err != nil {
		return nil, fmt.Errorf("issue certificate: %s", status.Convert(err).Message())
	}
	creds, err := ca.NewCredentials(rca, resp.Certificate, keyPEM)
	if err != nil {
		return nil, err
	}

	// 3. The agent, dialling with the node's own certificate.
	a := &simAgent{hostname: hostname, nodeID: resp.NodeID, done: make(chan struct{})}
	a.agent = agent.New(agent.Config{
		Dial: func(ctx context.Context, addr string) (*grpc.ClientConn, error) {
			return grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(creds.ClientTLSConfig())))
		},
		Managers: []string{addr},
		Executor: sim.New(hostname, nil),
		Logger:   log.With("hostname", hostname),
	})
	go func() {
		defer close(a.done)
		a.err = a.agent.Run(runCtx)
	}()
	select {
	case <-a.agent.Ready():
		return a, nil
	case <-a.done:
		return nil, fmt.Errorf("agent stopped before its first session: %v", a.err)
	case <-ctx.Done():
		return a, fmt.Errorf("no session within the join deadline: %w", ctx.Err())
	}
}

func simFetchRootCA(ctx context.Context, addr string) ([]byte, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(ca.BootstrapClientTLSConfig(nil))))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	resp, err := api.NewNodeCAClient(conn).GetRootCACertificate(ctx, &api.GetRootCACertificateRequest{})
	if err != nil {
		return nil, fmt.Errorf("get the root CA: %s", status.Convert(err).Message())
	}
	return resp.Certificate, nil
}

// stopSimAgents cancels the agents' context and waits for every Run to
// return, at most within; it returns the agents that did not stop and the
// first error a Run returned.
func stopSimAgents(cancel context.CancelFunc, agents []*simAgent, within time.Duration) (stuck int, err error) {
	cancel()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	expired := false
	for _, a := range agents {
		if !expired {
			select {
			case <-a.done:
			case <-deadline.C:
				expired = true
			}
		}
		select {
		case <-a.done:
			if a.err != nil && err == nil {
				err = fmt.Errorf("agent %s: %w", a.hostname, a.err)
			}
		default:
			stuck++
		}
	}
	return stuck, err
}
