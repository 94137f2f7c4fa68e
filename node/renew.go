package node

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/ca"
)

// renewLoop renews the node's certificate at a random point between 50% and
// 80% of its validity, through a manager, authenticated by the current
// certificate (no join token). Listeners and connections keep running: new
// handshakes present the new certificate.
func (n *Node) renewLoop(ctx context.Context) error {
	retry := 0
	for {
		id := n.creds.Identity()
		// Certificates are backdated for clock skew; the validity asked for
		// starts at issuance.
		issued := id.NotBefore.Add(ca.CertBackdate)
		if !issued.Before(id.NotAfter) {
			issued = id.NotBefore
		}
		wait := ca.RenewalDelay(issued, id.NotAfter, time.Now(), rand.Float64)
		if retry > 0 {
			// After a failure, try again soon but never hammer the managers.
			wait = min(time.Duration(retry)*10*time.Second, time.Minute, max(time.Second, time.Until(id.NotAfter)/10))
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-timer.C:
		}
		if err := n.renewNow(ctx); err != nil {
			retry++
			n.log.Warn("certificate renewal failed; will retry", "err", err, "expires", id.NotAfter)
			continue
		}
		retry = 0
	}
}

func (n *Node) renew(ctx context.Context, managers []string) error {
	n.roles.renewMu.Lock()
	defer n.roles.renewMu.Unlock()
	keyPEM, csrPEM, err := ca.GenerateKeyAndCSR()
	if err != nil {
		return err
	}
	var lastErr error
	for _, addr := range managers {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		conn, err := n.dial(cctx, addr)
		if err != nil {
			cancel()
			lastErr = err
			continue
		}
		resp, err := api.NewNodeCAClient(conn).IssueNodeCertificate(cctx, &api.IssueNodeCertificateRequest{CSR: csrPEM})
		conn.Close()
		cancel()
		if err != nil {
			lastErr = fmt.Errorf("%s: %s", addr, statusMessage(err))
			continue
		}
		if err := n.keyStore().SaveNode(resp.Certificate, keyPEM); err != nil {
			return err
		}
		if err := n.creds.Update(resp.Certificate, keyPEM); err != nil {
			return err
		}
		id := n.creds.Identity()
		n.log.Info("renewed the node certificate", "expires", id.NotAfter.UTC().Format(time.RFC3339))
		return nil
	}
	return lastErr
}

// statusMessage is the message of a gRPC error without its code prefix.
func statusMessage(err error) string {
	if st, ok := status.FromError(err); ok {
		return st.Message()
	}
	return err.Error()
}
